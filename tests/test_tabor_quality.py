"""The quality metric A (eq. 8) on constructed triggers, and the explanation test's pieces."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tabor_tf.errors import TaborError
from tabor_tf.tabor import explain, preset, quality

D = 32


def square(size, row, col, d=D):
    m = np.zeros((d, d), np.float32)
    m[row:row + size, col:col + size] = 1.0
    return m


def test_footprint_is_relative_to_the_peak():
    m = np.array([[0.9, 0.5], [0.44, 0.0]])
    assert quality.footprint(m, 0.5).tolist() == [[True, True], [False, False]]
    assert quality.footprint(m * 0.1, 0.5).tolist() == [[True, True], [False, False]]
    assert not quality.footprint(np.zeros((2, 2))).any()


def test_parts_by_hand_for_a_corner_square():
    f = square(4, D - 5, D - 5)
    assert quality.smooth_count(f, pad=True) == 16.0  # the outline of a 4x4 square
    assert quality.smooth_count(square(4, 0, 0), pad=False) == 8.0  # two of its sides on the border
    assert quality.smooth_count(square(4, 0, 0), pad=True) == 16.0
    parts = quality.quality_parts(f * 0.9, acc_att=1.0, acc_crop=0.5, acc_exp=0.25, num_images=100)
    assert parts["sparsity"] == pytest.approx(math.log(16 / D**2))
    assert parts["smoothness"] == pytest.approx(math.log(16 / (D * (D - 1))))
    assert parts["attack"] == pytest.approx(0.0)
    assert parts["crop"] == pytest.approx(math.log(2))
    assert parts["explanation"] == pytest.approx(math.log(4))
    total = sum(parts[k] for k in quality.PART_NAMES)
    assert parts["A"] == pytest.approx(total) and parts["footprint_pixels"] == 16


def test_floors_guard_log_zero():
    assert quality.accuracy_part(0.0, 200) == pytest.approx(-math.log(0.5 / 200))
    assert quality.sparsity_part(np.zeros((4, 4), bool)) == pytest.approx(math.log(0.5 / 16))
    assert math.isfinite(quality.smoothness_part(np.zeros((4, 4), bool)))
    assert quality.neighbour_pairs(32, 32) == 32 * 31 and quality.neighbour_pairs(2, 3) == 3.5


def test_accuracy_floor_caps_each_accuracy_part():
    assert quality.accuracy_part(0.0, 256, floor=0.1) == pytest.approx(math.log(10))
    assert quality.accuracy_part(0.02, 256, floor=0.1) == pytest.approx(math.log(10))
    assert quality.accuracy_part(0.5, 256, floor=0.1) == pytest.approx(math.log(2))  # above the floor: unchanged
    m = square(4, D - 5, D - 5)
    failing = quality.quality_parts(m, acc_att=0.95, acc_crop=0.9, acc_exp=0.0, num_images=256, accuracy_floor=0.1)
    assert failing["explanation"] == pytest.approx(math.log(10))
    # still worse than a trigger that passes, but no longer by log(512) = 6.2
    passing = quality.quality_parts(m, acc_att=0.95, acc_crop=0.9, acc_exp=0.95, num_images=256, accuracy_floor=0.1)
    assert 2.0 < failing["A"] - passing["A"] < 2.31


def test_compact_corner_square_beats_scattered_large_and_full_triggers():
    accs = dict(acc_att=1.0, acc_crop=0.95, acc_exp=0.9, num_images=256)
    compact = quality.quality_parts(square(4, D - 5, D - 5), **accs)["A"]
    rng = np.random.default_rng(0)
    scattered = np.zeros(D * D, np.float32)
    scattered[rng.choice(D * D, 16, replace=False)] = 1.0  # same area, spread out
    scattered = quality.quality_parts(scattered.reshape(D, D), **accs)["A"]
    large = quality.quality_parts(square(12, D - 13, D - 13), **accs)["A"]
    full = quality.quality_parts(np.ones((D, D)), **accs)["A"]
    assert compact < scattered and compact < large and compact < full
    assert full > large  # the whole image is not a "smooth" trigger
    # a trigger that blocks the true class or is not what the model looks at scores worse
    blocking = quality.quality_parts(square(4, D - 5, D - 5), acc_att=1.0, acc_crop=0.2, acc_exp=0.9,
                                     num_images=256)["A"]
    unexplained = quality.quality_parts(square(4, D - 5, D - 5), acc_att=1.0, acc_crop=0.95, acc_exp=0.05,
                                        num_images=256)["A"]
    assert compact < blocking and compact < unexplained


def test_top_fraction_and_majority_vote_by_hand():
    sal = np.array([[[0.0, 5.0], [1.0, 3.0]], [[2.0, 2.0], [0.0, 9.0]], [[0.0, 0.0], [0.0, 4.0]]], np.float32)
    keep = explain.top_fraction(tf.constant(sal), 0.5).numpy()  # 2 of 4 pixels each, never zero saliency
    assert keep.tolist() == [[[False, True], [False, True]], [[True, True], [False, True]],
                             [[False, False], [False, True]]]  # ties at the cut both kept
    votes = keep.sum(axis=0)
    assert explain.majority_vote(votes, 3).numpy().tolist() == [[False, True], [False, True]]
    assert explain.majority_vote(np.array([[1.0, 2.0]]), 2).numpy().tolist() == [[False, True]]  # > half


class Linear:
    """``logits = flatten(x) @ w``: saliency is exactly ``sum_c |w[..., c, t] * x[..., c]|``."""

    def __init__(self, w):
        self.w = tf.constant(w.reshape(-1, w.shape[-1]), tf.float32)

    def logits(self, x):
        return tf.reshape(x, [tf.shape(x)[0], -1]) @ self.w


def test_saliency_is_gradient_times_input():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    x = rng.uniform(0, 255, (2, 5, 3, 3, 2)).astype(np.float32)  # 2 labels x 5 images
    sal, logits = explain.saliency(Linear(w).logits, tf.constant(x), tf.constant([1, 3]), "unit")
    expected = np.stack([np.abs(w[None, ..., t] * x[i] / 255.0).sum(-1) for i, t in enumerate([1, 3])])
    np.testing.assert_allclose(sal.numpy(), expected, rtol=1e-4)
    assert logits.shape == (2, 5, 4)


def test_saliency_with_a_reference_is_gradient_times_difference():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    x = rng.uniform(0, 255, (2, 5, 3, 3, 2)).astype(np.float32)
    ref = rng.uniform(0, 255, (1, 5, 3, 3, 2)).astype(np.float32)  # one clean image per triggered one
    sal, _ = explain.saliency(Linear(w).logits, tf.constant(x), tf.constant([0, 2]), "unit", reference=tf.constant(ref))
    expected = np.stack([np.abs(w[None, ..., t] * (x[i] - ref[0]) / 255.0).sum(-1) for i, t in enumerate([0, 2])])
    np.testing.assert_allclose(sal.numpy(), expected, rtol=1e-4, atol=1e-6)
    same, _ = explain.saliency(Linear(w).logits, tf.constant(ref), tf.constant([1]), "unit", reference=tf.constant(ref))
    assert not same.numpy().any()  # no change from the reference: nothing to explain


def test_black_reference_passes_an_empty_explanation_the_clean_one_does_not():
    """Why the reference is the clean image: R4 trains every trigger to win on a black image.

    Label 0 is what this model says for dark images (a constant logit, no pixel matters for it),
    label 1 for bright ones. A dark "trigger" over the whole image sends every image to 0, but no
    pixel explains label 0, so the vote keeps nothing. With the black reference the restricted
    image is all black and still goes to 0 (acc_exp 1, the test passes vacuously); with the clean
    reference it is the clean image (acc_exp 0).
    """
    h, c = 4, 3
    w = np.zeros((h, h, c, 2), np.float32)
    w[..., 1] = 1.0 / (h * h * c * 255.0)
    victim = Linear(w)
    bias = tf.constant([0.5, 0.0])
    victim_logits = lambda x: victim.logits(x) + bias  # noqa: E731
    x = np.random.default_rng(4).uniform(200, 255, (20, h, h, c)).astype(np.float32)
    y = np.argmax(victim_logits(x).numpy(), axis=-1)
    assert (y == 1).all()
    masks, patterns = np.full((1, h, h), 0.9, np.float32), np.zeros((1, h, h, c), np.float32)
    black = explain.TriggerEvaluator(victim_logits, "raw", fraction=0.25, reference="black")
    clean = explain.TriggerEvaluator(victim_logits, "raw", fraction=0.25)
    for ev in (black, clean):
        acc = ev.evaluate(x, y, masks, patterns, [0])
        assert acc["acc_att"][0] == 1.0 and not acc["vote"][0].any()
    assert black.evaluate(x, y, masks, patterns, [0])["acc_exp"][0] == 1.0
    assert clean.evaluate(x, y, masks, patterns, [0])["acc_exp"][0] == 0.0
    with pytest.raises(ValueError, match="reference"):
        explain.TriggerEvaluator(victim_logits, "raw", fraction=0.25, reference="grey")
    assert preset("gtsrb").explain_reference == preset("fast").explain_reference == "clean"
    with pytest.raises(TaborError, match="explain_reference"):
        preset("fast", explain_reference="grey")


def test_explanation_test_separates_a_patch_trigger_from_a_spread_one():
    """Label 0 wins when the bottom-right 2x2 patch is bright; evaluated on two restored triggers."""
    h, c, k = 6, 3, 3
    w = np.zeros((h, h, c, k), np.float32)
    w[4:, 4:, :, 0] = 0.02
    w[..., 1] = 0.0005
    w[..., 2] = 0.0005 * np.random.default_rng(1).uniform(0.5, 1.5, (h, h, c))
    victim = Linear(w)
    bias = tf.constant([-0.02 * 12 * 200, 0.0, 0.0])
    victim_logits = lambda x: victim.logits(x) + bias  # noqa: E731
    x = np.random.default_rng(2).uniform(0, 255, (40, h, h, c)).astype(np.float32)
    y = np.argmax(victim_logits(x).numpy(), axis=-1)
    patch = square(2, 4, 4, d=h)
    spread = np.full((h, h), 0.35, np.float32)
    masks = np.stack([patch, spread])
    patterns = np.full((2, h, h, c), 255.0, np.float32)
    ev = explain.TriggerEvaluator(victim_logits, "raw", fraction=0.12)
    acc = ev.evaluate(x, y, masks, patterns, [0, 0], max_images=50)  # chunked: 1 label per pass
    assert acc["acc_att"][0] == 1.0
    assert acc["vote"][0][4:, 4:].all() and acc["vote"][0].sum() == 4  # the vote finds the patch
    assert acc["acc_exp"][0] == 1.0  # the patch alone is still classified as 0
    assert acc["acc_crop"][0] == pytest.approx(np.mean(y == y))  # cropping the patch keeps every clean class
    assert acc["acc_exp"][1] < 0.5  # 0.35 everywhere: the voted pixels alone do not reach label 0
