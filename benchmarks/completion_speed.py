"""Wall time of trigger completion: the flagged labels one after another vs all in lockstep.

``completion.complete_flagged`` completes every flagged label of a scan. It used to peel one
label at a time (a search of 32 images per step); the labels now run together, one slot each of
``completion._Peeler`` (``complete_triggers``). This times both layouts on the restored triggers of
a finished scan (its ``labels/label_NNN_{mask,pattern}.npy``), alternating them ``--repeats``
times so a shared box's load falls on both alike, and checks that each label gets the same rounds,
stop (up to the numbers in it) and acceptance either way; the triggers differ only by the float
rounding of a larger batch. Any labels may be given: speed does not need them to be flagged.

Usage:

  python benchmarks/completion_speed.py MODEL --data NPZ --scan REPORT_DIR --labels 21,12
      [--preprocess unit] [--repeats 2] [--max-samples 1000] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from tabor_tf.completion import CompletionSettings, complete_trigger, complete_triggers
from tabor_tf.scanning import prepare


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    for flag, default, text in (("--data", None, "npz of clean images (the scan's)"),
                                ("--scan", None, "report folder of a finished scan of MODEL on the same data"),
                                ("--labels", None, "comma-separated labels, e.g. 21,12"),
                                ("--preprocess", "auto", "the model's preprocessing"),
                                ("--out", None, "write the JSON here too")):
        p.add_argument(flag, default=default, required=default is None and flag != "--out", help=text)
    for flag, default in (("--repeats", 2), ("--max-samples", 1000), ("--seed", 0)):
        p.add_argument(flag, type=int, default=default)
    args = p.parse_args(argv)
    prepared = prepare(args.model, args.data, preprocess=args.preprocess, max_samples=args.max_samples)
    victim, mode = prepared.victim, prepared.check.mode
    x = np.asarray(prepared.data.x, np.float32)
    y = getattr(prepared.data, "y", None)
    y = victim.predict_raw(x, mode) if y is None else y
    labels = [int(v) for v in args.labels.split(",")]
    with open(os.path.join(args.scan, "report.json")) as fh:
        report = json.load(fh)
    natural_l1 = float(np.median([row["l1"] for row in report["labels"]]))
    load = lambda lab, kind: np.load(os.path.join(args.scan, "labels", f"label_{lab:03d}_{kind}.npy"))  # noqa: E731
    masks, patterns = [load(lab, "mask") for lab in labels], [load(lab, "pattern") for lab in labels]
    s = CompletionSettings()

    def one_by_one():
        return [complete_trigger(victim, x, mode, lab, m, pat, settings=s, seed=args.seed, y=y, natural_l1=natural_l1)
                for lab, m, pat in zip(labels, masks, patterns)]

    def lockstep():
        return complete_triggers(victim, x, mode, labels, masks, patterns, settings=s, seed=args.seed, y=y,
                                 natural_l1=natural_l1)

    times = {"one_by_one": [], "lockstep": []}
    outs = {}
    for _ in range(int(args.repeats)):
        for name, fn in (("one_by_one", one_by_one), ("lockstep", lockstep)):
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(round(time.perf_counter() - t0, 2))
            print(f"{name}: {times[name][-1]} s", file=sys.stderr, flush=True)
    same = []
    for a, b in zip(outs["one_by_one"], outs["lockstep"]):
        same.append({"label": a.label, "stop_same": re.sub(r"[0-9.]+", "#", a.stop) == re.sub(r"[0-9.]+", "#", b.stop),
                     "round_l1": [[round(r["l1"], 1) for r in a.rounds], [round(r["l1"], 1) for r in b.rounds]],
                     "accepted_same": [r["accepted"] for r in a.rounds] == [r["accepted"] for r in b.rounds],
                     "rounds": len(a.rounds), "max_mask_difference": float(np.max(np.abs(a.mask - b.mask)))})
    out = {"model": args.model, "labels": labels, "seconds": times,
           "ratio": float(np.median(times["lockstep"]) / np.median(times["one_by_one"])), "per_label": same,
           "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
