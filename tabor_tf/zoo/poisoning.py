"""BadNet data poisoning in the raw pixel domain (Gu et al. 2017, as used by NC and TABOR).

A ``Backdoor`` is one trigger tied to one target label. Two backdoors give either two targets or
one target reached by two triggers. For each backdoor, ``poison_rate * N`` training images whose
label is not the target are stamped with its trigger and relabelled to the target (in place of
the clean copy; the sets of different backdoors are disjoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from ..errors import TaborError
from ..stamping import stamp
from .triggers import TriggerSpec


@dataclass(frozen=True)
class Backdoor:
    """A trigger and the label it forces."""

    trigger: TriggerSpec
    target: int

    def to_dict(self) -> dict:
        return {"target": int(self.target), "trigger": self.trigger.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Backdoor":
        if "target" not in d or "trigger" not in d:
            raise TaborError(f"a backdoor needs 'target' and 'trigger', got {sorted(d)}")
        return cls(TriggerSpec.from_dict(d["trigger"]), int(d["target"]))


def apply_trigger(x_raw: np.ndarray, trigger: TriggerSpec) -> np.ndarray:
    """Stamp ``trigger`` on raw images ``[N,H,W,C]`` (uint8 or float 0..255); returns the same dtype."""
    mask, pattern = trigger.render(x_raw.shape[1:])
    out = stamp(x_raw.astype(np.float32), mask[..., None], pattern)
    if x_raw.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(x_raw.dtype)


def poison(
    x: np.ndarray, y: np.ndarray, backdoors: Sequence[Backdoor], rate: float, *, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray]]:
    """Poison a training set.

    ``x [N,H,W,C]`` raw pixels, ``y [N]`` int labels. Returns ``(x_poisoned, y_poisoned,
    indices)`` where ``indices[i]`` are the rows that carry backdoor ``i`` (``round(rate * N)``
    of them, all originally labelled != its target). Inputs are not modified.
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
    for bd in backdoors:
        candidates = np.flatnonzero(free & (np.asarray(y) != bd.target))
        if len(candidates) < count:
            raise TaborError(
                f"poison rate {rate} needs {count} images per backdoor but only {len(candidates)} are left"
            )
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        free[chosen] = False
        x_out[chosen] = apply_trigger(x[chosen], bd.trigger)
        y_out[chosen] = bd.target
        indices.append(chosen)
    return x_out, y_out, indices
