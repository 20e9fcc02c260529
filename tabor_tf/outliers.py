"""The MAD outlier test of Neural Cleanse, used on L1 norms (NC) and on the quality metric A (TABOR).

Median convention: numpy's (mean of the two middle values for an even count), so repeated runs
on the same scores never flip between the lower and upper median.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        }


def mad_test(scores, labels=None, threshold: float = 2.0) -> MadResult:
    """Flag labels whose score is a low outlier.

    ``scores``: one float per label; ``labels``: the label ids (default ``0..K-1``).
    A label is flagged when ``score <= median`` and ``|score - median| / mad > threshold``.
    The model's anomaly index is that of the smallest score. With MAD = 0 (at least half the
    scores equal the median) the reference divides by zero: a score below the median then has
    an infinite index and is flagged, one at the median has index 0; all equal -> nothing flagged.
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
    mad = float(CONSISTENCY * np.median(np.abs(s - median)))
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
    )
