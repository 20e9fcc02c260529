"""Which labels a scan searches when it cannot afford all of them.

Two ways in: ``--prescreen N`` (search the N labels the logit pre-screen finds most suspicious,
``tabor_tf/prescreen.py``) and a ``--time-budget`` too short for every label (TABOR:
``estimate.plan_for_budget`` says how many labels, and on how many scoring images, fit). Either
way the scan covers a subset: its verdict is ``inconclusive`` with the flagged labels as
candidates, and the report says how the labels were chosen (``coverage.label_selection``).

The plan is saved in the scan folder's checkpoint area (``label_plan.json``), so the same
command, rerun to resume, searches the same labels (the throughput probe varies between runs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from . import prescreen
from .errors import TaborError
from .estimate import plan_for_budget

PLAN_FILE = "label_plan.json"


@dataclass
class LabelPlan:
    labels: Optional[list] = None  # labels to search; None: all the candidates
    eval_images: Optional[int] = None  # scoring images when fewer than the preset's; None: the preset's
    selection: Optional[str] = None  # the report's words for how the labels were chosen
    lines: list = field(default_factory=list)  # what to tell the user before the search

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "lines"})


def load_plan(folder) -> Optional[LabelPlan]:
    """The plan an earlier run of the same scan saved in ``folder``, or None."""
    path = Path(folder) / PLAN_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LabelPlan(labels=data.get("labels"), eval_images=data.get("eval_images"),
                         selection=data.get("selection"))
    except (OSError, ValueError, AttributeError):
        return None


def save_plan(folder, plan: LabelPlan) -> None:
    if folder is None:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PLAN_FILE + ".tmp")
    tmp.write_text(plan.to_json(), encoding="utf-8")
    tmp.replace(folder / PLAN_FILE)


def make_plan(prepared, candidates: Sequence[int], *, keep: Optional[int] = None, budget=None,
              config=None) -> LabelPlan:
    """The labels to search among ``candidates``.

    ``keep``: ``--prescreen N``. ``budget``: ``(seconds_left, images_per_second)`` of a TABOR
    ``--time-budget`` scan, with its ``config``: the count ``estimate.plan_for_budget`` fits.
    The smaller count wins; all candidates (``labels=None``) when both allow them.
    """
    candidates = sorted(int(v) for v in candidates)
    n_images = len(prepared.data.x)
    plan = LabelPlan()
    reasons, count = [], len(candidates)
    if keep is not None:
        if int(keep) < 3:
            raise TaborError(f"--prescreen must keep at least 3 labels (the outlier test's minimum), got {keep}")
        if int(keep) < count:
            count = int(keep)
            reasons.append(f"--prescreen {int(keep)}")
    if budget is not None:
        seconds_left, ips = budget
        fit = plan_for_budget(seconds_left, ips, len(candidates), config, n_images)
        if fit.eval_images < min(int(config.eval_images), n_images):
            plan.eval_images = fit.eval_images
            plan.lines.append(f"the metric scores the triggers on {fit.eval_images} clean images instead of"
                              f" {min(int(config.eval_images), n_images)} to fit the time budget")
        if fit.labels < count:
            count = fit.labels
            reasons = [f"--time-budget fits about {fit.labels} labels at {fit.steps_each} steps each"]
        if not fit.fits:
            plan.lines.append(f"even {fit.labels} labels at {fit.steps_each} steps need more than the time left"
                              f" (~{seconds_left:.0f} s at ~{ips:,.1f} images/s): the answer will be cut short")
    if count < len(candidates):
        logits = prescreen.clean_logits(prepared.victim, prepared.data.x, prepared.check.mode)
        y = prepared.data.y if prepared.data.y is not None else logits.argmax(axis=1)
        plan.labels = prescreen.choose(logits, y, candidates, count)
        plan.selection = prescreen.describe("; ".join(reasons))
        shown = ", ".join(map(str, plan.labels[:12])) + (", ..." if count > 12 else "")
        plan.lines.insert(0, f"searching {count} of {len(candidates)} labels, the most suspicious by the logit"
                             f" pre-screen ({'; '.join(reasons)}): {shown}")
    return plan
