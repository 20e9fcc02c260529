"""The explanation test of TABOR (section 4.2.3): ``acc_exp``, plus ``acc_att`` / ``acc_crop``.

For a restored trigger of label ``t``, stamp it on clean images ``x``: ``x_t = x (1-M) + M Delta``.
Explain each triggered image with an attribution of the target logit; keep each image's top ``q``
fraction of pixels; majority vote over the images (a pixel is important when more than half of
them keep it); then show the model the explanation alone and count how often it says ``t``.

"Alone" needs a reference for everything that is not the explanation. ``reference="clean"`` (the
default): the reference is the clean image itself. The attribution is *gradient x difference*,
``s[i,j] = sum_c |d logit_t / d x_t[i,j,c] * (x_t - x)[i,j,c]|`` (the first-order share of each
pixel in the logit change from ``x`` to ``x_t``), and the restricted image keeps the trigger only
on the voted pixels ``V``: ``x (1 - V M) + V M Delta``. ``reference="black"`` (the first
implementation): *gradient x input* (a black baseline) and the triggered image with every
pixel outside ``V`` set to raw 0. The black reference is exactly R4's input (``M Delta`` on
black), which the objective already trains every label's trigger to send to ``t``: measured on
the demo clean model, acc_exp was 0 or 1 per label with no middle and 18 labels were flagged
(docs/TABOR_CHOICES.md). With the clean reference a real trigger, which is what the model looks
at in every triggered image, survives the vote and still attacks through its voted pixels; a
spread-out "trigger" whose effect needs all of its pixels does not.

Everything is batched over labels: ``masks [n,H,W,1]``, ``patterns [n,H,W,C]`` raw, ``targets
[n]``, clean images ``x [E,H,W,C]`` raw with reference labels ``y [E]``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from tabor_tf.preprocess import preprocess as preprocess_fn
from tabor_tf.stamping import crop_trigger, stamp_all


REFERENCES = ("clean", "black")


def saliency(logits_fn: Callable, x_raw, targets, mode: str, reference=None):
    """Attribution of the target logit: ``x_raw [n,B,H,W,C]``, ``targets [n]`` -> (``[n,B,H,W]``, logits).

    ``reference`` ``None``: gradient x input, ``sum_c |g * x|`` (raw domain, a black baseline);
    else gradient x difference, ``sum_c |g * (x - reference)|`` with ``reference`` broadcastable
    to ``x_raw`` (raw domain).
    """
    shape = tf.shape(x_raw)
    flat = tf.reshape(x_raw, tf.concat([[-1], shape[2:]], axis=0))
    with tf.GradientTape() as tape:
        tape.watch(flat)
        logits = tf.cast(logits_fn(preprocess_fn(flat, mode)), tf.float32)
        t = tf.repeat(tf.cast(targets, tf.int32), shape[1])
        chosen = tf.reduce_sum(tf.gather(logits, t, batch_dims=1))
    grad = tape.gradient(chosen, flat)
    delta = flat if reference is None else tf.reshape(x_raw - reference, tf.shape(flat))
    sal = tf.reduce_sum(tf.abs(grad * delta), axis=-1)
    return tf.reshape(sal, shape[:4]), tf.reshape(logits, tf.concat([shape[:2], [-1]], axis=0))


def top_fraction(sal, fraction: float):
    """Per image, the ``ceil(fraction * H * W)`` most salient pixels: ``[..., H, W]`` -> bool.

    Ties at the cut may add pixels; pixels with zero saliency are never kept.
    """
    shape = tf.shape(sal)
    flat = tf.reshape(sal, [-1, shape[-2] * shape[-1]])
    k = tf.maximum(1, tf.cast(tf.math.ceil(fraction * tf.cast(tf.shape(flat)[1], tf.float32)), tf.int32))
    kth = tf.math.top_k(flat, k=k, sorted=True).values[:, -1:]
    keep = tf.logical_and(flat >= kth, flat > 0)
    return tf.reshape(keep, shape)


def majority_vote(important, count):
    """Pixels important in more than half of ``count`` images, from summed votes ``[n,H,W]`` -> bool."""
    return tf.cast(important, tf.float32) * 2.0 > tf.cast(count, tf.float32)


def _hits(logits, targets):
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(pred, tf.cast(targets, tf.int32)[:, None]), tf.float32), axis=1)


class TriggerEvaluator:
    """Compiled passes over clean images for acc_att, acc_crop and acc_exp of many labels."""

    def __init__(self, logits_fn: Callable, mode: str, fraction: float, reference: str = "clean"):
        if reference not in REFERENCES:
            raise ValueError(f"explanation reference must be one of {REFERENCES}, got {reference!r}")
        self.logits_fn, self.mode, self.fraction, self.reference = logits_fn, mode, float(fraction), reference
        img = tf.TensorSpec([None, None, None, None], tf.float32)
        lab = tf.TensorSpec([None], tf.int32)
        self.first_pass = tf.function(self._first_pass, input_signature=[img, img, img, lab, lab])
        vote = tf.TensorSpec([None, None, None], tf.float32)
        self.second_pass = tf.function(self._second_pass, input_signature=[img, img, img, vote, lab])

    def _first_pass(self, x, masks, patterns, targets, y):
        """-> (attack hits [n], crop correct [n], votes [n,H,W]) on the chunk ``x [E,...]``."""
        stamped = stamp_all(x, masks, patterns)
        ref = x[None] if self.reference == "clean" else None
        sal, logits = saliency(self.logits_fn, stamped, targets, self.mode, reference=ref)
        att = _hits(logits, targets)
        n, e = tf.shape(stamped)[0], tf.shape(stamped)[1]
        cropped = tf.reshape(crop_trigger(x[None], masks[:, None]), tf.concat([[-1], tf.shape(x)[1:]], 0))
        l_crop = tf.cast(self.logits_fn(preprocess_fn(cropped, self.mode)), tf.float32)
        pred = tf.reshape(tf.argmax(l_crop, axis=-1, output_type=tf.int32), [n, e])
        crop = tf.reduce_sum(tf.cast(tf.equal(pred, tf.cast(y, tf.int32)[None]), tf.float32), axis=1)
        votes = tf.reduce_sum(tf.cast(top_fraction(sal, self.fraction), tf.float32), axis=1)
        return att, crop, votes

    def _second_pass(self, x, masks, patterns, voted, targets):
        """Hits of the triggered images restricted to the voted pixels ``voted [n,H,W]`` (0/1)."""
        if self.reference == "clean":
            restricted = stamp_all(x, masks * voted[..., None], patterns)
        else:
            restricted = stamp_all(x, masks, patterns) * voted[:, None, :, :, None]
        flat = tf.reshape(restricted, tf.concat([[-1], tf.shape(x)[1:]], 0))
        logits = tf.cast(self.logits_fn(preprocess_fn(flat, self.mode)), tf.float32)
        return _hits(tf.reshape(logits, [tf.shape(masks)[0], tf.shape(x)[0], -1]), targets)

    def evaluate(self, x, y, masks, patterns, targets, max_images: int = 4096) -> dict:
        """All three accuracies for ``n`` labels on ``E`` images, in chunks of at most ``max_images``
        images per pass. ``masks [n,H,W]`` or ``[n,H,W,1]``. -> dict of numpy arrays
        ``acc_att``, ``acc_crop``, ``acc_exp`` ``[n]`` and ``vote [n,H,W]`` bool.
        """
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int32)
        masks = np.asarray(masks, np.float32)
        if masks.ndim == 3:
            masks = masks[..., None]
        patterns = np.asarray(patterns, np.float32)
        targets = np.asarray(targets, np.int32)
        n, e = len(masks), len(x)
        per_chunk = max(1, min(e, int(max_images)))
        labels_per_chunk = max(1, int(max_images) // per_chunk)
        att, crop, exp = np.zeros(n), np.zeros(n), np.zeros(n)
        votes = np.zeros((n,) + masks.shape[1:3])
        for a in range(0, n, labels_per_chunk):
            sl = slice(a, a + labels_per_chunk)
            m, p, t = tf.constant(masks[sl]), tf.constant(patterns[sl]), tf.constant(targets[sl])
            for s in range(0, e, per_chunk):
                h_att, h_crop, v = self.first_pass(tf.constant(x[s:s + per_chunk]), m, p, t,
                                                   tf.constant(y[s:s + per_chunk]))
                att[sl] += h_att.numpy()
                crop[sl] += h_crop.numpy()
                votes[sl] += v.numpy()
            voted = majority_vote(votes[sl], e)
            vt = tf.cast(voted, tf.float32)
            for s in range(0, e, per_chunk):
                exp[sl] += self.second_pass(tf.constant(x[s:s + per_chunk]), m, p, vt, t).numpy()
        vote = votes * 2.0 > e
        return {"acc_att": att / e, "acc_crop": crop / e, "acc_exp": exp / e, "vote": vote}
