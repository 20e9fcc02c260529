"""TABOR's trigger quality metric A (paper eq. 8) and its five parts; smaller = more suspicious.

    A = log(|F|_1 / (H W)) + log(smooth(F) / P) - log(acc_att) - log(acc_crop) - log(acc_exp)

``F`` is the binary footprint of the restored mask. The paper writes ``F = 1{M * Delta > 0}``;
a tanh-parametrised mask is never exactly 0 and a black pattern (the ImageNet square) makes
``M * Delta`` 0 inside the trigger, so we threshold the mask alone, relative to its maximum:
``F = M >= threshold * max(M)`` (threshold 0.5 by default; docs/TABOR_CHOICES.md). ``P`` is half
the number of neighbouring pixel pairs, ``(H (W-1) + (H-1) W) / 2`` (= ``d (d-1)`` for a ``d x d``
input, the paper's normaliser). ``smooth(F)`` counts the footprint's edges with ``F`` zero-padded
by one pixel, i.e. edges on the image border count too: without it a footprint covering the
whole image has 0 edges and would look like the smoothest trigger there is (``log 0``), scoring
next to a compact corner square. Zero counts would still give ``log 0`` (an empty footprint):
the footprint size and the edge count are floored at 0.5 (half the smallest non-zero value),
accuracies at ``0.5 / E`` for ``E`` evaluation images (half of one image), or at
``accuracy_floor`` when that is higher: the TABOR default 0.1 caps each accuracy part at
log 10 = 2.3, so a label whose trigger fails a test badly does not stretch the spread of A that
the outlier test divides by (docs/TABOR_CHOICES.md, "Decision rule").
"""

from __future__ import annotations

import math

import numpy as np

PART_NAMES = ("sparsity", "smoothness", "attack", "crop", "explanation")


def footprint(mask, threshold: float = 0.5):
    """Binary footprint ``[H,W]`` bool of a mask ``[H,W]`` (or ``[H,W,1]``): ``M >= threshold * max(M)``.

    An all-zero mask has an empty footprint.
    """
    m = np.asarray(mask, np.float64)
    m = m.reshape(m.shape[:2])
    peak = float(m.max()) if m.size else 0.0
    if peak <= 0:
        return np.zeros(m.shape, bool)
    return m >= threshold * peak


def smooth_count(v, pad: bool = False) -> float:
    """``sum (v[i,j]-v[i,j+1])^2 + sum (v[i,j]-v[i+1,j])^2`` of a 2-D array (edges of a binary one);
    ``pad``: zero-pad by one pixel first, so edges on the array's border count too.
    """
    v = np.asarray(v, np.float64)
    if pad:
        v = np.pad(v, 1)
    return float(np.sum(np.square(np.diff(v, axis=0))) + np.sum(np.square(np.diff(v, axis=1))))


def neighbour_pairs(height: int, width: int) -> float:
    """The smoothness normaliser ``(H (W-1) + (H-1) W) / 2`` (``d (d-1)`` for square inputs)."""
    return (height * (width - 1) + (height - 1) * width) / 2.0


def sparsity_part(f) -> float:
    """``log(|F|_1 / (H W))`` with ``|F|_1`` floored at 0.5."""
    f = np.asarray(f)
    return math.log(max(float(np.sum(f)), 0.5) / f.size)


def smoothness_part(f) -> float:
    """``log(smooth(F) / P)``, edges counted with ``F`` zero-padded, floored at 0.5."""
    f = np.asarray(f, np.float64)
    return math.log(max(smooth_count(f, pad=True), 0.5) / neighbour_pairs(*f.shape[:2]))


def accuracy_part(acc: float, num_images: int, floor: float = 0.0) -> float:
    """``-log(acc)`` with ``acc`` floored at ``0.5 / num_images`` (or at ``floor`` when higher)."""
    return -math.log(max(float(acc), 0.5 / max(int(num_images), 1), float(floor)))


def quality_parts(mask, acc_att: float, acc_crop: float, acc_exp: float, num_images: int,
                  threshold: float = 0.5, accuracy_floor: float = 0.0) -> dict:
    """The five parts of A, A itself (``"A"``) and the footprint size, for one label."""
    f = footprint(mask, threshold)
    parts = {
        "sparsity": sparsity_part(f),
        "smoothness": smoothness_part(f),
        "attack": accuracy_part(acc_att, num_images, accuracy_floor),
        "crop": accuracy_part(acc_crop, num_images, accuracy_floor),
        "explanation": accuracy_part(acc_exp, num_images, accuracy_floor),
    }
    parts["A"] = float(sum(parts[k] for k in PART_NAMES))
    parts["footprint_pixels"] = int(np.sum(f))
    parts["footprint_edges"] = smooth_count(f, pad=True)
    return parts
