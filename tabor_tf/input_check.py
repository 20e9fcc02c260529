"""Which preprocessing maps the user's raw pixels to what the model expects, and does it work?

A wrong intensity range is the most common way Neural Cleanse is broken in practice, so every
scan measures the clean accuracy it sees and warns when it is low.

``select_preprocess(victim, data, "auto")``:

* with labels: the mode (raw / unit / symmetric / imagenet) with the best clean accuracy.
  ReLU networks are nearly scale-invariant, so a net trained on x/255 often scores as well (or a
  hair better) on raw 0..255 inputs, only wildly over-confident. Modes within
  ``_ACCURACY_TIE`` (2 points) of the best accuracy are therefore tie-broken by the mean
  negative log-likelihood of the true labels, which punishes that over-confidence (measured on
  the demo victims trained with ``unit``: raw 99.5% vs unit 98.5% accuracy on 200 images; NLL picks
  unit). Remaining ties go to the earlier mode in the order above.
* without labels: each mode is judged by the model's predictions on the clean images:
  *diversity* (entropy of the predicted-class histogram / ``log(min(K, N))``) and *confidence*
  (mean top-1 probability), both in [0, 1]. A classifier fed inputs far smaller than its
  training range barely varies its output and collapses onto one or two classes (low
  diversity); fed inputs far larger, it still separates images but with inflated confidence.
  So: modes whose diversity reaches 75% of the best are plausible; when a small-scale mode
  (unit, symmetric: x/255-ish) is plausible, the large-scale ones (raw, imagenet) are dropped;
  among the rest the highest ``diversity + confidence`` wins. A model that starts with its own
  ``Rescaling``/``Normalization`` layer gets ``raw`` whenever raw is plausible. Without labels
  the choice is a heuristic and a warning says so.

``select_preprocess(victim, data, MODE)`` with any other mode (a named one such as ``bgr``, or a
custom ``mean=...,std=...`` / ``scale=...,offset=...``; see ``tabor_tf.preprocess``) checks it
instead of choosing: a custom mode needs 1 value per key or one per image channel (``DataError``
otherwise); with labels its clean accuracy is measured, and below ``LOW_ACCURACY`` the built-in
modes are measured too and the warning names the best. ``auto`` only ever tries the four
built-in ``MODES``: custom modes need their values given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import DataError
from .preprocess import CUSTOM_HELP, MODES, NAMED_MODES, check_channels, preprocess, resolve_mode

LOW_ACCURACY = 0.5
_ACCURACY_TIE = 0.02
_PLAUSIBLE_DIVERSITY = 0.75
_SMALL_SCALE_MODES = ("unit", "symmetric")
_SELF_NORMALISING = ("Rescaling", "Normalization")


@dataclass(frozen=True)
class InputCheck:
    """The preprocessing chosen for a scan and the evidence for it."""

    mode: str
    clean_accuracy: Optional[float]  # None when the data has no labels
    accuracies_by_mode: dict = field(default_factory=dict)  # mode -> clean accuracy (labelled data)
    warnings: tuple = ()
    requested: str = "auto"
    criterion: str = "clean accuracy"
    scores_by_mode: dict = field(default_factory=dict)  # mode -> {"diversity", "confidence"} (no labels)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "requested": self.requested,
            "criterion": self.criterion,
            "clean_accuracy": self.clean_accuracy,
            "accuracies_by_mode": dict(self.accuracies_by_mode),
            "scores_by_mode": {m: dict(v) for m, v in self.scores_by_mode.items()},
            "warnings": list(self.warnings),
        }


def clean_accuracy(victim, data, mode: str) -> float:
    """Fraction of labelled clean images (raw 0..255) the victim classifies correctly after ``mode``."""
    if data.y is None:
        raise DataError("clean accuracy needs labelled data")
    pred = victim.predict_raw(data.x, resolve_mode(mode))
    return float(np.mean(pred == data.y))


def clean_nll(victim, data, mode: str, batch_size: int = 256) -> float:
    """Mean negative log-likelihood of the true labels on labelled clean images after ``mode``."""
    total = 0.0
    for start in range(0, len(data.x), batch_size):
        batch = preprocess(np.asarray(data.x[start:start + batch_size], np.float32), mode)
        p = victim.probabilities(batch).numpy().astype(np.float64)
        y = data.y[start:start + batch_size]
        total += float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).sum())
    return total / max(1, len(data.x))


def unlabelled_score(victim, x_raw: np.ndarray, mode: str, batch_size: int = 256) -> dict:
    """``{"diversity", "confidence"}`` (each in [0, 1]) of the victim's predictions on raw images
    ``x_raw`` after ``mode``: normalised entropy of the predicted-class histogram, mean top-1 probability."""
    probs = []
    for start in range(0, len(x_raw), batch_size):
        batch = preprocess(np.asarray(x_raw[start:start + batch_size], np.float32), mode)
        probs.append(victim.probabilities(batch).numpy())
    p = np.concatenate(probs).astype(np.float64)
    if not np.all(np.isfinite(p)):
        return {"diversity": 0.0, "confidence": 0.0}
    hist = np.bincount(p.argmax(axis=1), minlength=p.shape[1]) / len(p)
    nz = hist[hist > 0]
    entropy = max(0.0, float(-(nz * np.log(nz)).sum()))
    norm = np.log(max(2, min(p.shape[1], len(p))))
    return {"diversity": round(float(entropy / norm), 6), "confidence": round(float(p.max(axis=1).mean()), 6)}


def choose_unlabelled(scores: dict, self_normalising: bool = False) -> tuple[str, str]:
    """(mode, reason) from ``unlabelled_score`` results per mode (see the module doc)."""
    best_div = max(s["diversity"] for s in scores.values())
    plausible = [m for m in MODES if m in scores and scores[m]["diversity"] >= _PLAUSIBLE_DIVERSITY * best_div]
    if self_normalising and "raw" in plausible:
        return "raw", "the model normalises its own input (Rescaling/Normalization layer)"
    small = [m for m in plausible if m in _SMALL_SCALE_MODES]
    pool = small or plausible
    mode = max(pool, key=lambda m: (scores[m]["diversity"] + scores[m]["confidence"], -MODES.index(m)))
    return mode, "prediction diversity and confidence (no labels)"


def _has_internal_normalisation(victim) -> bool:
    layers = getattr(victim, "preprocessing_layers", None) or ()
    return any(getattr(l, "class_name", "") in _SELF_NORMALISING for l in layers)


def _low_accuracy_warning(mode: str, acc: float, accs: dict) -> str:
    best = max(accs, key=accs.get) if accs else mode
    hint = (f"; --preprocess {best} gives {accs[best]:.1%}" if best != mode and accs.get(best, 0) > acc
            else "; check the data's labels and intensity range (raw pixels 0..255)")
    return (f"LOW CLEAN ACCURACY: {acc:.1%} with --preprocess {mode} (below {LOW_ACCURACY:.0%}): the model"
            f" probably expects another input range or the labels do not match{hint}. Pass --preprocess"
            f" explicitly ({'/'.join(NAMED_MODES)}, or {CUSTOM_HELP}); scan results on misread inputs are"
            " meaningless")


def select_preprocess(victim, data, requested: str = "auto") -> InputCheck:
    """Choose (``auto``) or check (a named mode) the preprocessing for ``data`` on ``victim``."""
    requested_mode = resolve_mode(requested)
    if requested_mode != "auto":
        check_channels(requested_mode, data.x.shape[-1])
    warnings = []
    if data.y is not None:
        if requested_mode == "auto":
            accs = {m: clean_accuracy(victim, data, m) for m in MODES}
            best = max(accs.values())
            near = [m for m in MODES if accs[m] >= best - _ACCURACY_TIE]
            nll = {m: clean_nll(victim, data, m) for m in near} if len(near) > 1 else {}
            mode = min(near, key=lambda m: (nll.get(m, 0.0), MODES.index(m)))
        else:
            mode = requested_mode
            accs = {mode: clean_accuracy(victim, data, mode)}
            if accs[mode] < LOW_ACCURACY:
                accs.update({m: clean_accuracy(victim, data, m) for m in MODES if m != mode})
        acc = accs[mode]
        if acc < LOW_ACCURACY:
            warnings.append(_low_accuracy_warning(mode, acc, accs))
        return InputCheck(mode, acc, accs, tuple(warnings), requested, "clean accuracy")
    if requested_mode != "auto":
        return InputCheck(requested_mode, None, {}, (), requested, "given by the user (no labels to check it)")
    scores = {m: unlabelled_score(victim, data.x, m) for m in MODES}
    mode, criterion = choose_unlabelled(scores, _has_internal_normalisation(victim))
    warnings.append(
        f"no labels: --preprocess auto chose {mode} by {criterion}; this is a heuristic, pass --preprocess"
        " explicitly or give labelled data to check the clean accuracy"
    )
    return InputCheck(mode, None, {}, tuple(warnings), requested, criterion, scores)
