"""The MAD outlier test of Neural Cleanse, used on L1 norms (NC) and on the quality metric A (TABOR).

Neural Cleanse flags a label whose anomaly index exceeds 2 whatever the number of labels. Read as
a z-score, 2 is a one-sided 2.3% chance per label, so a model with 43 ordinary labels shows one
"outlier" more often than not. ``family_threshold`` raises the bar with the label count instead
(a Bonferroni bound: the chance that any of K ordinary labels crosses it is about ``alpha``);
TABOR uses it (docs/TABOR_CHOICES.md), the faithful Neural Cleanse keeps 2.

Median convention: numpy's (mean of the two middle values for an even count), so repeated runs
on the same scores never flip between the lower and upper median.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

CONSISTENCY = 1.4826  # makes MAD a consistent estimator of the standard deviation (normal data)


@dataclass(frozen=True)
class MadResult:
    """Outcome of the MAD test on per-label scores (lower score = more suspicious)."""

    median: float
    mad: float
    anomaly_index: float  # |min(score) - median| / mad
    threshold: float
    flagged_labels: list = field(default_factory=list)  # ints, most suspicious (smallest) first
    label_indices: dict = field(default_factory=dict)  # label -> signed (score - median) / mad
    side: str = "both"  # which deviations the MAD was taken over (mad_test)
    floor: float = 0.0  # the smallest scale the index divides by (mad_test's min_mad; 0: none)
    # set when fresh starts replaced the evidence (tabor/confirm.py): the first start's anomaly_index
    first_anomaly_index: Optional[float] = None

    @property
    def infected(self) -> bool:
        return len(self.flagged_labels) > 0

    def to_dict(self) -> dict:
        return {
            "median": self.median,
            "mad": self.mad,
            "anomaly_index": self.anomaly_index,
            "threshold": self.threshold,
            "flagged_labels": list(self.flagged_labels),
            "label_indices": {str(k): v for k, v in self.label_indices.items()},
            "side": self.side,
            "floor": self.floor,
            **({} if self.first_anomaly_index is None else {"first_anomaly_index": self.first_anomaly_index}),
        }


def family_threshold(num_labels: int, alpha: float, floor: float = 2.0) -> float:
    """The anomaly-index threshold at which K ordinary (normal) labels give a false flag with
    chance about ``alpha``: ``Phi^-1(1 - alpha / K)``, never below ``floor``; ``alpha <= 0``: ``floor``.

    43 labels, alpha 0.05: 3.05; 10 labels: 2.58.
    """
    if alpha <= 0:
        return float(floor)
    from scipy.stats import norm

    k = max(int(num_labels), 1)
    return float(max(floor, norm.isf(min(float(alpha), 1.0) / k)))


def mad_test(scores, labels=None, threshold: float = 2.0, side: str = "both", min_mad: float = 0.0) -> MadResult:
    """Flag labels whose score is a low outlier.

    ``scores``: one float per label; ``labels``: the label ids (default ``0..K-1``).
    ``side``: ``both`` (NC: MAD of all deviations from the median) or ``low`` (MAD of the
    deviations of the scores at or below the median only: the spread on the side where outliers
    are looked for, so a long tail of bad scores above the median does not hide a low outlier).
    A label is flagged when ``score <= median`` and ``|score - median| / mad > threshold``.
    The model's anomaly index is that of the smallest score. With MAD = 0 (at least half the
    scores equal the median) the reference divides by zero: a score below the median then has
    an infinite index and is flagged, one at the median has index 0; all equal -> nothing flagged.
    ``min_mad`` > 0: the scale is ``max(MAD, min_mad)`` (in score units), so labels that differ by
    less than that are not outliers however tightly the others agree (TABOR: ``mad_floor``).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels is None:
        labels = list(range(len(s)))
    labels = [int(v) for v in labels]
    if len(s) != len(labels):
        raise ValueError(f"{len(s)} scores for {len(labels)} labels")
    if len(s) < 3:
        raise ValueError(f"the MAD test needs at least 3 labels, got {len(s)}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite for the MAD test")
    median = float(np.median(s))
    if side not in ("both", "low"):
        raise ValueError(f"side must be 'both' or 'low', got {side!r}")
    deviations = np.abs(s - median) if side == "both" else median - s[s <= median]
    if not min_mad >= 0:
        raise ValueError(f"min_mad must be >= 0, got {min_mad}")
    mad = max(float(CONSISTENCY * np.median(deviations)), float(min_mad))
    if mad <= 0.0:
        idx = np.where(s < median, -np.inf, np.where(s > median, np.inf, 0.0))
    else:
        idx = (s - median) / mad
    anomaly = float(abs(idx[int(np.argmin(s))]))
    order = np.argsort(s, kind="stable")
    flagged = [labels[i] for i in order if s[i] <= median and abs(idx[i]) > threshold]
    return MadResult(
        median=median,
        mad=mad,
        anomaly_index=anomaly,
        threshold=float(threshold),
        flagged_labels=flagged,
        label_indices={labels[i]: float(idx[i]) for i in range(len(s))},
        side=side,
        floor=float(min_mad),
    )
