"""BadNet data poisoning in the raw pixel domain (Gu et al. 2017, as used by NC and TABOR).

A ``Backdoor`` is one trigger tied to one target label (``all-to-one``, the default), or, with
``mode="all-to-all"``, a trigger that sends every label ``y`` to ``(y + 1) mod K`` (a detector
blind spot: no single target). Two backdoors give either two targets or one target reached by
two triggers. For each backdoor, ``poison_rate * N`` training images (whose label is not the
target, for all-to-one) are stamped with its trigger and relabelled (in place of the clean copy;
the sets of different backdoors are disjoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import TaborError
from ..stamping import stamp
from .triggers import TriggerSpec


MODES = ("all-to-one", "all-to-all")


@dataclass(frozen=True)
class Backdoor:
    """A trigger and the label it forces (``target``), or ``mode="all-to-all"``: y -> (y+1) mod K
    (``target`` is then -1)."""

    trigger: TriggerSpec
    target: int = -1
    mode: str = "all-to-one"

    def __post_init__(self):
        if self.mode not in MODES:
            raise TaborError(f"unknown backdoor mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.mode == "all-to-all":
            object.__setattr__(self, "target", -1)
        elif int(self.target) < 0:
            raise TaborError(f"an all-to-one backdoor needs a target label >= 0, got {self.target}")
        object.__setattr__(self, "target", int(self.target))

    @property
    def all_to_all(self) -> bool:
        return self.mode == "all-to-all"

    @property
    def blind_spot(self) -> Optional[str]:
        """Why a single-target patch detector is not expected to find this backdoor, or ``None``."""
        if self.all_to_all:
            return "all-to-all: every label y goes to (y+1) mod K, there is no single target"
        return self.trigger.blind_spot

    def relabel(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """The labels ``[N]`` that images of true labels ``y [N]`` get once stamped."""
        y = np.asarray(y).astype(np.int64)
        if self.all_to_all:
            return (y + 1) % int(num_classes)
        return np.full_like(y, self.target)

    def to_dict(self) -> dict:
        if self.all_to_all:
            return {"mode": self.mode, "trigger": self.trigger.to_dict()}
        return {"target": int(self.target), "trigger": self.trigger.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Backdoor":
        unknown = set(d) - {"target", "trigger", "mode"}
        if unknown:
            raise TaborError(f"unknown backdoor field(s) {', '.join(sorted(unknown))} (target, trigger, mode)")
        mode = d.get("mode", "all-to-one")
        if "trigger" not in d or ("target" not in d and mode != "all-to-all"):
            raise TaborError(f"a backdoor needs 'target' and 'trigger', got {sorted(d)}")
        return cls(TriggerSpec.from_dict(d["trigger"]), int(d.get("target", -1)), mode)


def apply_trigger(x_raw: np.ndarray, trigger: TriggerSpec) -> np.ndarray:
    """Stamp ``trigger`` on raw images ``[N,H,W,C]`` (uint8 or float 0..255); returns the same dtype."""
    mask, pattern = trigger.render(x_raw.shape[1:])
    out = stamp(x_raw.astype(np.float32), mask[..., None], pattern)
    if x_raw.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(x_raw.dtype)


def poison(
    x: np.ndarray, y: np.ndarray, backdoors: Sequence[Backdoor], rate: float, *, seed: int = 0,
    num_classes: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray]]:
    """Poison a training set.

    ``x [N,H,W,C]`` raw pixels, ``y [N]`` int labels. Returns ``(x_poisoned, y_poisoned,
    indices)`` where ``indices[i]`` are the rows that carry backdoor ``i`` (``round(rate * N)``
    of them, all originally labelled != its target; any label for all-to-all, relabelled
    ``(y+1) mod num_classes``, ``num_classes`` defaulting to ``max(y) + 1``). Inputs are not
    modified.
    """
    if not backdoors:
        return x.copy(), y.copy(), []
    if not 0.0 < rate < 1.0:
        raise TaborError(f"poison rate must be between 0 and 1 (exclusive), got {rate}")
    n = len(x)
    count = int(round(rate * n))
    rng = np.random.default_rng(seed)
    free = np.ones(n, bool)
    x_out, y_out = x.copy(), np.asarray(y).astype(np.int64).copy()
    indices = []
    k = int(num_classes) if num_classes else int(np.max(y)) + 1
    for bd in backdoors:
        candidates = np.flatnonzero(free & (np.asarray(y) != bd.target))
        if len(candidates) < count:
            raise TaborError(
                f"poison rate {rate} needs {count} images per backdoor but only {len(candidates)} are left"
            )
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        free[chosen] = False
        x_out[chosen] = apply_trigger(x[chosen], bd.trigger)
        y_out[chosen] = bd.relabel(y_out[chosen], k)
        indices.append(chosen)
    return x_out, y_out, indices
