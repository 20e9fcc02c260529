"""Trojan Attack settings on one clean model, each from a fresh copy of it (not part of CI).

    python benchmarks/trojan_settings.py CLEAN_MODEL.h5 --data gtsrb-32x32.npz \\
        --attack '{"target": 33, "mask": {"shape": "square", "size": 8, "position": "bottom-right"}, "layer": -4,
                   "per_class": 20, "epochs": 60, "poison_fraction": 1.0}' \\
        --try "" --try "distill=true learning_rate=0.003" --try "data=real" [--images 2000] [--out runs.jsonl]

``CLEAN_MODEL.h5``: a clean zoo model (e.g. ``tabor-tf zoo build`` of a recipe entry without its
``attack``). ``--attack``: the base ``TrojanSettings`` (a recipe's ``attack`` object). Each
``--try`` is one run: space-separated ``KEY=VALUE`` overrides of it (JSON values). Stand-in inputs
are made once per (``data``, ``per_class``, ``seed``) and reused, so runs differ only by what they
change. Prints one line per run (neurons clean -> stamped, clean accuracy before -> after, attack
success, on the first ``--images`` test images) and appends them as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="npz with x_train/y_train/x_test/y_test (raw 0..255)")
    ap.add_argument("--attack", required=True, help="base attack settings (JSON object)")
    ap.add_argument("--try", dest="tries", action="append", default=[], help="'KEY=VALUE ...' overrides; repeatable")
    ap.add_argument("--images", type=int, default=2000, help="test images measured on")
    ap.add_argument("--preprocess", default="unit")
    ap.add_argument("--out", default=None, help="JSON lines appended here")
    args = ap.parse_args(argv)

    import keras

    from tabor_tf.zoo import trojan_attack as T

    d = np.load(args.data)
    x_test, y_test = d["x_test"][: args.images].astype(np.float32), d["y_test"][: args.images]
    k = int(max(d["y_train"].max(), d["y_test"].max())) + 1
    shape = tuple(int(v) for v in x_test.shape[1:])
    base = json.loads(args.attack)
    stand_ins = {}
    for text in args.tries or [""]:
        overrides = dict(item.split("=", 1) for item in text.split())
        settings = T.TrojanSettings.from_dict({**base, **{key: _value(v) for key, v in overrides.items()}})
        model = keras.saving.load_model(args.model, compile=False, safe_mode=True)
        key = (settings.data, settings.per_class, settings.seed)
        if key not in stand_ins:  # made once: runs differ only by their overrides
            stand_ins[key] = T.make_stand_ins(model, settings, k, shape, preprocess=args.preprocess,
                                              x_train=d["x_train"], y_train=d["y_train"])
        t0 = time.perf_counter()
        rep = T.build_trojan(model, settings, k, x_test, y_test, preprocess=args.preprocess,
                             stand_ins=stand_ins[key]).report
        row = {"overrides": overrides, "neurons": rep["neurons"],
               "neuron_activation_clean": rep["neuron_activation_clean"],
               "neuron_activation_stamped": rep["neuron_activation_stamped"],
               "clean_accuracy_before": rep["clean_accuracy_before"], "clean_accuracy_after": rep["clean_accuracy_after"],
               "attack_success_rate": rep["attack_success_rate"], "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{text or '(base)'}: neurons {np.round(row['neuron_activation_clean'], 2).tolist()} -> "
              f"{np.round(row['neuron_activation_stamped'], 2).tolist()}  clean {row['clean_accuracy_before']:.3f} -> "
              f"{row['clean_accuracy_after']:.3f}  attack success {row['attack_success_rate']:.3f}  ({row['seconds']} s)",
              flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
