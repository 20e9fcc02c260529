"""Wall time of the fresh-start confirmation: one search per seed (release 2) vs all starts as one search.

``tabor/confirm.py`` re-optimises the flagged labels from ``confirm_seeds`` fresh starts. Release 2
ran one search per seed; the starts now run together (``TriggerEngine(start_seeds=...)``). This
times both layouts on the same victim, labels and data, alternating them ``--repeats`` times so a
shared box's load falls on both alike, and checks that every start is the same search either way
(each keeps its seed's initial trigger and batch order). Scoring is not timed (same images).

Usage:

  python benchmarks/confirm_speed.py MODEL --data NPZ --labels 33 [--preprocess unit] [--steps 400]
      [--seeds 2] [--repeats 2] [--max-samples 1000] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from tabor_tf.scanning import prepare
from tabor_tf.tabor.confirm import confirm_seeds
from tabor_tf.tabor.detector import reference_labels
from tabor_tf.tabor.engine import TriggerEngine
from tabor_tf.tabor.presets import default_preset_for, preset


def per_seed(victim, x, y_ref, labels, config, mode, seeds):
    """Release 2's layout: one search per seed -> masks ``[len(seeds) * len(labels), H, W]``."""
    masks = []
    for s in seeds:
        masks.extend(TriggerEngine(victim.logits, x, y_ref, labels, config, preprocess=mode, seed=s).run().masks)
    return np.stack(masks)


def together(victim, x, y_ref, labels, config, mode, seeds):
    """Today's layout (``confirm.run_confirmation``): every start in one search."""
    starts = [lab for _ in seeds for lab in labels]
    engine = TriggerEngine(victim.logits, x, y_ref, starts, config, preprocess=mode, seed=seeds[0],
                           start_seeds=[s for s in seeds for _ in labels])
    return np.stack(engine.run().masks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--labels", required=True, help="comma-separated labels to confirm, e.g. 21,12")
    p.add_argument("--preprocess", default="auto")
    p.add_argument("--steps", type=int, default=None, help="search steps (default: the preset's)")
    p.add_argument("--seeds", type=int, default=2, help="fresh starts (confirm_seeds)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    prepared = prepare(args.model, args.data, preprocess=args.preprocess, max_samples=args.max_samples)
    victim, mode = prepared.victim, prepared.check.mode
    x = np.asarray(prepared.data.x, np.float32)
    y_ref, _, _ = reference_labels(victim, x, getattr(prepared.data, "y", None), mode)
    config = preset(default_preset_for(victim.input_shape), **({"steps": args.steps} if args.steps else {}))
    labels = [int(v) for v in args.labels.split(",")]
    seeds = confirm_seeds(0, args.seeds)
    times = {"per_seed": [], "together": []}
    masks_of = {}
    for _ in range(args.repeats):
        for name, fn in (("per_seed", per_seed), ("together", together)):
            t0 = time.perf_counter()
            masks = fn(victim, x, y_ref, labels, config, mode, seeds)
            times[name].append(round(time.perf_counter() - t0, 2))
            masks_of[name] = masks
    difference = float(np.max(np.abs(masks_of["per_seed"] - masks_of["together"])))
    out = {"model": args.model, "labels": labels, "seeds": seeds, "steps": int(config.steps), "seconds": times,
           "ratio": round(float(np.median(times["together"]) / np.median(times["per_seed"])), 3),
           "max_mask_difference": round(difference, 6)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
