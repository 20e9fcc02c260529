"""Preprocessing modes beyond the four built-ins: bgr / bgr-unit, per-channel mean/std and
scale/offset. Parsing, canonical strings, exact inverses, errors, and the clean-accuracy check."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tabor_tf.data import CleanData  # noqa: E402
from tabor_tf.errors import DataError, TaborError  # noqa: E402
from tabor_tf.preprocess import (  # noqa: E402
    MODES, check_channels, parse_custom, preprocess, resolve_mode, reverse_preprocess)

TORCH = "mean=0.485,0.456,0.406,std=0.229,0.224,0.225"
TORCH_CANONICAL = "mean=0.485,0.456,0.406;std=0.229,0.224,0.225"
TORCH_PIXELS = "mean=123.675,116.28,103.53;std=58.395,57.12,57.375"  # the same in 0..255 units
CUSTOM = (TORCH, TORCH_PIXELS, "scale=0.0078431,offset=-1", "scale=2,-1,0.5;offset=3", "mean=0.5",
          "std=0.25,0.5,1", "order=bgr,mean=0.4,0.5,0.6,std=0.2", "scale=0.01;offset=-1,0,1;order=bgr")


def _raw(channels=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(2, 4, 5, channels)).astype(np.float32)


def test_parse_to_canonical_strings_that_resolve_to_themselves():
    assert resolve_mode(TORCH) == TORCH_CANONICAL
    assert resolve_mode(" Mean=[0.485, 0.456, 0.406]; STD=[0.229, 0.224, 0.225] ") == TORCH_CANONICAL
    assert resolve_mode("scale=0.0078431,offset=-1.0") == "scale=0.0078431;offset=-1"
    assert resolve_mode("mean=0.5") == "mean=0.5;std=1"
    assert resolve_mode("offset=-1") == "scale=1;offset=-1"
    assert resolve_mode("mean=1,2,3,order=bgr") == "mean=1,2,3;std=1;order=bgr"
    assert resolve_mode("order=rgb,scale=2") == "scale=2;offset=0"
    assert resolve_mode("BGR") == "bgr" and resolve_mode("bgr-unit") == "bgr-unit"
    for text in CUSTOM:
        canonical = resolve_mode(text)
        assert resolve_mode(canonical) == canonical  # stable: safe in report.json and for workers
        np.testing.assert_array_equal(preprocess(_raw(), canonical), preprocess(_raw(), text))


def test_values():
    x = np.zeros((1, 1, 2, 3), np.float32)
    x[0, 0, 1] = [255, 128, 0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(preprocess(x, TORCH), (x / 255 - mean) / std, atol=1e-5)
    np.testing.assert_allclose(preprocess(x, TORCH_PIXELS), preprocess(x, TORCH), atol=1e-5)  # >1: pixel units
    np.testing.assert_allclose(preprocess(x, "scale=0.0078431,offset=-1"), x * 0.0078431 - 1, atol=1e-6)
    np.testing.assert_allclose(preprocess(x, "scale=0.0078431,offset=-1"), preprocess(x, "symmetric"), atol=1e-4)
    np.testing.assert_array_equal(preprocess(x, "bgr")[0, 0, 1], [0, 128, 255])
    np.testing.assert_allclose(preprocess(x, "bgr-unit")[0, 0, 1], [0, 128 / 255, 1], rtol=1e-6)
    caffe = "order=bgr,mean=103.939,116.779,123.68"  # per-channel values are in the model's (B,G,R) order
    np.testing.assert_allclose(preprocess(x, caffe), preprocess(x, "imagenet"), atol=1e-5)
    np.testing.assert_allclose(preprocess(x, "mean=0.5,std=0.5"), preprocess(x, "symmetric"), atol=1e-6)


@pytest.mark.parametrize("mode", ("bgr", "bgr-unit") + CUSTOM)
def test_exact_inverse_numpy_and_tensor(mode):
    x = _raw()
    y = preprocess(x, mode)
    assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(reverse_preprocess(y, mode), x, atol=2e-3)
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        yt = preprocess(t, mode)
        total = tf.reduce_sum(yt)
    assert isinstance(yt, tf.Tensor)
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-5)
    np.testing.assert_allclose(reverse_preprocess(yt, mode).numpy(), x, atol=2e-3)
    assert float(tf.reduce_min(tf.abs(tape.gradient(total, t)))) > 0
    traced = tf.function(lambda v: reverse_preprocess(preprocess(v, resolve_mode(mode)), resolve_mode(mode)))
    np.testing.assert_allclose(traced(t).numpy(), x, atol=2e-3)


def test_grayscale_takes_one_value_per_key():
    g = _raw(channels=1)
    for mode in ("mean=0.5,std=0.25", "scale=0.01,offset=-1", "bgr", "bgr-unit", "order=bgr,mean=0.5"):
        np.testing.assert_allclose(reverse_preprocess(preprocess(g, mode), mode), g, atol=2e-3)
    np.testing.assert_allclose(preprocess(g, "mean=0.5,std=0.25"), (g / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(DataError, match="has 3 values per key but the images have 1 channel; give one value"):
        preprocess(g, TORCH)
    with pytest.raises(DataError, match="3 values per key but the images have 1 channel"):
        check_channels(TORCH, 1)
    check_channels(TORCH, 3)
    check_channels("unit", 1)


@pytest.mark.parametrize("text, message", [
    ("mean=0.485,0.456", "mean takes 1 value .* or 3 .*got 2"),
    ("std=1,2,3,4", "std takes 1 value .* or 3 .*got 4"),
    ("mean=0.5,abc,0.5", "mean value 'abc' is not a number"),
    ("scale=nan", "scale values must be finite"),
    ("mean=0.5,std=0", "std values must be > 0, got 0"),
    ("mean=0.5,std=-0.2", "std values must be > 0"),
    ("scale=0,offset=1", "scale must not be 0"),
    ("gamma=2", "unknown key 'gamma'"),
    ("mean=0.5,scale=2", "mean/std or scale/offset, not both"),
    ("mean=0.5,mean=0.4", "mean is given twice"),
    ("mean=", "mean has no value"),
    ("0.5,mean=1", "value '0.5' comes before any key"),
    ("order=bgr", "needs mean/std or scale/offset"),
    ("order=grb,mean=1", "order takes rgb or bgr"),
    ("zscore", "unknown preprocessing mode 'zscore'.*bgr, bgr-unit, auto.*mean=R,G,B,std=R,G,B"),
])
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(TaborError, match=message):
        resolve_mode(text)


def test_check_accepts_custom_modes(tmp_path):
    """A model that expects torchvision-normalised input: high clean accuracy with the right
    mean/std, low (and a warning) with unit; auto never picks a custom mode."""
    import keras

    from tabor_tf.input_check import select_preprocess
    from tabor_tf.loading import load_victim

    # class = which channels lie above the per-channel mean (8 sign patterns); the model reads the sign
    # of the normalised channel means, so it only works on inputs normalised with these means
    mean = np.array([0.3, 0.5, 0.7])
    signs = np.array([[1 if (k >> c) & 1 else -1 for c in range(3)] for k in range(8)], np.float32)
    rng = np.random.default_rng(0)
    y = np.arange(64) % 8
    colour = mean * 255 + signs[y] * rng.uniform(20, 60, (64, 3))
    x = np.clip(colour[:, None, None, :] + rng.normal(0, 3, (64, 4, 4, 3)), 0, 255).astype(np.float32)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(8, activation="softmax")])
    model.layers[-1].set_weights([10 * signs.T, np.zeros(8, np.float32)])
    model.save(tmp_path / "normalised.keras")
    victim = load_victim(tmp_path / "normalised.keras")
    data = CleanData(x, y.astype(np.int64), "toy", "npz")

    good = "mean=0.3,0.5,0.7,std=0.2,0.25,0.3"
    check = select_preprocess(victim, data, good)
    assert check.mode == resolve_mode(good) == "mean=0.3,0.5,0.7;std=0.2,0.25,0.3"
    assert check.clean_accuracy == 1.0 and not check.warnings
    assert select_preprocess(victim, data, "mean=76.5,127.5,178.5,std=51").clean_accuracy == 1.0  # pixel units

    unit = select_preprocess(victim, data, "unit")
    assert unit.clean_accuracy < 0.5 and any("LOW CLEAN ACCURACY" in w for w in unit.warnings)
    wrong = select_preprocess(victim, data, "mean=0.5,std=0.2")
    assert wrong.clean_accuracy < 0.5 and set(MODES) <= set(wrong.accuracies_by_mode)
    assert "mean=R,G,B,std=R,G,B" in wrong.warnings[0]

    auto = select_preprocess(victim, data, "auto")
    assert auto.mode in MODES and set(auto.accuracies_by_mode) == set(MODES)

    gray = CleanData(x[..., :1], y.astype(np.int64), "toy", "npz")
    with pytest.raises(DataError, match="3 values per key but the images have 1 channel"):
        select_preprocess(victim, CleanData(gray.x, None, "toy", "npz"), good)
    assert parse_custom(resolve_mode(good)).values_per_key == 3
