"""TABOR's loss terms (eq. 10-11) on hand-computed values, and their per-label independence."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tabor_tf.errors import TaborError
from tabor_tf.tabor import objective as obj
from tabor_tf.tabor import preset


def t(v):
    return tf.constant(np.asarray(v, np.float32))


def test_elastic_net_and_l1_by_hand():
    v = t([[[0.5, -1.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]])  # two labels, 2x2
    # label 0: |.|_1 = 3.5, |.|_2^2 = 0.25 + 1 + 0 + 4 = 5.25 ; label 1: 4 + 4
    np.testing.assert_allclose(obj.elastic_net(v).numpy(), [8.75, 8.0], rtol=1e-6)
    np.testing.assert_allclose(obj.l1_norm(v).numpy(), [3.5, 4.0], rtol=1e-6)


def test_smoothness_by_hand_on_3x3():
    v = np.zeros((1, 3, 3, 1), np.float32)
    v[0, 0, 1, 0], v[0, 2, 2, 0] = 1.0, 2.0
    # along W: row 0 (0,1,0): 1 + 1; row 2 (0,0,2): 4 -> 6 ; along H: col 1 (1,0,0): 1; col 2 (0,0,2): 4 -> 5
    assert float(obj.smoothness(t(v))[0]) == pytest.approx(11.0)
    # channels add up, a constant image is perfectly smooth
    two = np.concatenate([v, 2 * v], axis=-1)
    assert float(obj.smoothness(t(two))[0]) == pytest.approx(11.0 * 5)
    assert float(obj.smoothness(t(np.full((1, 3, 3, 3), 7.0)))[0]) == 0.0


def test_pattern_outside_scale():
    mask = t(np.full((1, 2, 2, 1), 0.25))
    pattern = t(np.full((1, 2, 2, 3), 255.0))
    np.testing.assert_allclose(obj.pattern_outside(mask, pattern, "unit").numpy(), 0.75, rtol=1e-6)
    np.testing.assert_allclose(obj.pattern_outside(mask, pattern, "raw").numpy(), 191.25, rtol=1e-6)


def test_shape_terms_by_hand():
    mask = np.full((2, 2, 2, 1), 0.5, np.float32)
    mask[1, 0, 0, 0] = 1.0  # label 1: one pixel fully in the trigger
    pattern = np.full((2, 2, 2, 3), 255.0, np.float32)
    terms = obj.shape_terms(t(mask), t(pattern)).numpy()
    # label 0: elastic(M) = 4 * (0.5 + 0.25) = 3; Delta' = 0.5 on 12 values: 12 * 0.75 = 9; both smooth
    np.testing.assert_allclose(terms[0], [3.0, 9.0, 0.0, 0.0], rtol=1e-6)
    # label 1: elastic(M) = 3 * 0.75 + 2 = 4.25; Delta' = 0 at (0,0), 0.5 elsewhere: 9 * 0.75 = 6.75
    # smooth(M): (0,0) differs by 0.5 from its 2 neighbours -> 2 * 0.25; Delta' the same on 3 channels
    np.testing.assert_allclose(terms[1], [4.25, 6.75, 0.5, 1.5], rtol=1e-6)
    l1 = obj.shape_terms(t(mask), t(pattern), pattern_regularizer="l1").numpy()
    np.testing.assert_allclose(l1[:, 1], [6.0, 4.5], rtol=1e-6)


def test_cross_entropy_terms_by_hand():
    logits = t([[[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])  # one label, batch of 2, 3 classes
    p = tf.nn.softmax(logits).numpy()[0]
    ce_att = obj.attack_loss(logits, t([0]).numpy().astype(np.int32)).numpy()
    assert ce_att[0] == pytest.approx(-(math.log(p[0, 0]) + math.log(p[1, 0])) / 2, rel=1e-5)
    ce_block = obj.blocking_loss(logits, np.array([0, 2], np.int32)).numpy()
    assert ce_block[0] == pytest.approx(-(math.log(p[0, 0]) + math.log(p[1, 2])) / 2, rel=1e-5)
    alone = obj.overlay_loss(t([[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]]), np.array([2, 1], np.int32)).numpy()
    np.testing.assert_allclose(alone, [math.log(3.0), -math.log(math.exp(3) / (2 + math.exp(3)))], rtol=1e-5)
    hits = obj.attack_hits(logits, np.array([2], np.int32)).numpy()
    assert hits[0] == pytest.approx(0.5)


def test_hinged_overlay_stops_pushing_once_the_trigger_alone_reaches_the_target():
    """R4 with a hinge of 0.5: a trigger alone at p(y_t) = 1/3 still pays CE - log 2; at
    p(y_t) = 0.91 it pays nothing and gets no gradient (nothing left to draw)."""
    logits = tf.Variable([[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]])
    targets = np.array([2, 1], np.int32)
    with tf.GradientTape() as tape:
        hinged = obj.overlay_loss(logits, targets, 0.5)
        total = tf.reduce_sum(hinged)
    grad = tape.gradient(total, logits).numpy()
    np.testing.assert_allclose(hinged.numpy(), [math.log(3.0) - math.log(2.0), 0.0], atol=1e-6)
    assert np.abs(grad[0]).sum() > 0.1 and np.abs(grad[1]).sum() == 0.0
    np.testing.assert_allclose(obj.overlay_loss(logits, targets, 0.0).numpy(),
                               obj.overlay_loss(logits, targets).numpy())
    with pytest.raises(TaborError, match="overlay_hinge"):
        preset("gtsrb", overlay_hinge=1.0)


def test_total_loss_weights_terms_and_labels_stay_independent():
    terms = t([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    lambdas = t([[1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6], [1.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    out = obj.total_loss(t([0.5, 0.25]), terms, lambdas).numpy()
    np.testing.assert_allclose(out, [0.5 + 0.1 + 0.02 + 0.003 + 0.0004 + 0.00005 + 0.000006, 3.25], rtol=1e-6)
    # the gradient of the summed per-label losses w.r.t. label 0's mask ignores label 1
    rng = np.random.default_rng(0)
    mask = tf.Variable(rng.uniform(0, 1, (2, 3, 3, 1)).astype(np.float32))
    pattern = t(rng.uniform(0, 255, (2, 3, 3, 3)))

    def grad_of_label0(scale_label1):
        with tf.GradientTape() as tape:
            m = mask * tf.constant([[[[1.0]]], [[[scale_label1]]]])
            total = tf.reduce_sum(obj.total_loss(tf.zeros([2]), obj_terms(m, pattern), lambdas))
        return tape.gradient(total, mask).numpy()[0]

    def obj_terms(m, p):
        four = obj.shape_terms(m, p)
        return tf.concat([four, tf.zeros([2, 2])], axis=1)

    np.testing.assert_allclose(grad_of_label0(1.0), grad_of_label0(0.3), rtol=1e-6)


def test_r4_is_dropped_only_where_black_is_the_background():
    """``for_clean_data`` with ``overlay_on_black_background="drop"``: R4 (l6) is switched off, with a
    note, when at least half of the raw clean pixels are black (MNIST-like data); GTSRB-like data,
    the default ``keep`` and ``l6=0`` are left alone."""
    from tabor_tf.tabor.presets import BLACK_PIXEL, black_pixel_fraction, for_clean_data

    rng = np.random.default_rng(0)
    digits = np.zeros((20, 28, 28, 1), np.float32)
    digits[:, 8:20, 10:18] = rng.uniform(100, 255, (20, 12, 8, 1))  # strokes on black: 88% black
    signs = rng.uniform(20, 255, (20, 32, 32, 3)).astype(np.float32)  # no black pixel
    assert black_pixel_fraction(digits) == pytest.approx(1 - 96 / 784)
    assert black_pixel_fraction(signs) == 0.0
    assert black_pixel_fraction(np.full((2, 4, 4, 1), BLACK_PIXEL, np.float32)) == 1.0

    assert for_clean_data(preset("gtsrb"), digits) == (preset("gtsrb"), None)  # the default keeps R4
    cfg = preset("gtsrb", overlay_on_black_background="drop")
    dropped, note = for_clean_data(cfg, digits)
    assert dropped.l6 == 0.0 and cfg.l6 == 1e-2 and "R4" in note and "88%" in note
    assert dropped.lambdas[:5] == cfg.lambdas[:5]  # nothing else changes
    kept, none = for_clean_data(cfg, signs)
    assert kept == cfg and none is None
    assert for_clean_data(preset("gtsrb", l6=0.0, overlay_on_black_background="drop"), digits)[1] is None  # already off
    half = np.concatenate([digits[:10], np.full((10, 28, 28, 1), 200.0, np.float32)])  # 44% black
    assert for_clean_data(cfg, half)[1] is None
    with pytest.raises(TaborError, match="overlay_on_black_background"):
        preset("gtsrb", overlay_on_black_background="maybe")
