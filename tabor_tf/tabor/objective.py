"""TABOR's loss terms (paper eq. 10-11) as pure functions of tensors, batched over labels.

Shapes: ``n`` candidate labels, ``B`` clean images. ``mask [n,H,W,1]`` in [0, 1]; ``pattern
[n,H,W,C]`` raw pixels 0..255; logits ``[n,B,K]``. Every term returns ``[n]`` (one value per
label) so that summing over labels gives each label's variables a gradient of its own loss only.

    L   = CE(f(x (1-M) + M Delta), y_t)                     ``attack_loss``
    R1  = l1 elastic(M) + l2 elastic(Delta')                ``elastic_net`` (or ``l1_norm``)
    R2  = l3 smooth(M)  + l4 smooth(Delta')                 ``smoothness``
    R3  = l5 CE(f(x (1-M)), y_true)                         ``blocking_loss``
    R4  = l6 CE(f(M Delta), y_t)                            ``overlay_loss`` (optionally hinged)
    Delta' = (1 - M) Delta                                  ``pattern_outside``

Delta's scale inside R1/R2 is a setting (``pattern_scale``): ``"unit"`` uses Delta / 255 (the
default, chosen by measurement, see docs/TABOR_CHOICES.md), ``"raw"`` the 0..255 pixels.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

PATTERN_SCALES = {"unit": 1.0 / 255.0, "raw": 1.0}


def _sum_per_label(v):
    """Sum over every axis but the first: ``[n, ...] -> [n]``."""
    return tf.reduce_sum(tf.reshape(v, [tf.shape(v)[0], -1]), axis=1)


def l1_norm(v):
    """``sum |v|`` per label: ``[n, ...] -> [n]``."""
    return _sum_per_label(tf.abs(v))


def elastic_net(v):
    """Elastic net ``||v||_1 + ||v||_2^2`` per label: ``[n, ...] -> [n]``."""
    return _sum_per_label(tf.abs(v) + tf.square(v))


def smoothness(v):
    """``sum (v[i,j]-v[i,j+1])^2 + sum (v[i,j]-v[i+1,j])^2`` per label, summed over channels.

    ``v [n,H,W,C] -> [n]`` (squared differences between horizontal and vertical neighbours).
    """
    dh = v[:, 1:, :, :] - v[:, :-1, :, :]
    dw = v[:, :, 1:, :] - v[:, :, :-1, :]
    return _sum_per_label(tf.square(dh)) + _sum_per_label(tf.square(dw))


def pattern_outside(mask, pattern, scale: str = "unit"):
    """``Delta' = (1 - M) * Delta`` in the regulariser's scale: ``[n,H,W,1], [n,H,W,C] -> [n,H,W,C]``."""
    return (1.0 - mask) * (pattern * PATTERN_SCALES[scale])


def sparse_ce(logits, labels):
    """Softmax cross-entropy ``[..., K]`` logits against int ``labels [...]`` -> ``[...]``."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def attack_loss(logits, targets):
    """Mean over the batch of ``CE(f(x_t), y_t)``: ``logits [n,B,K]``, ``targets [n]`` -> ``[n]``."""
    t = tf.broadcast_to(tf.cast(targets, tf.int32)[:, None], tf.shape(logits)[:2])
    return tf.reduce_mean(sparse_ce(logits, t), axis=1)


def blocking_loss(logits, y_true):
    """R3 before its lambda: mean ``CE(f(x (1-M)), y_true)``; ``logits [n,B,K]``, ``y_true [B]`` (the
    same images for every label) or ``[n,B]`` (each label its own) -> ``[n]``."""
    y = tf.cast(y_true, tf.int32)
    y = tf.broadcast_to(y[None, :] if y.shape.rank == 1 else y, tf.shape(logits)[:2])
    return tf.reduce_mean(sparse_ce(logits, y), axis=1)


def overlay_loss(logits, targets, hinge: float = 0.0):
    """R4 before its lambda: ``CE(f(M Delta), y_t)``; ``logits [n,K]`` (one image per label) -> ``[n]``.

    ``hinge`` in (0, 1): ``max(0, CE + log(hinge))``, zero once the trigger alone gives ``y_t`` a
    probability of at least ``hinge``, so the augmented lambda cannot keep growing the trigger
    towards a drawing of the class on a black canvas (docs/TABOR_CHOICES.md, "R4").
    """
    ce = sparse_ce(logits, targets)
    if hinge > 0:
        ce = tf.nn.relu(ce + float(np.log(hinge)))
    return ce


def shape_terms(mask, pattern, *, pattern_regularizer: str = "elastic", pattern_scale: str = "unit"):
    """The four model-free terms before their lambdas, ``[n, 4]``:
    ``elastic(M)``, ``elastic(Delta')`` (or ``|Delta'|_1``), ``smooth(M)``, ``smooth(Delta')``.
    """
    outside = pattern_outside(mask, pattern, pattern_scale)
    pattern_size = elastic_net(outside) if pattern_regularizer == "elastic" else l1_norm(outside)
    return tf.stack([elastic_net(mask), pattern_size, smoothness(mask), smoothness(outside)], axis=1)


def attack_hits(logits, targets):
    """Fraction of the batch classified as the target: ``logits [n,B,K]``, ``targets [n]`` -> ``[n]``."""
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(pred, tf.cast(targets, tf.int32)[:, None]), tf.float32), axis=1)


def total_loss(attack, terms, lambdas):
    """Per-label objective ``L + sum_i lambda_i term_i``: ``[n]``, ``[n,6]``, ``[n,6]`` -> ``[n]``."""
    return attack + tf.reduce_sum(lambdas * terms, axis=1)
