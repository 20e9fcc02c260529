"""Progress events a long scan emits, so the CLI can draw a bar and tests can count steps.

A detector calls ``progress(ProgressEvent(...))`` after each optimisation step (or round) and
after each label finishes. ``progress=None`` means silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class ProgressEvent:
    method: str  # "tabor" or "neural_cleanse"
    labels_done: int  # labels whose result is final
    labels_total: int
    step: int  # current optimisation step of the label(s) being worked on
    max_steps: int
    label: Optional[int] = None  # the label being optimised (None when many at once)
    message: str = ""


ProgressFn = Optional[Callable[[ProgressEvent], None]]


def emit(progress: ProgressFn, **fields) -> None:
    """Call ``progress`` with a ``ProgressEvent`` when one is given."""
    if progress is not None:
        progress(ProgressEvent(**fields))
