"""Preprocessing modes: values, round trips (numpy and TF tensors), aliases, grayscale."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tabor_tf.errors import TaborError  # noqa: E402
from tabor_tf.preprocess import (  # noqa: E402
    ALIASES, CAFFE_BGR_MEAN, MODES, preprocess, resolve_mode, reverse_preprocess)

ALL_NAMES = MODES + tuple(ALIASES)


def _raw(channels=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(2, 4, 5, channels)).astype(np.float32)


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_numpy_and_tensor(name, channels):
    x = _raw(channels)
    y = preprocess(x, name)
    assert isinstance(y, np.ndarray) and y.shape == x.shape
    np.testing.assert_allclose(reverse_preprocess(y, name), x, atol=1e-3)
    t = tf.constant(x)
    yt = preprocess(t, name)
    assert isinstance(yt, tf.Tensor)
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-4)
    np.testing.assert_allclose(reverse_preprocess(yt, name).numpy(), x, atol=1e-3)


def test_mode_values():
    x = np.zeros((1, 1, 2, 3), np.float32)
    x[0, 0, 1] = [255, 128, 0]
    np.testing.assert_allclose(preprocess(x, "raw"), x)
    np.testing.assert_allclose(preprocess(x, "unit")[0, 0, 1], [1.0, 128 / 255, 0.0], rtol=1e-6)
    np.testing.assert_allclose(preprocess(x, "symmetric")[0, 0, 0], [-1, -1, -1])
    np.testing.assert_allclose(preprocess(x, "symmetric")[0, 0, 1], [1.0, 128 / 127.5 - 1, -1.0], atol=1e-6)
    bgr_mean = np.asarray(CAFFE_BGR_MEAN, np.float32)
    np.testing.assert_allclose(preprocess(x, "imagenet")[0, 0, 1], np.array([0, 128, 255]) - bgr_mean, rtol=1e-6)
    gray = np.full((1, 1, 1, 1), 100.0, np.float32)
    np.testing.assert_allclose(preprocess(gray, "imagenet"), 100.0 - np.mean(CAFFE_BGR_MEAN), rtol=1e-6)


def test_aliases_match_their_modes():
    x = _raw()
    for alias, mode in ALIASES.items():
        np.testing.assert_allclose(preprocess(x, alias), preprocess(x, mode))
        assert resolve_mode(alias) == mode
    assert resolve_mode(" Unit ") == "unit" and resolve_mode("AUTO") == "auto"


def test_gradients_flow_through_preprocess():
    x = tf.constant(_raw())
    for mode in MODES:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(preprocess(x, mode))
        g = tape.gradient(y, x)
        assert g is not None and float(tf.reduce_min(tf.abs(g))) > 0


def test_unknown_modes_are_refused():
    with pytest.raises(TaborError, match="unknown preprocessing mode 'zscore'.*raw, unit, symmetric, imagenet"):
        resolve_mode("zscore")
    with pytest.raises(TaborError, match="resolved before use"):
        preprocess(_raw(), "auto")
    with pytest.raises(TaborError, match="resolved before use"):
        reverse_preprocess(_raw(), "auto")
