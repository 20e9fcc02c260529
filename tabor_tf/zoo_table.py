"""The zoo table laid out like TABOR's Table 1, in Markdown and CSV, and its summary.

Rows: one per victim model, ordered trigger shape x position x size, clean models last.
Columns: for each method, precision / recall / F1 of the restored trigger of the true target
(paper eq. 9, against the card's mask; the mean over targets when a model has several) and the
correctness symbol (``●`` ``◐`` ``⊖`` ``○``, ``tabor_tf.fidelity``).
Summary per method: how many models got each symbol, mean F1 over the infected models, false
alarms on the clean models, total time.

Input: the ``compare.json`` dictionaries written by ``tabor_tf.compare`` (``row_from_compare``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .fidelity import FAILURE, INCORRECT, SUCCESS, SUCCESS_WITH_ERRORS, SYMBOL_NAMES

SYMBOLS = (SUCCESS, SUCCESS_WITH_ERRORS, INCORRECT, FAILURE)
METHOD_TITLES = {"tabor": "TABOR", "neural_cleanse": "NC"}
POSITION_ORDER = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class MethodCell:
    """One method's numbers on one model (fidelity is None for clean models)."""

    correctness: str
    precision: Optional[float] = None
    recall: Optional[float] = None
    f1: Optional[float] = None
    flagged: tuple = ()
    anomaly_index: Optional[float] = None
    seconds: Optional[float] = None


@dataclass(frozen=True)
class ZooRow:
    """One victim model: its trigger (shape, position, size in pixels) or clean, and each method's cell."""

    name: str
    shape: str  # "square", "icon", ... or "clean"
    position: str  # "top-left", ... or "" for clean models
    size: Optional[int]  # trigger side in pixels, None for clean models
    targets: tuple = ()
    cells: dict = field(default_factory=dict)  # method -> MethodCell

    @property
    def clean(self) -> bool:
        return not self.targets


def _mean(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def row_from_compare(compare: dict, name: Optional[str] = None) -> ZooRow:
    """A table row from one ``compare.json`` (it must carry a ground-truth ``truth`` block)."""
    truth = compare.get("truth") or {}
    targets = tuple(int(t) for t in truth.get("targets", []))
    triggers = truth.get("triggers") or []
    first = triggers[0] if triggers else {}
    if targets:
        shape = str(first.get("shape", "?"))
        if len(triggers) > 1:
            shape = "+".join(str(t.get("shape", "?")) for t in triggers)
        position = str(first.get("position", ""))
        size = first.get("size")
        size = int(size) if size is not None else None
    else:
        shape, position, size = "clean", "", None
    cells = {}
    for method in compare.get("methods", []):
        m = compare.get("measures", {}).get(method, {})
        per_target = m.get("targets", [])
        cells[method] = MethodCell(
            correctness=m.get("correctness", "?"),
            precision=_mean(e.get("precision") for e in per_target) if targets else None,
            recall=_mean(e.get("recall") for e in per_target) if targets else None,
            f1=_mean(e.get("f1") for e in per_target) if targets else None,
            flagged=tuple(int(v) for v in m.get("flagged_labels", [])),
            anomaly_index=m.get("anomaly_index"),
            seconds=m.get("seconds"),
        )
    return ZooRow(
        name=name or str(truth.get("name") or compare.get("name") or compare.get("model", {}).get("path", "?")),
        shape=shape,
        position=position,
        size=size,
        targets=targets,
        cells=cells,
    )


def sort_rows(rows: Sequence[ZooRow]) -> list:
    """Shape, then position (top-left, top-right, bottom-left, bottom-right), then size; clean last."""

    def key(r: ZooRow):
        pos = POSITION_ORDER.index(r.position) if r.position in POSITION_ORDER else len(POSITION_ORDER)
        return (r.clean, r.shape, pos, r.position, r.size if r.size is not None else -1, r.name)

    return sorted(rows, key=key)


def methods_of(rows: Sequence[ZooRow]) -> list:
    seen = []
    for r in rows:
        for m in r.cells:
            if m not in seen:
                seen.append(m)
    return seen


def _num(v: Optional[float], digits: int = 2) -> str:
    return "–" if v is None else f"{float(v):.{digits}f}"


def _trigger_cols(r: ZooRow) -> list:
    if r.clean:
        return ["clean", "–", "–"]
    return [r.shape, r.position or "?", f"{r.size}" if r.size is not None else "?"]


def to_markdown(rows: Sequence[ZooRow], methods: Optional[Sequence[str]] = None) -> str:
    """Table 1 as a GitHub Markdown table."""
    rows = sort_rows(rows)
    methods = list(methods or methods_of(rows))
    head = ["model", "trigger", "position", "size"]
    for m in methods:
        t = METHOD_TITLES.get(m, m)
        head += [f"{t} precision", f"{t} recall", f"{t} F1", f"{t} correct"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:", "---:", "---:", ":---:"] * len(methods)) + "|"]
    for r in rows:
        cols = [r.name] + _trigger_cols(r)
        for m in methods:
            c = r.cells.get(m)
            if c is None:
                cols += ["–"] * 4
            else:
                cols += [_num(c.precision), _num(c.recall), _num(c.f1), c.correctness]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[ZooRow], methods: Optional[Sequence[str]] = None) -> str:
    """Table 1 as CSV (one row per model; empty cells where a number does not apply)."""
    rows = sort_rows(rows)
    methods = list(methods or methods_of(rows))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["model", "trigger", "position", "size", "targets"]
    for m in methods:
        head += [f"{m}_precision", f"{m}_recall", f"{m}_f1", f"{m}_correctness", f"{m}_flagged",
                 f"{m}_anomaly_index", f"{m}_seconds"]
    w.writerow(head)
    for r in rows:
        out = [r.name, "clean" if r.clean else r.shape, r.position, "" if r.size is None else r.size,
               " ".join(map(str, r.targets))]
        for m in methods:
            c = r.cells.get(m)
            if c is None:
                out += [""] * 7
                continue

            def f(v, d=4):
                return "" if v is None else f"{float(v):.{d}f}"

            out += [f(c.precision), f(c.recall), f(c.f1), c.correctness, " ".join(map(str, c.flagged)),
                    f(c.anomaly_index, 3), f(c.seconds, 1)]
        w.writerow(out)
    return buf.getvalue()


def summarize(rows: Sequence[ZooRow], methods: Optional[Sequence[str]] = None) -> dict:
    """Per method: symbol counts (all models), mean F1 (infected models), false alarms (clean models)."""
    methods = list(methods or methods_of(rows))
    infected = [r for r in rows if not r.clean]
    clean = [r for r in rows if r.clean]
    out = {"models": len(rows), "infected_models": len(infected), "clean_models": len(clean), "methods": {}}
    for m in methods:
        cells = [(r, r.cells[m]) for r in rows if m in r.cells]
        counts = {s: sum(1 for _, c in cells if c.correctness == s) for s in SYMBOLS}
        out["methods"][m] = {
            "counts": counts,
            "counts_by_name": {SYMBOL_NAMES[s]: n for s, n in counts.items()},
            "infected_counts": {s: sum(1 for r, c in cells if not r.clean and c.correctness == s) for s in SYMBOLS},
            "detected": sum(1 for r, c in cells if not r.clean and set(r.targets) <= set(c.flagged)),
            "mean_f1": _mean(c.f1 for r, c in cells if not r.clean),
            "mean_precision": _mean(c.precision for r, c in cells if not r.clean),
            "mean_recall": _mean(c.recall for r, c in cells if not r.clean),
            "false_alarms": sum(1 for r, c in cells if r.clean and c.flagged),
            "seconds": sum(float(c.seconds or 0.0) for _, c in cells),
        }
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def summary_markdown(summary: dict) -> str:
    """The summary as a small Markdown table (one row per method)."""
    methods = list(summary.get("methods", {}))
    head = "| method | " + " | ".join(SYMBOLS) + " | detected | mean F1 | false alarms (clean) | time |"
    lines = [head, "|---|" + "---:|" * (len(SYMBOLS) + 4)]
    for m in methods:
        s = summary["methods"][m]
        counts = [str(s["counts"].get(sym, 0)) for sym in SYMBOLS]
        lines.append(
            f"| {METHOD_TITLES.get(m, m)} | " + " | ".join(counts)
            + f" | {s['detected']}/{summary['infected_models']} | {_num(s['mean_f1'])}"
            + f" | {s['false_alarms']}/{summary['clean_models']} | {_minutes(s['seconds'])} |"
        )
    legend = "Symbols: " + ", ".join(f"{sym} {SYMBOL_NAMES[sym]}" for sym in SYMBOLS) + "."
    return "\n".join(lines) + "\n\n" + legend + "\n"
