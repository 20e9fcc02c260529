"""Measure a TABOR scan of a GTSRB victim from the zoo (not part of CI).

    python benchmarks/tabor_gtsrb.py --victim /work/runs/zoo-gtsrb-quick/square-br-4 \
        [--data /work/shared/data/gtsrb/gtsrb-32x32.npz] [--images 1000] [--preset gtsrb] \
        [--set steps=200 --set lambda_multiplier=2] [--seed 0] [--json out.json]

Prints and (with ``--json``) writes: verdict, flagged labels, anomaly index, the five parts of A
for each true target next to the median over all labels, the restored trigger's precision /
recall / F1 against the card (``tabor_tf.fidelity.trigger_fidelity``), the correctness symbol,
the optimisation's stamped images per second, and wall times. The clean images are a seeded
random subset of the data's test split; the victim's card gives the preprocessing and targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tabor_tf.scanning import parse_overrides  # noqa: E402

PARTS = ("sparsity", "smoothness", "attack", "crop", "explanation", "A")


def clean_subset(path: str, n: int, seed: int):
    with np.load(path) as z:
        x, y = z["x_test"], z["y_test"]
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False))
    return x[idx].astype(np.float32), y[idx].astype(np.int64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--victim", default="/work/runs/zoo-gtsrb-quick/square-br-4", help="zoo victim folder (card.json)")
    ap.add_argument("--data", default="/work/shared/data/gtsrb/gtsrb-32x32.npz")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--preset", default="gtsrb")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a TaborConfig field")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the measurement here")
    args = ap.parse_args(argv)

    from tabor_tf.data import CleanData
    from tabor_tf.fidelity import SYMBOL_NAMES, correctness, trigger_fidelity
    from tabor_tf.loading import load_victim
    from tabor_tf.tabor import preset, scan
    from tabor_tf.zoo import load_card, true_mask

    card = load_card(args.victim)
    victim = load_victim(os.path.join(args.victim, card.data["model_file"]))
    x, y = clean_subset(args.data, args.images, args.seed)
    data = CleanData(x=x, y=y, source=args.data, format="npz")
    config = preset(args.preset, **parse_overrides(args.set, "tabor"))
    started = time.perf_counter()
    res = scan(victim, data, preprocess=card.data["preprocessing"], config=config, seed=args.seed)
    wall = time.perf_counter() - started

    targets = [int(t) for t in card.data.get("targets", [])]
    median = {k: float(np.median([r.parts[k] for r in res.labels])) for k in PARTS}
    per_target = {}
    for t in targets:
        r = res.by_label(t)
        per_target[str(t)] = {
            "parts": {k: float(r.parts[k]) for k in PARTS},
            "anomaly_index": float(res.mad.label_indices[t]),
            "fidelity": trigger_fidelity(r.mask, true_mask(card, t)),
            "mask_l1": float(r.l1), "footprint_pixels": int(r.parts["footprint_pixels"]),
            "attack_success": float(r.attack_success), "steps": int(r.steps), "stop_reason": r.stop_reason,
        }
    extra = {str(lab): {"parts": {k: float(res.by_label(lab).parts[k]) for k in PARTS},
                        "anomaly_index": float(res.mad.label_indices[lab]),
                        "mask_l1": float(res.by_label(lab).l1)}
             for lab in res.flagged_labels if lab not in targets}
    symbol = correctness(res.flagged_labels, targets)
    out = {
        "victim": args.victim, "model_sha256": getattr(victim, "sha256", None), "targets": targets,
        "verdict": res.verdict, "flagged_labels": res.flagged_labels, "correctness": symbol,
        "correctness_name": SYMBOL_NAMES[symbol], "anomaly_index": float(res.mad.anomaly_index),
        "median_parts": median, "targets_detail": per_target, "extra_flagged": extra,
        "mad": {"median": float(res.mad.median), "mad": float(res.mad.mad), "threshold": float(res.mad.threshold)},
        "images": len(x), "labels": len(res.labels), "seed": args.seed,
        "wall_seconds": wall, "optimise_seconds": res.settings["optimise_seconds"],
        "image_steps": res.settings["image_steps"], "stamped_images_per_second": res.settings["images_per_second"],
        "steps_per_label": {str(r.label): int(r.steps) for r in res.labels},
        "stop_reasons": {s: sum(r.stop_reason == s for r in res.labels) for s in {r.stop_reason for r in res.labels}},
        "settings": config.to_dict(), "machine": f"{platform.machine()} {os.cpu_count()} CPU(s)",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    print(f"verdict {res.verdict}  flagged {res.flagged_labels}  {symbol} {SYMBOL_NAMES[symbol]}"
          f"  anomaly index {res.mad.anomaly_index:.2f}")
    print("median parts  " + "  ".join(f"{k} {median[k]:+.3f}" for k in PARTS))
    for t, d in per_target.items():
        print(f"target {t}: " + "  ".join(f"{k} {d['parts'][k]:+.3f}" for k in PARTS)
              + f"  index {d['anomaly_index']:+.2f}")
        f = d["fidelity"]
        print(f"  fidelity precision {f['precision']:.3f} recall {f['recall']:.3f} F1 {f['f1']:.3f}"
              f"  mask L1 {d['mask_l1']:.1f}  steps {d['steps']} ({d['stop_reason']})")
    for lab, d in extra.items():
        print(f"extra {lab}: " + "  ".join(f"{k} {d['parts'][k]:+.3f}" for k in PARTS)
              + f"  index {d['anomaly_index']:+.2f}  mask L1 {d['mask_l1']:.1f}")
    print(f"wall {wall:.1f} s  (optimisation {out['optimise_seconds']:.1f} s, "
          f"{out['stamped_images_per_second']:.0f} stamped images/s, {out['image_steps']} image-steps)  stop {out['stop_reasons']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
