#!/usr/bin/env bash
# Paper questions 2 and 4: deeper and larger victims, built and compared (TABOR vs Neural Cleanse),
# with the wall time of every step in OUT/times.tsv (docs/EXPERIMENTS.md, "Deeper and larger models").
#
#   bash benchmarks/deep_models.sh OUT [deep10|large224|all] [NC_SETTINGS]
#
# deep10:   the 10 Conv + 5 MaxPool victim of models/recipes/experiments.json (synthetic signs,
#           43 classes, 32x32): minutes on a 2-core CPU.
# large224: VGG16 and ResNet50 at 224x224 (models/recipes/large224.json): for a GPU host (on a
#           2-core CPU the build alone takes hours; each scan prints its estimate before it starts).
# NC_SETTINGS: extra compare options for Neural Cleanse, e.g. "--nc-set mini_batch=4" for the
#           budget-reduced variant (default: the faithful preset; the compare output names the variant).
set -euo pipefail
out=${1:?usage: deep_models.sh OUT [deep10|large224|all] [NC_SETTINGS]}
which=${2:-deep10}
nc_settings=${3:-}
here="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
times="$out/times.tsv"
[ -f "$times" ] || printf 'step\tseconds\tdevice\n' > "$times"
device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
device=${device:-"CPU $(nproc) cores"}

timed() {  # timed NAME COMMAND...: run it, append its wall seconds to times.tsv
    local name=$1; shift
    local start=$SECONDS
    "$@"
    printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$device" >> "$times"
}

run_set() {  # run_set RECIPE ZOO_NAME [--only NAME]...
    local recipe=$1 zoo=$2; shift 2
    timed "build $zoo" tabor-tf zoo build "$here/models/recipes/$recipe" --data synthetic --out "$out/$zoo" "$@"
    # shellcheck disable=SC2086
    timed "compare $zoo" python -m tabor_tf.compare --zoo "$out/$zoo" --out "$out/compare-$zoo" $nc_settings
}

case "$which" in
    deep10) run_set experiments.json zoo-deep10 --only deep10-square6-br ;;
    large224) run_set large224.json zoo-large224 ;;
    all) run_set experiments.json zoo-deep10 --only deep10-square6-br; run_set large224.json zoo-large224 ;;
    *) echo "deep_models.sh: choose deep10, large224 or all, not $which" >&2; exit 2 ;;
esac
column -t -s $'\t' "$times"
