"""Results shared by TABOR and Neural Cleanse: one ``LabelResult`` per scanned label, one ``ScanResult``.

Arrays: ``mask`` is ``[H, W]`` float32 in [0, 1]; ``pattern`` is ``[H, W, C]`` float32 raw pixels 0..255.
``score`` is what the MAD test ran on: the mask L1 norm for Neural Cleanse, the quality metric A
for TABOR (lower = more suspicious in both). ``parts`` holds method-specific numbers
(TABOR: the five parts of A; NC: cost at the end...), all JSON-serialisable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .outliers import MadResult


@dataclass
class LabelResult:
    label: int
    mask: np.ndarray  # [H, W] float32 in [0, 1]
    pattern: np.ndarray  # [H, W, C] float32 raw 0..255
    score: float
    attack_success: float  # fraction 0..1 of clean images sent to ``label`` by the trigger
    l1: float  # L1 norm of the mask (sum of its values)
    steps: int
    stop_reason: str
    seconds: float
    parts: dict = field(default_factory=dict)
    # the whole trigger grown from ``mask`` by ``tabor_tf.completion`` (flagged labels only; else None)
    completed_mask: Optional[np.ndarray] = None  # [H, W] in [0, 1]
    completed_pattern: Optional[np.ndarray] = None  # [H, W, C] raw 0..255

    @property
    def fusion(self) -> np.ndarray:
        """``M * Delta`` as ``[H, W, C]`` raw pixels: what the trigger looks like on black."""
        return self.mask[..., None] * self.pattern

    def summary(self) -> dict:
        """JSON-ready numbers (no arrays)."""
        return {
            "label": int(self.label),
            "score": float(self.score),
            "attack_success": float(self.attack_success),
            "l1": float(self.l1),
            "steps": int(self.steps),
            "stop_reason": self.stop_reason,
            "seconds": float(self.seconds),
            "parts": {k: _jsonable(v) for k, v in self.parts.items()},
        }


@dataclass
class ScanResult:
    """Everything one method found on one model; the report writer turns it into files."""

    method: str  # "tabor" or "neural_cleanse"
    labels: list  # of LabelResult, in label order
    mad: MadResult
    seconds: float
    settings: dict = field(default_factory=dict)  # the preset / overrides actually used
    clean_accuracy: Optional[float] = None
    notes: list = field(default_factory=list)
    num_classes: Optional[int] = None  # the model's class count (to tell a partial scan from a full one)
    inconclusive: list = field(default_factory=list)  # reasons no verdict can be given (e.g. low clean accuracy)
    time_limited: Optional[str] = None  # how a deadline (--time-budget) cut the scan short; None: it did not
    label_selection: Optional[str] = None  # how the scanned labels were chosen when not all (e.g. the pre-screen)

    @property
    def partial(self) -> bool:
        """True when fewer labels were scanned than the model has classes (``--labels``)."""
        return self.num_classes is not None and len(self.labels) < int(self.num_classes)

    @property
    def inconclusive_reasons(self) -> list:
        """Why this scan gives no clean / infected verdict: the stored reasons, plus partial coverage."""
        reasons = list(self.inconclusive)
        if self.partial:
            why = self.label_selection or ("the time budget ended the scan" if self.time_limited else "--labels")
            reasons.append(
                f"partial scan: {len(self.labels)} of {int(self.num_classes)} labels were scanned ({why}); the"
                " labels not scanned were not looked at and a MAD test over a subset is not a verdict")
        elif self.time_limited and not self.mad.flagged_labels:
            reasons.append(f"{self.time_limited}; no label is an outlier yet, but a complete search may still"
                           " find one (rerun the same command, with more time, to resume it)")
        return reasons

    @property
    def verdict(self) -> str:
        """``inconclusive`` (see ``inconclusive_reasons``), else ``infected`` / ``clean`` by the MAD test.
        A time-limited scan that flags a label is ``infected`` (its evidence is already there); one that
        flags none is ``inconclusive``, never ``clean``."""
        if self.inconclusive_reasons:
            return "inconclusive"
        return "infected" if self.mad.flagged_labels else "clean"

    @property
    def flagged_labels(self) -> list:
        return list(self.mad.flagged_labels)

    @property
    def detection_limit(self) -> Optional[dict]:
        """What the model's natural features cost: the median restored mask L1 of the scanned labels
        (pixels, mask values summed) and its share of the image's ``H * W`` pixels. A backdoor whose
        smallest working trigger costs about this much is not a low outlier for either method, so a
        clean verdict does not rule it out (docs/TABOR_CHOICES.md, "Large triggers"). ``None``
        without labels."""
        if not self.labels:
            return None
        median = float(np.median([float(r.l1) for r in self.labels]))
        height, width = np.shape(self.labels[0].mask)[:2]
        pixels = int(height * width)
        return {"natural_l1_median": median, "image_pixels": pixels, "natural_fraction": median / max(pixels, 1)}

    def by_label(self, label: int) -> LabelResult:
        for r in self.labels:
            if r.label == int(label):
                return r
        raise KeyError(label)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
