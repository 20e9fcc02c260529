"""tanh-parametrised trigger variables, as Neural Cleanse defines them (shared with TABOR).

The optimiser works on unbounded tensors; these maps keep the trigger in range:
    mask    m = tanh(m_t) / (2 - eps) + 0.5              in (0, 1), one channel
    pattern p = (tanh(p_t) / (2 - eps) + 0.5) * 255      raw pixels in (0, 255)
``eps`` is Keras' epsilon (1e-7). A mask may live on a coarse grid of super-pixels of size ``u``
(``[ceil(H/u), ceil(W/u), 1]``) and is upsampled (nearest) and cropped to ``[H, W, 1]``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

EPSILON = 1e-7
_SCALE = 2.0 - EPSILON


def mask_from_tanh(m_t):
    """Unbounded ``[..., h, w, 1]`` -> mask in (0, 1)."""
    return tf.tanh(m_t) / _SCALE + 0.5


def pattern_from_tanh(p_t):
    """Unbounded ``[..., H, W, C]`` -> pattern in raw pixels (0, 255)."""
    return (tf.tanh(p_t) / _SCALE + 0.5) * 255.0


def mask_to_tanh(mask):
    """Inverse of ``mask_from_tanh`` for values in [0, 1] (numpy, float32)."""
    return np.arctanh((np.asarray(mask, np.float64) - 0.5) * _SCALE).astype(np.float32)


def pattern_to_tanh(pattern):
    """Inverse of ``pattern_from_tanh`` for raw pixels in [0, 255] (numpy, float32)."""
    return mask_to_tanh(np.asarray(pattern, np.float64) / 255.0)


def upsample_mask(mask, upsample: int, height: int, width: int):
    """Super-pixel mask ``[..., h, w, 1]`` -> ``[..., height, width, 1]`` (nearest, then crop)."""
    if upsample == 1:
        return mask
    mask = tf.repeat(tf.repeat(mask, upsample, axis=-3), upsample, axis=-2)
    return mask[..., :height, :width, :]


def mask_grid_shape(height: int, width: int, upsample: int = 1) -> tuple:
    """Shape ``(ceil(H/u), ceil(W/u), 1)`` of the mask variable for super-pixel size ``u``."""
    return (-(-height // upsample), -(-width // upsample), 1)


def random_init(rng: np.random.Generator, shape_mask, shape_pattern):
    """NC's initialisation: mask uniform in [0,1], pattern uniform in [0,255], mapped to tanh space."""
    mask = rng.uniform(0.0, 1.0, size=shape_mask)
    pattern = rng.uniform(0.0, 255.0, size=shape_pattern)
    return mask_to_tanh(mask), pattern_to_tanh(pattern)
