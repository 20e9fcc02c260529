"""Hyperparameter sensitivity (paper question 5, Table 2, Figure 9): one victim, many settings.

    tabor-tf experiment sensitivity MODEL --data DATA --truth CARD --out sens-gtsrb

TABOR runs once per combination of Table 2's starting values of ``l1..l6`` (two values each:
2^6 = 64 cells); Neural Cleanse runs once per value of its mask-norm weight ``init_cost``
(``NC_COSTS``, four orders of magnitude around the reference's 1e-3, as Figure 9 varies it).
The paper's victim is the 6-Conv GTSRB model with an 8x8 white square bottom-right.

Every cell is a full scan (``scanning.run_scan``) with its own report folder
``OUT/cells/<key>/`` (the scan's checkpoint there resumes an interrupted cell) and, once done, a
record in ``OUT/records/`` (``store.RecordStore``, keyed with the cell's settings: the same
command skips it, a changed setting redoes it). At the end ``sensitivity.json`` and
``sensitivity.md`` hold the per-cell table and a summary per method: how many cells give the
majority verdict, the same flagged set and the same top label, the correctness symbols and the
F1 of the restored trigger (with ``--truth``).

Augmentation (section 4.3): TABOR's lambdas start at the cell's values and are multiplied or
divided by ``m`` every round per label; the scan keeps each label's live lambdas at the end
(``LabelResult.parts["lambdas"]``, from ``EngineResult.lambdas``). Per cell the record keeps the
target's (else the top label's) final lambdas, their ratio to the start values and the median
ratio over all labels; the summary compares the spread of the start values over the grid with
the spread of the final ones (max / min over cells, per lambda). For Neural Cleanse the same is
done with each label's final cost (``parts["final_cost"]``) against ``init_cost``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from ..errors import TaborError
from .store import RecordStore, markdown_table, write_outputs

NAME = "sensitivity"
HELP = ("hyperparameter sensitivity (Table 2 / Figure 9): TABOR over the 64 combinations of Table 2's "
        "l1..l6 and Neural Cleanse over 4 values of its cost; resumable")
LAMBDAS = ("l1", "l2", "l3", "l4", "l5", "l6")
# paper Table 2: the two starting values of each lambda
TABLE2 = {
    "l1": (1e-3, 1e-5),
    "l2": (1e-4, 1e-6),
    "l3": (1e-5, 1e-7),
    "l4": (1e-6, 1e-8),
    "l5": (1e-4, 1e-6),
    "l6": (1e-2, 1e-4),
}
# Neural Cleanse's mask-norm weight (NCConfig.init_cost; the reference uses 1e-3): one order of
# magnitude either side and one more below, as Figure 9 varies NC's cost by orders of magnitude
NC_COSTS = (1e-2, 1e-3, 1e-4, 1e-5)
# spreads (max / min over cells) within this factor of each other count as unchanged
SAME_SPREAD = 1.1
TITLES = {"tabor": "TABOR", "neural_cleanse": "Neural Cleanse"}


# ----------------------------------------------------------------------------- parsing


def _positive(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TaborError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise TaborError(f"{where}: values must be finite and > 0, got {text!r}")
    return value


def _values(text: str, where: str) -> tuple:
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise TaborError(f"{where}: give a comma-separated list of values, e.g. 1e-3,1e-5")
    values = tuple(_positive(p, where) for p in parts)
    if len(set(values)) != len(values):
        raise TaborError(f"{where}: a value is repeated")
    return values


def parse_grid(items: Optional[Sequence[str]]) -> dict:
    """``["l1=1e-3,1e-5", "l6=1e-2,1e-4"]`` -> ``{"l1": (1e-3, 1e-5), "l6": (1e-2, 1e-4)}`` in
    ``LAMBDAS`` order; ``None`` / empty -> Table 2's full grid. ``TaborError`` for an unknown name,
    a repeated name, an empty list or a value that is not a positive number."""
    if not items:
        return dict(TABLE2)
    grid = {}
    for item in items:
        name, sep, values = str(item).partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise TaborError(f"--grid {item!r}: expected NAME=V1,V2,... with NAME one of {', '.join(LAMBDAS)}")
        if name not in LAMBDAS:
            raise TaborError(f"--grid {item!r}: unknown lambda {name!r}; choose from {', '.join(LAMBDAS)}")
        if name in grid:
            raise TaborError(f"--grid: {name} given twice")
        grid[name] = _values(values, f"--grid {name}")
    return {n: grid[n] for n in LAMBDAS if n in grid}


def parse_costs(text: Optional[str]) -> tuple:
    """``"1e-2,1e-3"`` -> ``(0.01, 0.001)`` (Neural Cleanse ``init_cost`` values); None -> ``NC_COSTS``."""
    if text is None:
        return NC_COSTS
    return _values(text, "--nc-costs")


def split_shared(pairs: Sequence[str]) -> tuple:
    """``--set KEY=VALUE`` pairs -> ``(tabor_overrides, nc_overrides)``: each pair goes to every
    method that has the setting; ``TaborError`` when neither has it."""
    import dataclasses

    from ..scanning import config_class, parse_overrides

    tabor, nc = {}, {}
    for pair in pairs or ():
        if "=" not in str(pair):
            raise TaborError(f"--set expects KEY=VALUE, got {pair!r}")
        key = str(pair).split("=", 1)[0].strip().replace("-", "_")
        used = False
        for method, out in (("tabor", tabor), ("nc", nc)):
            if key in {f.name for f in dataclasses.fields(config_class(method))}:
                out.update(parse_overrides([pair], method))
                used = True
        if not used:
            raise TaborError(f"--set {pair}: a setting of neither TABOR nor Neural Cleanse")
    return tabor, nc


def _fmt(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------------------- cells


def tabor_cells(grid: dict) -> list:
    """One cell per combination of ``grid``: ``[{"method", "key", "vary": {name: value}}]``."""
    names = list(grid)
    cells = []
    for combo in itertools.product(*(grid[n] for n in names)):
        vary = dict(zip(names, combo))
        key = "tabor-" + "-".join(f"{n}={_fmt(v)}" for n, v in vary.items())
        cells.append({"method": "tabor", "key": key, "vary": vary})
    return cells


def nc_cells(costs: Sequence[float]) -> list:
    return [{"method": "neural_cleanse", "key": f"nc-init_cost={_fmt(c)}", "vary": {"init_cost": float(c)}}
            for c in costs]


def _ratio(final, start) -> Optional[float]:
    if final is None or start is None or not start:
        return None
    return float(final) / float(start)


def _focus_label(result, truth) -> tuple:
    """``(label, why)``: the first true target that was scanned, else the most suspicious label."""
    scanned = {int(r.label) for r in result.labels}
    for t in (truth or {}).get("targets", []):
        if int(t) in scanned:
            return int(t), "target"
    top = top_label(result)
    return top, "top label"


def top_label(result) -> Optional[int]:
    """The most suspicious label: the largest anomaly index (lowest A for TABOR, lowest L1 for NC)."""
    idx = result.mad.label_indices
    best = None
    for r in result.labels:
        v = idx.get(int(r.label))
        if v is None:
            continue
        # mad_index is signed (score - median) / MAD: the most negative is the most suspicious
        if best is None or v < best[0]:
            best = (v, int(r.label))
    if best is None and result.labels:
        best = (0.0, int(min(result.labels, key=lambda r: r.score).label))
    return None if best is None else best[1]


def augmentation_of(result, truth) -> dict:
    """Start values vs the values the augmentation ended at (TABOR: the six lambdas of the
    target / top label, and the median ratio over labels; NC: ``final_cost`` vs ``init_cost``)."""
    settings = result.settings
    label, why = _focus_label(result, truth)
    if result.method == "tabor":
        start = {n: float(settings[n]) for n in LAMBDAS}
        from ..tabor.presets import TERM_NAMES  # parts["lambdas"] is keyed by term name, in l1..l6 order

        finals = {int(r.label): {n: (r.parts.get("lambdas") or {}).get(t) for n, t in zip(LAMBDAS, TERM_NAMES)}
                  for r in result.labels}
        final = {n: finals.get(label, {}).get(n) for n in LAMBDAS}
        ratio = {n: _ratio(final[n], start[n]) for n in LAMBDAS}
        per_label = [_ratio(f.get("l1"), start["l1"]) for f in finals.values()]
        # every lambda of a label is scaled by the same factor m^k: l1's ratio stands for all six
        med = [r for r in per_label if r is not None]
        return {"label": label, "label_is": why, "start": start, "final": final, "ratio": ratio,
                "median_ratio_over_labels": statistics.median(med) if med else None,
                "max_ratio_over_labels": max(med) if med else None}
    start = {"init_cost": float(settings.get("init_cost"))}
    costs = {int(r.label): r.parts.get("final_cost") for r in result.labels}
    final = {"init_cost": costs.get(label)}
    per_label = [_ratio(c, start["init_cost"]) for c in costs.values()]
    med = [r for r in per_label if r is not None]
    return {"label": label, "label_is": why, "start": start, "final": final,
            "ratio": {"init_cost": _ratio(final["init_cost"], start["init_cost"])},
            "median_ratio_over_labels": statistics.median(med) if med else None,
            "max_ratio_over_labels": max(med) if med else None}


def cell_record(cell: dict, result, report: dict, truth, seconds: float, report_dir: str) -> dict:
    """What one finished cell keeps: the verdict, flagged labels, top label and its score /
    anomaly index, correctness and F1 (with ``truth``), augmentation and time (seconds)."""
    from ..compare import method_measures

    meas = method_measures(result, report, truth, faithful=False)
    top = top_label(result)
    entry = next((e for e in report.get("labels", []) if int(e["label"]) == top), {}) if top is not None else {}
    targets = [{k: e.get(k) for k in ("target", "flagged", "score", "rank", "mad_index", "precision", "recall",
                                      "f1", "note") if k in e} for e in meas["targets"]]
    return {
        "method": cell["method"],
        "vary": cell["vary"],
        "verdict": result.verdict,
        "flagged_labels": meas["flagged_labels"],
        "top_label": top,
        "top_score": entry.get("score"),
        "top_anomaly_index": entry.get("anomaly_index"),
        "anomaly_index": report.get("anomaly_index"),
        "correctness": meas["correctness"],
        "correctness_name": meas["correctness_name"],
        "targets": targets,
        "f1": meas.get("mean_f1"),
        "augmentation": augmentation_of(result, truth),
        "time_limited": result.time_limited,
        "scan_seconds": float(result.seconds),
        "seconds": float(seconds),
        "report_settings": {k: report["settings"].get(k) for k in (*LAMBDAS, "init_cost", "steps", "preset")
                            if k in report["settings"]},
        "report_dir": report_dir,
    }


# ----------------------------------------------------------------------------- summary


def _stats(values: list) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "mean": None, "min": None, "max": None, "std": None}
    return {"n": len(vals), "mean": statistics.fmean(vals), "min": min(vals), "max": max(vals),
            "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}


def _spread(values: list) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and v > 0]
    return max(vals) / min(vals) if vals else None


def method_summary(records: list) -> dict:
    """How often the verdict, flagged set, top label, symbol and F1 change over one method's cells."""
    n = len(records)
    verdicts = Counter(r["verdict"] for r in records)
    sets = Counter(",".join(map(str, sorted(r["flagged_labels"]))) or "-" for r in records)
    tops = Counter(r["top_label"] for r in records)
    symbols = Counter(r["correctness"] for r in records if r.get("correctness"))
    majority, n_major = verdicts.most_common(1)[0] if n else (None, 0)
    common_set, n_set = sets.most_common(1)[0] if n else (None, 0)
    common_top, n_top = tops.most_common(1)[0] if n else (None, 0)
    names = sorted({k for r in records for k in r["augmentation"]["start"]},
                   key=lambda k: (LAMBDAS + ("init_cost",)).index(k))
    aug = {}
    for k in names:
        starts = [r["augmentation"]["start"].get(k) for r in records]
        finals = [r["augmentation"]["final"].get(k) for r in records]
        ratios = [r["augmentation"]["ratio"].get(k) for r in records]
        aug[k] = {"start_spread": _spread(starts), "final_spread": _spread(finals), "ratio": _stats(ratios)}
    return {
        "cells": n,
        "verdicts": dict(verdicts),
        "majority_verdict": majority,
        "cells_with_majority_verdict": n_major,
        "flagged_sets": dict(sets),
        "most_common_flagged_set": common_set,
        "cells_with_most_common_flagged_set": n_set,
        "top_labels": {str(k): v for k, v in tops.items()},
        "most_common_top_label": common_top,
        "cells_with_most_common_top_label": n_top,
        "symbols": dict(symbols),
        "f1": _stats([r.get("f1") for r in records]),
        "augmentation": aug,
        "median_ratio_over_labels": _stats([r["augmentation"].get("median_ratio_over_labels") for r in records]),
        "time_limited_cells": sum(bool(r.get("time_limited")) for r in records),
        "seconds": sum(float(r.get("seconds") or 0.0) for r in records),
    }


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def cells_markdown(method: str, records: list) -> str:
    names = list(records[0]["vary"]) if records else []
    header = [*names, "verdict", "flagged", "symbol", "F1", "top label", "score", "anomaly idx",
              "aug. label", "final / start", "median over labels", "s"]
    rows = []
    for r in records:
        aug = r["augmentation"]
        ratios = [v for v in aug["ratio"].values() if v is not None]
        rows.append([*(_fmt(r["vary"][k]) for k in names), r["verdict"],
                     ",".join(map(str, r["flagged_labels"])) or "-", r.get("correctness") or "-", _num(r.get("f1")),
                     _num(r["top_label"]), _num(r.get("top_score")), _num(r.get("top_anomaly_index")),
                     f"{aug['label']} ({aug['label_is']})",
                     "x" + _num(max(ratios)) if ratios else "-",
                     "x" + _num(aug.get("median_ratio_over_labels")) if aug.get("median_ratio_over_labels") else "-",
                     f"{float(r.get('seconds') or 0):.1f}"])
    return f"### {TITLES[method]}: {len(records)} cells\n\n" + markdown_table(header, rows)


def summary_markdown(method: str, s: dict) -> str:
    n = s["cells"]
    lines = [f"### {TITLES[method]} summary ({n} cells)", ""]
    lines.append(f"- verdict: {s['cells_with_majority_verdict']}/{n} cells give the majority verdict "
                 f"'{s['majority_verdict']}' ({', '.join(f'{k} {v}' for k, v in s['verdicts'].items())})")
    sets = ", ".join(f"[{k}] {v}" for k, v in s["flagged_sets"].items())
    lines.append(f"- flagged set: {s['cells_with_most_common_flagged_set']}/{n} cells flag "
                 f"[{s['most_common_flagged_set']}] (sets: {sets})")
    lines.append(f"- top label: {s['cells_with_most_common_top_label']}/{n} cells rank label "
                 f"{s['most_common_top_label']} most suspicious")
    if s["symbols"]:
        lines.append("- correctness: " + ", ".join(f"{k} {v}" for k, v in s["symbols"].items()))
    f = s["f1"]
    if f["n"]:
        lines.append(f"- F1 of the restored trigger: mean {f['mean']:.3f}, min {f['min']:.3f}, max {f['max']:.3f},"
                     f" std {f['std']:.3f} ({f['n']} cells)")
    for k, a in s["augmentation"].items():
        r = a["ratio"]
        if not r["n"] or (k in LAMBDAS[1:] and (a["start_spread"] or 1.0) <= 1.0):
            continue  # TABOR's six lambdas share one factor: l1 always, the others when the grid varies them
        lines.append(f"- augmentation of {k}: final / start of the target (else top) label mean x{r['mean']:.3g}"
                     f" (min x{r['min']:.3g}, max x{r['max']:.3g}); spread over cells (max / min): start "
                     f"x{_num(a['start_spread'])} -> final x{_num(a['final_spread'])}")
    m = s["median_ratio_over_labels"]
    if m["n"]:
        lines.append(f"- median over labels of final / start: mean x{m['mean']:.3g} (min x{m['min']:.3g},"
                     f" max x{m['max']:.3g})")
    if s["time_limited_cells"]:
        lines.append(f"- {s['time_limited_cells']} cells were cut by a time limit")
    return "\n".join(lines)


def augmentation_note(summaries: dict) -> str:
    """One sentence per method on what the augmentation did to the starting values (measured)."""
    out = []
    for method, s in summaries.items():
        for k, a in s["augmentation"].items():
            if not a["ratio"]["n"] or (method == "tabor" and k != "l1"):
                continue
            what = "every lambda (all six scale together by m^k)" if method == "tabor" else "the cost"
            line = (f"{TITLES[method]}: the augmentation scaled {what} of the target (else top) label by x"
                    f"{a['ratio']['min']:.3g}..x{a['ratio']['max']:.3g} over the cells")
            varied = [(n, b) for n, b in s["augmentation"].items()
                      if b["start_spread"] and b["start_spread"] > 1 and b["final_spread"]]
            for n, b in varied:
                change = ("narrowed" if b["final_spread"] < b["start_spread"] / SAME_SPREAD else
                          "widened" if b["final_spread"] > b["start_spread"] * SAME_SPREAD else "stayed the same")
                line += (f"; the spread of {n} over the cells {change}: x{b['start_spread']:.3g} at the start,"
                         f" x{b['final_spread']:.3g} at the end")
            out.append(line)
    return "\n".join(f"- {line}" for line in out)


# ----------------------------------------------------------------------------- the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..commands.scan import add_common_input_arguments

    p.add_argument("model", metavar="MODEL", help="the victim (paper: 6-Conv GTSRB, 8x8 white square bottom-right)")
    add_common_input_arguments(p)
    p.add_argument("--truth", metavar="CARD", help="ground-truth card of MODEL: correctness symbol and trigger F1")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default sensitivity-<model>); resumed")
    p.add_argument("--labels", metavar="LIST", default=None, help="candidate labels, e.g. 0,3,5-9 (default all)")
    p.add_argument("--methods", nargs="+", default=["tabor", "nc"], metavar="METHOD",
                   help="tabor and/or nc (default both; commas also work)")
    p.add_argument("--grid", action="append", default=[], metavar="LAMBDA=V1,V2,...",
                   help="TABOR starting values to combine (repeatable, l1..l6); default Table 2's full grid "
                        "(64 cells); lambdas not named keep the preset's value")
    p.add_argument("--nc-costs", default=None, metavar="C1,C2,...",
                   help="Neural Cleanse init_cost values (default " + ",".join(map(_fmt, NC_COSTS)) + ")")
    p.add_argument("--tabor-preset", default=None, help="TABOR preset (default: gtsrb up to 64 px, else imagenet)")
    p.add_argument("--nc-preset", default="gtsrb", help="Neural Cleanse preset (default gtsrb, the faithful one)")
    p.add_argument("--set", dest="shared_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every cell of every method that has the setting (e.g. steps=50: a "
                        "budget-reduced run, said so in the output)")
    p.add_argument("--tabor-set", action="append", default=[], metavar="KEY=VALUE", help="TABOR-only override")
    p.add_argument("--nc-set", action="append", default=[], metavar="KEY=VALUE", help="Neural Cleanse-only override")


def run(args) -> int:
    from ..distribute import execution_from_args, using

    with using(execution_from_args(args)):
        return _run(args)


def _plan(args) -> dict:
    """Everything checked before loading: methods, cells, overrides, labels (``TaborError`` on bad input)."""
    from ..compare import check_methods
    from ..preprocess import resolve_mode
    from ..scanning import make_config, parse_labels, parse_overrides

    methods = check_methods([m for item in args.methods for m in str(item).split(",")])
    grid = parse_grid(args.grid)
    costs = parse_costs(args.nc_costs)
    shared_tabor, shared_nc = split_shared(args.shared_set)
    tabor_over = {**shared_tabor, **parse_overrides(args.tabor_set, "tabor")}
    nc_over = {**shared_nc, **parse_overrides(args.nc_set, "nc")}
    clash = sorted(set(grid) & set(tabor_over)) if "tabor" in methods else []
    if clash:
        raise TaborError(f"{', '.join(clash)} is varied by --grid and also set by --set/--tabor-set; drop one")
    if "neural_cleanse" in methods and "init_cost" in nc_over:
        raise TaborError("init_cost is varied by --nc-costs; do not set it with --set/--nc-set")
    if args.max_samples is not None and args.max_samples < 0:
        raise TaborError("--max-samples must be >= 0")
    resolve_mode(args.preprocess)
    cells = (tabor_cells(grid) if "tabor" in methods else []) + (nc_cells(costs) if "neural_cleanse" in methods else [])
    for cell in cells:  # every cell's config is valid before anything runs
        if cell["method"] == "tabor":
            make_config("tabor", args.tabor_preset or "gtsrb", {**tabor_over, **cell["vary"]})
        else:
            make_config("nc", args.nc_preset, {**nc_over, **cell["vary"]})
    return {"methods": methods, "grid": grid, "costs": costs, "tabor_over": tabor_over, "nc_over": nc_over,
            "cells": cells, "labels": parse_labels(args.labels)}


def _budget_notes(plan: dict, args) -> list:
    notes = []
    if "tabor" in plan["methods"] and (plan["tabor_over"] or args.tabor_preset not in (None, "gtsrb")):
        notes.append(f"budget-reduced / modified TABOR: preset {args.tabor_preset or 'default'} with "
                     f"{plan['tabor_over']} in every cell (not the paper's settings)")
    if "neural_cleanse" in plan["methods"] and (plan["nc_over"] or args.nc_preset != "gtsrb"):
        notes.append(f"budget-reduced / modified Neural Cleanse: preset {args.nc_preset} with {plan['nc_over']}"
                     " in every cell (NOT the faithful baseline)")
    if plan["labels"] is not None:
        notes.append(f"only labels {plan['labels']} scanned: every verdict is inconclusive (partial scan)")
    return notes


def _run(args) -> int:
    from ..compare import card_data_source, load_truth, public
    from ..scanning import DEFAULT_MAX_SAMPLES, prepare, run_scan, scan_identity
    from ..terminal import ProgressBar, say

    info = sys.stderr
    plan = _plan(args)
    truth = load_truth(args.truth) if args.truth else None
    data, synthetic = (args.data, {}) if args.data else (card_data_source(truth) if truth else (None, {}))
    if not data:
        raise TaborError("sensitivity needs clean data: --data PATH (or --data synthetic)")
    prep = args.preprocess
    if truth is not None and prep == "auto" and truth.get("preprocessing"):
        prep = truth["preprocessing"]
    max_samples = DEFAULT_MAX_SAMPLES if args.max_samples is None else args.max_samples
    stem = Path(str(args.model).rstrip("/")).name.rsplit(".", 1)[0] or "model"
    out = Path(args.out or f"sensitivity-{stem}")
    store = RecordStore(out)
    notes = _budget_notes(plan, args)
    for n in notes:
        say(f"note: {n}", stream=info, quiet=False)
    truth_id = None if truth is None else {"card": truth["card"], "targets": truth["targets"]}
    cells = plan["cells"]
    prepared = None
    identities = {}
    records = {m: [] for m in plan["methods"]}
    started = time.perf_counter()
    for i, cell in enumerate(cells, 1):
        method = cell["method"]
        tabor = method == "tabor"
        preset = args.tabor_preset if tabor else args.nc_preset
        overrides = {**(plan["tabor_over"] if tabor else plan["nc_over"]), **cell["vary"]}
        if method not in identities:  # hashes the model file once per method
            identities[method] = scan_identity(
                args.model, method=method, data_path=data, seed=args.seed, labels=plan["labels"], preprocess=prep,
                max_samples=max_samples, preset=preset, overrides={}, model_version=args.model_version,
                label_order=args.label_order)
        settings = dict(identities[method], overrides={k: overrides[k] for k in sorted(overrides)},
                        synthetic=synthetic or None, truth=truth_id)
        vary = " ".join(f"{k}={_fmt(v)}" for k, v in cell["vary"].items())
        record = store.get(cell["key"], settings)
        if record is None:
            if prepared is None:
                prepared = prepare(args.model, data, preprocess=prep, max_samples=max_samples,
                                   allow_unsafe=args.allow_unsafe_deserialization, model_version=args.model_version,
                                   labels=plan["labels"], allow_low_accuracy=args.allow_low_accuracy,
                                   label_order=args.label_order, **synthetic)
                acc = prepared.check.clean_accuracy
                say(f"model {prepared.victim.path}: preprocessing {prepared.check.mode}, clean accuracy "
                    f"{'unknown' if acc is None else f'{100 * acc:.1f}%'}, {len(prepared.data.x)} clean images; "
                    f"{len(cells)} cells", stream=info, quiet=args.quiet)
            cell_dir = out / "cells" / cell["key"]
            t0 = time.perf_counter()
            bar = ProgressBar(f"{TITLES[method]} {i}/{len(cells)} {vary}", stream=info, quiet=args.quiet)
            with bar:
                result, report = run_scan(method=method, labels=plan["labels"], seed=args.seed, preset=preset,
                                          overrides=overrides, out_dir=cell_dir, progress=bar, prepared=prepared,
                                          html=False)
            rec = cell_record(cell, result, report, truth, time.perf_counter() - t0,
                              os.path.relpath(cell_dir, out))
            record = store.put(cell["key"], rec, settings)
            done = ""
        else:
            done = " (done before)"
        f1 = "" if record.get("f1") is None else f", F1 {record['f1']:.2f}"
        print(f"[sensitivity] {TITLES[method]} cell {i}/{len(cells)} {vary}: {record['verdict']}, flagged "
              f"{record['flagged_labels']}{f1}, {float(record['seconds']):.1f} s{done}", file=info, flush=True)
        records[method].append(record)
    summaries = {m: method_summary(records[m]) for m in plan["methods"]}
    result = {
        "kind": "tabor-tf-sensitivity",
        "model": os.path.abspath(str(args.model)),
        "data": data if str(data) == "synthetic" else os.path.abspath(str(data)),
        "truth": public(truth),
        "seed": int(args.seed),
        "grid": {k: list(v) for k, v in plan["grid"].items()} if "tabor" in plan["methods"] else None,
        "nc_costs": list(plan["costs"]) if "neural_cleanse" in plan["methods"] else None,
        "tabor_preset": args.tabor_preset, "tabor_overrides": plan["tabor_over"],
        "nc_preset": args.nc_preset, "nc_overrides": plan["nc_over"],
        "notes": notes,
        "augmentation": augmentation_note(summaries),
        "summary": summaries,
        "cells": records,
        "seconds_this_run": time.perf_counter() - started,
    }
    summary_md = "\n\n".join(summary_markdown(m, summaries[m]) for m in plan["methods"])
    head = [f"# Hyperparameter sensitivity: {Path(str(args.model)).name}", ""]
    head += [f"- note: {n}" for n in notes]
    if result["augmentation"]:
        head += ["", "What the augmentation does to the starting values (measured):", result["augmentation"]]
    body = "\n\n".join(cells_markdown(m, records[m]) for m in plan["methods"])
    markdown = "\n".join(head) + "\n\n## Summary\n\n" + summary_md + "\n\n## Cells\n\n" + body
    json_path, md_path = write_outputs(out, NAME, result, markdown)
    for n in notes:
        print(f"note: {n}")
    print(summary_md)
    if result["augmentation"]:
        print("augmentation (measured):\n" + result["augmentation"])
    print(f"sensitivity: {json_path}  {md_path}", flush=True)
    return 0
