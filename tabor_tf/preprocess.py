"""Map raw pixels (0..255, RGB) to the model's input domain and back.

All functions take and return arrays/tensors of shape ``[..., H, W, C]``. The same code runs on
numpy arrays and TF tensors (it only uses arithmetic and ``tf.reverse``-free channel flips).

Modes (Neural Cleanse's names in brackets):
    raw        identity (NC ``raw``, their GTSRB models)
    unit       x / 255                        (NC ``mnist``)
    symmetric  x / 127.5 - 1                  (NC ``inception``: (x/255 - 0.5) * 2)
    imagenet   RGB -> BGR, minus the Caffe means [103.939, 116.779, 123.68] (NC ``imagenet``)
"""

from __future__ import annotations

import numpy as np

from .errors import TaborError

MODES = ("raw", "unit", "symmetric", "imagenet")
ALIASES = {"mnist": "unit", "inception": "symmetric", "none": "raw", "identity": "raw"}
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def resolve_mode(name: str) -> str:
    """Return the canonical mode for ``name`` (aliases accepted); ``auto`` is passed through."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in MODES and key != "auto":
        raise TaborError(
            f"unknown preprocessing mode {name!r}; choose one of {', '.join(MODES + ('auto',))}"
            f" (aliases: {', '.join(sorted(ALIASES))})"
        )
    return key


def _flip_channels(x):
    """Reverse the last axis (RGB <-> BGR) for numpy arrays and TF tensors alike."""
    if isinstance(x, np.ndarray):
        return x[..., ::-1]
    import tensorflow as tf

    return tf.reverse(x, axis=[-1])


def _mean(x):
    channels = x.shape[-1]
    if channels == 3:
        return np.asarray(CAFFE_BGR_MEAN, dtype=np.float32)
    return np.float32(np.mean(CAFFE_BGR_MEAN))


def preprocess(x_raw, mode: str):
    """Raw pixels ``[..., H, W, C]`` in 0..255 -> model input for ``mode``."""
    mode = resolve_mode(mode)
    if mode == "raw":
        return x_raw
    if mode == "unit":
        return x_raw / 255.0
    if mode == "symmetric":
        return x_raw / 127.5 - 1.0
    if mode == "imagenet":
        x = _flip_channels(x_raw) if x_raw.shape[-1] == 3 else x_raw
        return x - _mean(x_raw)
    raise TaborError(f"preprocessing mode {mode!r} must be resolved before use")


def reverse_preprocess(x, mode: str):
    """Model input for ``mode`` -> raw pixels ``[..., H, W, C]`` in 0..255 (inverse of ``preprocess``)."""
    mode = resolve_mode(mode)
    if mode == "raw":
        return x
    if mode == "unit":
        return x * 255.0
    if mode == "symmetric":
        return (x + 1.0) * 127.5
    if mode == "imagenet":
        x = x + _mean(x)
        return _flip_channels(x) if x.shape[-1] == 3 else x
    raise TaborError(f"preprocessing mode {mode!r} must be resolved before use")
