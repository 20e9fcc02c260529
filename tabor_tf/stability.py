"""Verdict stability over seeds: the same scan run with seeds ``seed, seed+1, ..., seed+N-1``.

    summary = run_scan_with_seeds(3, 0, "out", method="nc", prepared=prepared, overrides={...})
    summary["majority_verdict"], summary["verdict_agreement"], summary["flagged_agreement"]

Each seed's report goes to ``OUT/seed-<s>/`` (resumable like any scan); ``OUT/stability.json``
holds the summary. Agreement is the fraction of seeds whose verdict (resp. flagged label set)
equals the majority one; ties are broken towards ``infected`` (a gate should not pass a model
that half the seeds flag) and, for flagged sets, towards the set seen first.

The seeds' verdict (``verdict``, ``flagged_labels``: what the exit status and ``audit`` use) is
the *pooled* outlier test: each label's score averaged over the seeds, then one MAD test with
the scan's threshold and side (``pooled_decision``). Averaging independent starts shrinks each
label's optimisation noise, so two real targets no longer widen the MAD enough to hide each
other (measured on the evaluation zoo's dev half: docs/TABOR_CHOICES.md, "Pooling the seeds").
The majority verdict is the fallback when the reports do not carry their label scores, or when
a seed's verdict is inconclusive.

Wiring into ``scan`` (3 lines in ``tabor_tf/commands/scan.py``)::

    add_seed_arguments(parser)                                     # end of add_arguments
    if args.seeds > 1:                                             # in run, after describe_inputs(...)
        return run_seeds_for_scan(args, method=method, labels=labels, overrides=overrides,
                                  prepared=prepared, out_dir=out_dir)
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

STABILITY_NAME = "stability.json"


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--seeds N``: run N seeds (``--seed``, ``--seed``+1, ...) and report their agreement."""
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run the scan with N seeds (--seed, --seed+1, ...) and report the verdict "
                             "agreement; the majority verdict decides the exit status (default 1)")


def seed_list(seed: int, n: int) -> list:
    """``[seed, seed+1, ..., seed+n-1]``; ``TaborError`` for ``n < 1``."""
    from .errors import TaborError

    if int(n) < 1:
        raise TaborError("--seeds must be >= 1")
    return [int(seed) + i for i in range(int(n))]


def summarise(per_seed: Sequence[dict]) -> dict:
    """``[{"seed", "verdict", "flagged_labels", "anomaly_index", ...}]`` -> the agreement summary.

    ``majority_verdict``: the most frequent verdict (tie: ``infected``, then ``inconclusive``); ``verdict_agreement``:
    fraction of seeds with that verdict; ``majority_flagged``: the most frequent flagged set
    (sorted list); ``flagged_agreement``: fraction of seeds with exactly that set;
    ``label_flag_rate``: ``{label: fraction of seeds that flagged it}``; ``consensus_flagged``:
    the labels flagged by more than half of the seeds (on the GTSRB zoo the true targets are
    flagged by every seed while the occasional extra label changes from seed to seed).
    """
    if not per_seed:
        raise ValueError("no seeds to summarise")
    n = len(per_seed)
    pooled = pooled_decision(per_seed)
    verdicts = Counter(r["verdict"] for r in per_seed)
    top = max(verdicts.values())
    # ties go to the verdict a gate must not miss: infected, then inconclusive, then clean
    majority = next(v for v in ("infected", "inconclusive", "clean", *sorted(verdicts)) if verdicts.get(v, 0) == top)
    sets = [tuple(sorted(int(k) for k in r.get("flagged_labels") or ())) for r in per_seed]
    counts = Counter(sets)
    best = max(counts.values())
    majority_set = next(s for s in sets if counts[s] == best)
    per_label = Counter(k for labels in sets for k in labels)
    consensus = sorted(k for k in per_label if per_label[k] > n / 2)
    return {
        "seeds": [int(r["seed"]) for r in per_seed],
        "per_seed": [dict(r) for r in per_seed],
        "majority_verdict": majority,
        "verdict_agreement": verdicts[majority] / n,
        "majority_flagged": list(majority_set),
        "flagged_agreement": counts[majority_set] / n,
        "label_flag_rate": {str(k): per_label[k] / n for k in sorted(per_label)},
        "consensus_flagged": consensus,
        "unanimous": len(verdicts) == 1 and len(counts) == 1,
        "pooled": pooled,
        **seeds_verdict(majority, majority_set, consensus, pooled, verdicts),
    }


def report_mad_side(report: dict) -> str:
    """``both`` / ``low``: the side of the MAD a report's verdict used (``mad.side``; reports older
    than that key: Neural Cleanse ``both``, TABOR its ``mad_side`` setting, resolved by the label
    count with ``tabor.detector.resolve_mad_side``)."""
    side = (report.get("mad") or {}).get("side")
    if side in ("both", "low"):
        return side
    if report.get("method") != "tabor":
        return "both"
    setting = (report.get("settings") or {}).get("mad_side", "auto")
    if setting not in ("both", "low", "auto"):
        setting = "auto"
    from .tabor.detector import resolve_mad_side

    return resolve_mad_side(setting, len(report.get("labels") or ()))


def pooled_decision(per_seed: Sequence[dict]) -> Optional[dict]:
    """One MAD test on each label's score averaged over the seeds -> ``{"flagged_labels",
    "anomaly_index", "median", "mad", "threshold", "side", "floor", "scores"}`` (``scores``: label ->
    mean score), or None when a seed entry lacks ``scores`` / ``mad``, the seeds scanned different
    labels, or their thresholds, sides or MAD floors differ. The scores are each seed's first-start
    scores (TABOR's A, Neural Cleanse's mask L1): averaging them is the fresh-start confirmation
    applied to every label. A seed cut by ``--time-budget`` (``time_limited``) holds half-optimised
    scores: None."""
    from .outliers import mad_test

    if any(not r.get("scores") or not r.get("mad") or r.get("time_limited") for r in per_seed):
        return None
    labels = sorted(int(k) for k in per_seed[0]["scores"])
    if any(sorted(int(k) for k in r["scores"]) != labels for r in per_seed) or len(labels) < 3:
        return None
    if any(r["mad"].get("threshold") is None for r in per_seed):
        return None
    thresholds = {round(float(r["mad"]["threshold"]), 9) for r in per_seed}
    sides = {r["mad"]["side"] for r in per_seed}
    floors = {round(float(r["mad"].get("floor") or 0.0), 9) for r in per_seed}
    if len(thresholds) != 1 or len(sides) != 1 or len(floors) != 1:
        return None
    try:
        scores = np.mean([[float(r["scores"][str(k)]) for k in labels] for r in per_seed], axis=0)
    except (KeyError, TypeError, ValueError):  # a score missing or null (non-finite in the report)
        return None
    if not np.all(np.isfinite(scores)):
        return None
    mad = mad_test(scores, labels, threshold=float(per_seed[0]["mad"]["threshold"]), side=sides.pop(),
                   min_mad=floors.pop())
    return {"flagged_labels": [int(k) for k in mad.flagged_labels], "anomaly_index": float(mad.anomaly_index),
            "median": mad.median, "mad": mad.mad, "threshold": mad.threshold, "side": mad.side, "floor": mad.floor,
            "scores": {str(k): float(v) for k, v in zip(labels, scores)}}


def seeds_verdict(majority: str, majority_set, consensus, pooled: Optional[dict], verdicts: Counter) -> dict:
    """``{"verdict", "flagged_labels", "decided_by"}`` of the seeds together: the pooled test's
    (``infected`` iff it flags a label) when it ran and no seed was inconclusive, else the majority
    verdict with the labels flagged by most seeds (the commonest flagged set when no label is)."""
    if pooled is not None and not verdicts.get("inconclusive"):
        flagged = list(pooled["flagged_labels"])
        return {"verdict": "infected" if flagged else "clean", "flagged_labels": flagged, "decided_by": "pooled"}
    flagged = list(consensus) if majority == "infected" and consensus else list(majority_set)
    return {"verdict": majority, "flagged_labels": flagged if majority != "clean" else [], "decided_by": "majority"}


def seed_entry(seed: int, report: dict) -> dict:
    """The per-seed line of a stability summary, from one report.json dictionary."""
    from .calibration import probability_validated

    return {
        "seed": int(seed),
        "verdict": report["verdict"],
        "flagged_labels": [int(k) for k in report.get("flagged_labels") or ()],
        "anomaly_index": report.get("anomaly_index"),
        "trojan_probability": (report.get("trojan_probability") or {}).get("probability"),
        "probability_validated": probability_validated(report),
        "seconds": report.get("seconds"),
        "time_limited": bool(report.get("time_limited")),
        "scores": {str(int(lab["label"])): lab.get("score") for lab in report.get("labels") or ()},
        "mad": {"threshold": (report.get("mad") or {}).get("threshold"), "side": report_mad_side(report),
                "floor": float((report.get("mad") or {}).get("floor") or 0.0)},
    }


def run_with_seeds(n: int, seed: int, scan: Callable[[int], dict]) -> dict:
    """Call ``scan(s)`` (-> report dict) for each of the ``n`` seeds and summarise the agreement."""
    return summarise([seed_entry(s, scan(s)) for s in seed_list(seed, n)])


def run_scan_with_seeds(n: int, seed: int, out_dir, *, report_dir: Optional[Callable[[int], Path]] = None,
                        progress_for_seed: Optional[Callable[[int], object]] = None, **run_scan_kwargs) -> dict:
    """``run_scan`` once per seed into ``out_dir/seed-<s>/``; writes ``out_dir/stability.json``.

    ``run_scan_kwargs``: everything else ``tabor_tf.scanning.run_scan`` takes (method, prepared or
    model/data paths, overrides, ...); the model is loaded once. ``progress_for_seed(s)``: a fresh
    progress callback (e.g. a ``ProgressBar``, used as a context manager) for each seed's scan.
    """
    from .report import atomic_write_json
    from .scanning import prepare, run_scan

    out_dir = Path(out_dir)
    if run_scan_kwargs.get("prepared") is None and run_scan_kwargs.get("model_path") is not None:
        run_scan_kwargs["prepared"] = prepare(
            run_scan_kwargs.pop("model_path"), run_scan_kwargs.pop("data_path", None),
            preprocess=run_scan_kwargs.pop("preprocess", "auto"),
            labels=run_scan_kwargs.get("labels"),
            **{k: run_scan_kwargs.pop(k) for k in ("max_samples", "allow_unsafe", "model_version", "allow_low_accuracy")
               if k in run_scan_kwargs})
    run_scan_kwargs.pop("seed", None)
    where = report_dir or (lambda s: out_dir / f"seed-{s}")

    def scan(s: int) -> dict:
        if progress_for_seed is None:
            _, report = run_scan(seed=s, out_dir=where(s), **run_scan_kwargs)
            return report
        bar = progress_for_seed(s)
        with bar:
            _, report = run_scan(seed=s, out_dir=where(s), progress=bar, **run_scan_kwargs)
        return report

    summary = run_with_seeds(n, seed, scan)
    summary["reports"] = {str(s): str(where(s) / "report.json") for s in summary["seeds"]}
    atomic_write_json(out_dir / STABILITY_NAME, summary)
    return summary


def exit_code(summary: dict) -> int:
    """0 clean / 1 infected / 3 inconclusive from the seeds' verdict (``seeds_verdict``; summaries
    written before it: the majority verdict), the ``tabor-tf`` convention."""
    from .cli import exit_for_verdict

    return exit_for_verdict(summary.get("verdict") or summary["majority_verdict"])


def stability_lines(summary: dict) -> list:
    """Short human lines: one per seed, then the agreement."""
    lines = []
    for r in summary["per_seed"]:
        flagged = ",".join(str(k) for k in r["flagged_labels"]) or "-"
        lines.append(f"seed {r['seed']:>4}  {r['verdict']:<8}  flagged {flagged}")
    lines.append(f"majority {summary['majority_verdict']} (verdict agreement "
                 f"{100 * summary['verdict_agreement']:.0f}%, flagged-set agreement "
                 f"{100 * summary['flagged_agreement']:.0f}% on {{{','.join(map(str, summary['majority_flagged']))}}}; "
                 f"flagged by most seeds: {{{','.join(map(str, summary.get('consensus_flagged', [])))}}})")
    pooled = summary.get("pooled")
    if summary.get("decided_by") == "pooled" and pooled:
        flagged = ",".join(map(str, pooled["flagged_labels"])) or "-"
        lines.append(f"verdict {summary['verdict']} (scores averaged over the {len(summary['per_seed'])} seeds: "
                     f"flagged {flagged}, anomaly index {pooled['anomaly_index']:.2f}, threshold {pooled['threshold']:.2f})")
    return lines


def run_seeds_for_scan(args, *, method: str, labels, overrides: dict, prepared, out_dir) -> int:
    """The ``scan --seeds N`` branch: N scans of ``prepared`` into ``out_dir/seed-<s>/``, per-seed
    lines and the agreement on stdout (``--json``: stability.json on stdout), exit 0 / 1 / 3 by the
    seeds' verdict (``seeds_verdict``). ``args``: the parsed ``scan`` options (seed, seeds, preset, no_html, quiet, json)."""
    import sys

    from .report import dumps
    from .terminal import ProgressBar

    name = "TABOR" if method == "tabor" else "Neural Cleanse"
    summary = run_scan_with_seeds(
        args.seeds, args.seed, out_dir, method=method, labels=labels, preset=args.preset, overrides=overrides,
        prepared=prepared, html=not getattr(args, "no_html", False),
        progress_for_seed=lambda s: ProgressBar(f"{name} seed {s}", stream=sys.stderr, quiet=args.quiet))
    if getattr(args, "json", False):
        sys.stdout.write(dumps(summary))
    elif not args.quiet:
        print("\n".join(stability_lines(summary)) + f"\nreports: {out_dir}/seed-*/report.json, {out_dir}/{STABILITY_NAME}")
    return exit_code(summary)
