"""Trigger insertion in the raw pixel domain: ``x_t = x * (1 - M) + M * Delta`` (NC eq. 1).

Shapes: images ``x`` are ``[B, H, W, C]`` raw pixels 0..255; a mask is ``[H, W, 1]`` in [0, 1]
(broadcast over channels); a pattern is ``[H, W, C]`` raw pixels 0..255. Batched triggers for
``K`` labels are ``[K, H, W, 1]`` / ``[K, H, W, C]``. Both detectors and the victim zoo use these.
"""

from __future__ import annotations


def stamp(x, mask, pattern):
    """Stamp one trigger on a batch: ``[B,H,W,C]``, ``[H,W,1]``, ``[H,W,C]`` -> ``[B,H,W,C]``."""
    return x * (1.0 - mask) + mask * pattern


def stamp_all(x, masks, patterns):
    """Stamp each of ``K`` triggers on the same batch, or each on its own batch.

    ``x [B,H,W,C]`` (one batch for all) or ``[K,B,H,W,C]`` (a batch per trigger), ``masks [K,H,W,1]``,
    ``patterns [K,H,W,C]`` -> ``[K, B, H, W, C]``.
    """
    import tensorflow as tf  # here, so the zoo builder (numpy arrays) also runs under other Keras backends

    x = tf.convert_to_tensor(x)
    if x.shape.rank == 4:
        x = x[None]
    return x * (1.0 - masks[:, None]) + (masks * patterns)[:, None]


def crop_trigger(x, mask):
    """Remove the trigger region: ``x * (1 - M)`` (TABOR's R3 input and ``acc_crop``)."""
    return x * (1.0 - mask)


def trigger_only(mask, pattern):
    """The trigger alone on a black (raw 0) image: ``M * Delta`` (TABOR's R4 input)."""
    return mask * pattern
