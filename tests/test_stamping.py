"""Raw-domain stamping (``tabor_tf.stamping``), tanh maps and super-pixels (``tabor_tf.trigger_vars``)."""

import numpy as np
import pytest
import tensorflow as tf

from tabor_tf import trigger_vars as tv
from tabor_tf.preprocess import MODES, preprocess, reverse_preprocess
from tabor_tf.stamping import crop_trigger, stamp, stamp_all, trigger_only


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 6, 5, 3)).astype(np.float32)
    mask = rng.uniform(0, 1, size=(6, 5, 1)).astype(np.float32)
    pattern = rng.uniform(0, 255, size=(6, 5, 3)).astype(np.float32)
    return x, mask, pattern


def test_stamp_formula_by_hand():
    x = np.full((1, 2, 2, 3), 100.0, np.float32)
    mask = np.array([[[0.0], [1.0]], [[0.25], [0.5]]], np.float32)
    pattern = np.full((2, 2, 3), 200.0, np.float32)
    out = np.asarray(stamp(x, mask, pattern))
    assert out.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(out[0, :, :, 0], [[100.0, 200.0], [125.0, 150.0]])
    np.testing.assert_allclose(np.asarray(crop_trigger(x, mask))[0, :, :, 1], [[100.0, 0.0], [75.0, 50.0]])
    np.testing.assert_allclose(np.asarray(trigger_only(mask, pattern))[:, :, 2], [[0.0, 200.0], [50.0, 100.0]])


def test_stamp_all_matches_stamp_per_label(batch):
    x, mask, pattern = batch
    masks = np.stack([mask, 1 - mask])
    patterns = np.stack([pattern, 255 - pattern])
    out = np.asarray(stamp_all(x, masks, patterns))
    assert out.shape == (2,) + x.shape
    for k in range(2):
        np.testing.assert_allclose(out[k], np.asarray(stamp(x, masks[k], patterns[k])), rtol=1e-6, atol=1e-4)


def test_stamped_images_stay_in_raw_range(batch):
    x, mask, pattern = batch
    out = np.asarray(stamp(x, mask, pattern))
    assert out.min() >= 0.0 and out.max() <= 255.0


@pytest.mark.parametrize("mode", MODES + ("mnist", "inception"))
def test_reference_order_equals_stamp_then_preprocess(batch, mode):
    """NC feeds preprocessed inputs, reverse-preprocesses, stamps raw, preprocesses again;
    our data is raw, so we stamp and preprocess. Both paths must agree for every mode."""
    x, mask, pattern = batch
    x_model = preprocess(tf.constant(x), mode)
    reference = preprocess(stamp(reverse_preprocess(x_model, mode), mask, pattern), mode)
    direct = preprocess(stamp(tf.constant(x), mask, pattern), mode)
    np.testing.assert_allclose(np.asarray(reference), np.asarray(direct), rtol=1e-5, atol=1e-3)
    # and the round trip itself, for numpy and TF inputs
    np.testing.assert_allclose(reverse_preprocess(preprocess(x, mode), mode), x, atol=1e-3)
    np.testing.assert_allclose(np.asarray(reverse_preprocess(x_model, mode)), x, atol=1e-3)


def test_imagenet_mode_flips_to_bgr_and_subtracts_caffe_means():
    x = np.zeros((1, 1, 1, 3), np.float32)
    x[..., 0], x[..., 2] = 200.0, 10.0  # R, B
    out = preprocess(x, "imagenet")[0, 0, 0]
    np.testing.assert_allclose(out, [10.0 - 103.939, 0.0 - 116.779, 200.0 - 123.68], rtol=1e-6)


def test_tanh_maps_round_trip_and_ranges():
    rng = np.random.default_rng(1)
    mask = rng.uniform(0.001, 0.999, size=(7, 7, 1))
    pattern = rng.uniform(0.5, 254.5, size=(7, 7, 3))
    np.testing.assert_allclose(tv.mask_from_tanh(tv.mask_to_tanh(mask)).numpy(), mask, atol=1e-5)
    np.testing.assert_allclose(tv.pattern_from_tanh(tv.pattern_to_tanh(pattern)).numpy(), pattern, atol=2e-3)
    # the maps keep any unbounded value in [0, 1] / [0, 255], also at the extremes, up to float32
    # rounding (2 - 1e-7 is 1.99999988 in float32, so tanh = -1 gives -6e-8, as in the reference)
    big = tf.constant([-1e6, -20.0, 0.0, 20.0, 1e6])
    m = tv.mask_from_tanh(big).numpy()
    p = tv.pattern_from_tanh(big).numpy()
    assert m.min() >= -1e-7 and m.max() <= 1.0 + 1e-7 and m[2] == pytest.approx(0.5)
    assert p.min() >= -1e-4 and p.max() <= 255.0 + 1e-4 and p[2] == pytest.approx(127.5)
    assert np.all(np.diff(m) >= 0)  # monotone
    # NC's eps: tanh = +-1 maps to 0.5 +- 1 / (2 - 1e-7), just outside [0, 1] before float32 rounding
    # 0 and 1 map to -/+ arctanh(1 - eps / 2) = 0.5 * ln((2 - eps / 2) / (eps / 2)), finite
    edge = 0.5 * np.log((2 - 0.5e-7) / 0.5e-7)
    assert tv.mask_to_tanh(np.array([0.0, 1.0])).tolist() == pytest.approx([-edge, edge], rel=1e-5)
    assert np.all(np.isfinite(tv.mask_to_tanh(np.array([0.0, 1.0]))))


def test_random_init_shapes_and_ranges():
    rng = np.random.default_rng(3)
    m_t, p_t = tv.random_init(rng, (4, 5, 1), (8, 10, 3))
    assert m_t.shape == (4, 5, 1) and p_t.shape == (8, 10, 3)
    m = tv.mask_from_tanh(m_t).numpy()
    p = tv.pattern_from_tanh(p_t).numpy()
    assert 0 <= m.min() and m.max() <= 1 and 0 <= p.min() and p.max() <= 255
    assert m.std() > 0.2 and p.std() > 50  # uniform, not constant


@pytest.mark.parametrize("h,w,u,grid", [(32, 32, 1, (32, 32, 1)), (32, 32, 3, (11, 11, 1)), (5, 7, 2, (3, 4, 1))])
def test_super_pixel_grid_and_upsampling(h, w, u, grid):
    assert tv.mask_grid_shape(h, w, u) == grid
    coarse = np.arange(grid[0] * grid[1], dtype=np.float32).reshape(grid)
    up = np.asarray(tv.upsample_mask(tf.constant(coarse), u, h, w))
    assert up.shape == (h, w, 1)
    for i in range(h):
        for j in range(w):
            assert up[i, j, 0] == coarse[i // u, j // u, 0]  # nearest, cropped at the bottom/right
    batched = np.asarray(tv.upsample_mask(tf.constant(np.stack([coarse, coarse])), u, h, w))
    assert batched.shape == (2, h, w, 1)
