#!/usr/bin/env bash
# Issue 13 before / after: what a deployment gate reads from `tabor-tf scan` (exit status, verdict).
#
#   bash benchmarks/gate_verdicts.sh OLD_CHECKOUT [WORK_DIR]
#
# OLD_CHECKOUT: a checkout of the code to compare with (e.g. `git archive 89ef3b1 | tar -x -C old`);
# the code of this checkout is "after". Uses the shipped demo victims and the embedded synthetic
# signs; Neural Cleanse runs budget-reduced (named in the output), TABOR with its defaults.
# Items: 2 low clean accuracy, 3 a --labels subset, 4 --out over another model's report, and 1 the
# same model as .h5 and as a SavedModel export (keras.Model.export), both methods.
set -u
OLD=$(cd "${1:?usage: gate_verdicts.sh OLD_CHECKOUT [WORK_DIR]}" && pwd)
NEW=$(cd "$(dirname "$0")/.." && pwd)
WORK=${2:-$(mktemp -d)}
mkdir -p "$WORK"
cd "$WORK" || exit 2
export TF_CPP_MIN_LOG_LEVEL=2

python - <<'EOF'
import numpy as np
from tabor_tf.synthetic import make_signs
x, y = make_signs(300, seed=90210, size=32, num_classes=43)
np.savez("signs.npz", x=x, y=y)
np.savez("signs-shifted.npz", x=x, y=(y + 1) % 43)  # every label wrong: clean accuracy ~0
EOF
demo_of() { if [ -d "$1/tabor_tf/assets/demo" ]; then echo "$1/tabor_tf/assets/demo"; else echo "$1/models/demo"; fi; }
for v in square-br clean; do
  [ -d "sm-$v" ] || PYTHONPATH=$NEW python -c "import keras, sys; keras.models.load_model(sys.argv[1], compile=False).export(sys.argv[2], verbose=False)" "$(demo_of "$NEW")/$v/model.h5" "sm-$v" 2>/dev/null
done

NC="--method nc --set mini_batch=2 --set steps=20 --preprocess unit --no-html --max-samples 300"
run() {  # tag, code dir, scan args...
  local tag=$1 code=$2; shift 2
  out=$(PYTHONPATH=$code python -m tabor_tf scan "$@" 2>err.txt); rc=$?
  echo "[$tag] exit $rc | $(echo "$out" | grep -m1 verdict) | $(grep -m1 -o 'error: .\{0,140\}' err.txt)"
}
for side in before after; do
  if [ $side = before ]; then CODE=$OLD; else CODE=$NEW; fi
  DEMO=$(demo_of "$CODE"); W=$WORK/$side; rm -rf "$W"; mkdir -p "$W"
  echo "== $side ($CODE)"
  run "2 low accuracy" "$CODE" "$DEMO/clean/model.h5" --data signs-shifted.npz $NC --out "$W/low"
  [ $side = after ] && run "2 low accuracy, --allow-low-accuracy" "$CODE" "$DEMO/clean/model.h5" --data signs-shifted.npz $NC --out "$W/low2" --allow-low-accuracy
  run "3 --labels 0-2, square-br (target 33)" "$CODE" "$DEMO/square-br/model.h5" --data signs.npz $NC --labels 0-2 --out "$W/part"
  run "4a square-br into DIR" "$CODE" "$DEMO/square-br/model.h5" --data signs.npz $NC --labels 30-35 --out "$W/shared"
  echo "    label files: $(ls "$W/shared/labels" | wc -l)"
  run "4b clean model into the same DIR" "$CODE" "$DEMO/clean/model.h5" --data signs.npz $NC --labels 0-2 --out "$W/shared"
  echo "    label files: $(ls "$W/shared/labels" | wc -l); report.json of $(python -c "import json;print(json.load(open('$W/shared/report.json'))['model']['path'].split('/')[-2])")"
  for v in square-br clean; do
    for fmt in h5 savedmodel; do
      if [ $fmt = h5 ]; then M=$DEMO/$v/model.h5; else M=sm-$v; fi
      for method in tabor nc; do
        EXTRA=""; [ $method = nc ] && EXTRA="--method nc --set mini_batch=4 --set steps=60"
        o=$W/h5sm-$v-$fmt-$method
        PYTHONPATH=$CODE python -m tabor_tf scan "$M" --data synthetic --max-samples 500 --preprocess unit --no-html --quiet $EXTRA --out "$o" >/dev/null 2>&1
        python -c "import json;r=json.load(open('$o/report.json'));ai=r['anomaly_index'];print('[1 $v $fmt $method]', r['verdict'], r['flagged_labels'], 'index', ai if ai is None else round(ai, 2))"
      done
    done
  done
done
