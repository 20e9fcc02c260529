"""Label pre-screening: which candidate targets to search first when there is no time for all.

A backdoor target tends to sit close to every class: the clean images of other classes already
give it more of their logit mass than an ordinary label gets (the observation behind K-Arm's
pre-screening, Shen et al., ICML 2021). One forward pass over the clean images ranks the labels
by that closeness; a scan that cannot search every label (a 1000-class model under
``--time-budget``, or ``--prescreen N``) searches the top of that ranking only, and its answer is
marked partial (the labels left out were never searched).

Scores, higher = more suspicious; ``logits [N,K]`` of the clean images, ``y_ref [N]`` their
reference labels (true labels or the model's predictions):

* ``zscore``: the label's logit standardised within each image (over the K logits), averaged over
  the images whose reference label is another class;
* ``topk``: the share of the other classes' images in which the label is among the ``k`` largest
  logits other than the reference label (``k = max(1, round(0.05 K))``).

Which one ranks the true targets higher on the dev half of the evaluation zoo is measured by
``benchmarks/label_prescreen.py`` (``docs/TABOR_CHOICES.md``, "Label pre-screening").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import TaborError

METHODS = ("zscore", "topk")
DEFAULT_METHOD = "zscore"


def _checked(logits, y_ref) -> tuple:
    logits = np.asarray(logits, np.float64)
    y_ref = np.asarray(y_ref).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise TaborError(f"pre-screening needs logits [N, K] with K >= 2, got shape {logits.shape}")
    if len(y_ref) != len(logits):
        raise TaborError(f"{len(y_ref)} reference labels for {len(logits)} rows of logits")
    if not np.all(np.isfinite(logits)):
        raise TaborError("the model's outputs on the clean images contain NaN or infinite values")
    return logits, y_ref


def _mean_over_other_classes(values: np.ndarray, y_ref: np.ndarray) -> np.ndarray:
    """``values [N,K]`` -> ``[K]``: each label's mean over the images whose reference label differs."""
    other = y_ref[:, None] != np.arange(values.shape[1])[None, :]
    counts = other.sum(axis=0)
    sums = np.where(other, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)


def scores(logits, y_ref, method: str = DEFAULT_METHOD) -> np.ndarray:
    """``[K]`` suspicion of every label (higher first; see the module doc)."""
    logits, y_ref = _checked(logits, y_ref)
    n, k = logits.shape
    if method == "zscore":
        std = logits.std(axis=1, keepdims=True)
        z = (logits - logits.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
        return _mean_over_other_classes(z, y_ref)
    if method == "topk":
        top = max(1, int(round(0.05 * k)))
        masked = logits.copy()
        masked[np.arange(n), np.clip(y_ref, 0, k - 1)] = -np.inf  # the reference label is not a candidate
        order = np.argsort(-masked, axis=1)[:, :top]
        hits = np.zeros_like(logits)
        np.put_along_axis(hits, order, 1.0, axis=1)
        return _mean_over_other_classes(hits, y_ref)
    raise TaborError(f"unknown pre-screening method {method!r}; choose from {', '.join(METHODS)}")


def ranking(logits, y_ref, labels: Sequence[int], method: str = DEFAULT_METHOD) -> list:
    """``labels`` ordered from most to least suspicious (ties: the smaller label first)."""
    s = scores(logits, y_ref, method)
    labels = [int(v) for v in labels]
    return sorted(labels, key=lambda lab: (-s[lab], lab))


def choose(logits, y_ref, labels: Sequence[int], keep: int, method: str = DEFAULT_METHOD) -> list:
    """The ``keep`` most suspicious of ``labels``, in ascending label order (all when ``keep`` >= their count)."""
    keep = int(keep)
    if keep < 1:
        raise TaborError(f"pre-screening must keep at least one label, got {keep}")
    return sorted(ranking(logits, y_ref, labels, method)[:keep])


def clean_logits(victim, x, mode: str, batch: int = 256) -> np.ndarray:
    """The model's logits ``[N,K]`` on the clean images ``x [N,H,W,C]`` (raw 0..255) in inference mode."""
    import tensorflow as tf

    from .preprocess import preprocess as preprocess_fn

    x = np.asarray(x, np.float32)
    fn = tf.function(lambda v: victim.logits(preprocess_fn(v, mode)),
                     input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32)])
    return np.concatenate([fn(tf.constant(x[s:s + batch])).numpy() for s in range(0, len(x), batch)])


def describe(why: str) -> str:
    """The report's words for a pre-screened label set (``ScanResult.label_selection``)."""
    return f"the logit pre-screen chose the most suspicious: {why}"
