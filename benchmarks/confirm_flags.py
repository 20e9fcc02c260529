"""Do the flags of a TABOR scan repeat from fresh starts? (issue 11: re-optimise the flagged labels)

For every victim with a full-budget trajectory recorded by ``benchmarks/stopping_rules.py``
(OUT/NAME/trajectory.npz, seed 0): score the final kept triggers of all labels, apply the default
decision rule, then re-optimise only the flagged labels from fresh starts (other seeds: another
initialisation and batch order), score them, and place each new A on the first run's median and
MAD. A flag "repeats" under a seed when that index still exceeds the threshold.

Usage:

  python benchmarks/confirm_flags.py --runs runs/stop-dev [--only NAME ...] [--seeds 1 2] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stopping_rules import Scorer, Trajectory  # noqa: E402

from tabor_tf.compare import load_truth  # noqa: E402
from tabor_tf.fidelity import correctness, trigger_fidelity  # noqa: E402
from tabor_tf.outliers import mad_test  # noqa: E402
from tabor_tf.tabor.confirm import decide  # noqa: E402
from tabor_tf.tabor.detector import score_triggers  # noqa: E402
from tabor_tf.tabor.engine import TriggerEngine  # noqa: E402


def confirm(path: Path, seeds, max_samples: int) -> dict:
    t = Trajectory(path)
    scorer = Scorer(t, max_samples)
    rows = [t.kept(i, int(t.stop_rounds[i])) for i in range(t.k)]
    a = scorer(rows)
    mad = mad_test(a, list(range(t.k)), threshold=scorer.threshold, side=scorer.side)
    out = {"targets": t.meta["targets"], "labels": t.k, "flagged": list(mad.flagged_labels),
           "anomaly_index": round(mad.anomaly_index, 2), "threshold": round(scorer.threshold, 2),
           "first_index": {str(lab): round(-mad.label_indices[lab], 2) for lab in mad.flagged_labels},
           "repeats": {}, "seconds": {}}
    truth = load_truth(Path(t.meta["model"]).parent / "card.json")
    out["f1"] = {str(lab): round(trigger_fidelity(t.masks[rows[lab]].astype(np.float32), truth["_masks"][lab])["f1"], 3)
                 for lab in t.meta["targets"]}
    out["symbol"] = correctness(mad.flagged_labels, t.meta["targets"])
    out["confirmed"], out["confirmed_symbol"] = list(mad.flagged_labels), out["symbol"]
    if not mad.flagged_labels:
        return out
    repeats = {lab: [] for lab in mad.flagged_labels}
    for seed in seeds:
        started = time.perf_counter()
        engine = TriggerEngine(scorer.victim.logits, scorer.x, scorer.y_ref, mad.flagged_labels, scorer.config,
                               preprocess=scorer.mode, seed=int(seed))
        res = engine.run()
        parts = score_triggers(scorer.victim, scorer.x, scorer.y_ref, res, scorer.config, scorer.mode, t.meta["seed"])
        scale = mad.mad if mad.mad > 0 else 1e-12
        out["repeats"][str(seed)] = {str(lab): round((mad.median - p["A"]) / scale, 2)
                                     for lab, p in zip(mad.flagged_labels, parts)}
        out["seconds"][str(seed)] = round(time.perf_counter() - started, 1)
        for lab, p in zip(mad.flagged_labels, parts):
            repeats[lab].append(float(p["A"]))
    kept, _ = decide(mad, repeats)
    out["confirmed"] = list(kept.flagged_labels)
    out["confirmed_symbol"] = correctness(kept.flagged_labels, t.meta["targets"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="the --out folder of stopping_rules.py")
    p.add_argument("--only", nargs="+", default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    results = {}
    for path in sorted(Path(args.runs).glob("*/trajectory.npz")):
        name = path.parent.name
        if args.only and name not in args.only:
            continue
        results[name] = confirm(path, args.seeds, args.max_samples)
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
    lines = ["| victim | targets | flagged (index) | " + " | ".join(f"seed {s}" for s in args.seeds)
             + " | confirmed (mean rule) | target F1 |", "|---|---|---|" + "---|" * len(args.seeds) + "---|---|"]
    for name, r in results.items():
        first = ", ".join(f"{lab} ({idx})" for lab, idx in r["first_index"].items()) or "none"
        cells = [", ".join(f"{lab}: {v}" for lab, v in r["repeats"].get(str(s), {}).items()) or "-" for s in args.seeds]
        f1 = ", ".join(f"{lab}: {v}" for lab, v in r.get("f1", {}).items()) or "-"
        lines.append(f"| {name} | {r['targets']} | {r.get('symbol', '')} {first} | " + " | ".join(cells)
                     + f" | {r.get('confirmed_symbol', '')} {r.get('confirmed', '')} | {f1} |")
    summary = {}
    for key in ("symbol", "confirmed_symbol"):
        syms = [r.get(key) for r in results.values() if r.get(key)]
        summary[key] = {s: syms.count(s) for s in sorted(set(syms))}
    f1s = [v for r in results.values() for v in r.get("f1", {}).values()]
    lines.append(f"\nfirst run: {summary['symbol']}; confirmed: {summary['confirmed_symbol']};"
                 f" mean target F1 {np.mean(f1s) if f1s else float('nan'):.2f} over {len(f1s)} targets")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
