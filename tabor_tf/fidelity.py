"""Evaluation measures of TABOR section 5.2.2: trigger fidelity and detection correctness."""

from __future__ import annotations

import numpy as np

SUCCESS = "●"  # infected: every true target flagged and nothing else; clean: nothing flagged
SUCCESS_WITH_ERRORS = "◐"  # every true target flagged, plus extra labels
INCORRECT = "⊖"  # something flagged, but not (all of) the true target(s)
FAILURE = "○"  # infected with nothing flagged, or clean with something flagged
SYMBOL_NAMES = {
    SUCCESS: "success",
    SUCCESS_WITH_ERRORS: "success with errors",
    INCORRECT: "incorrect",
    FAILURE: "failure",
}


def trigger_fidelity(mask, true_mask) -> dict:
    """Precision, recall and F1 (paper eq. 9) of a restored mask against the ground truth.

    ``mask``, ``true_mask``: ``[H, W]`` (or ``[H, W, 1]``) in [0, 1], same size.
    precision = |M * M_gt|_1 / |M|_1, recall = |M * M_gt|_1 / |M_gt|_1, F1 = harmonic mean.
    """
    m = np.asarray(mask, dtype=np.float64).reshape(np.shape(mask)[:2])
    g = np.asarray(true_mask, dtype=np.float64).reshape(np.shape(true_mask)[:2])
    if m.shape != g.shape:
        raise ValueError(f"mask {m.shape} and true mask {g.shape} differ in size")
    overlap = float(np.sum(m * g))
    precision = overlap / float(np.sum(m)) if np.sum(m) > 0 else 0.0
    recall = overlap / float(np.sum(g)) if np.sum(g) > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def correctness(flagged, true_targets) -> str:
    """The correctness symbol of one detection (● ◐ ⊖ ○) from flagged labels and true targets.

    ``true_targets`` empty means the model is clean.
    """
    flagged = {int(v) for v in flagged}
    targets = {int(v) for v in true_targets}
    if not targets:
        return SUCCESS if not flagged else FAILURE
    if not flagged:
        return FAILURE
    if targets <= flagged:
        return SUCCESS if flagged == targets else SUCCESS_WITH_ERRORS
    return INCORRECT
