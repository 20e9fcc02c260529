"""Embedded dataset: deterministic procedural traffic-sign-like images (no network needed).

Each class is a fixed combination of a sign shape (circle, triangle, inverted triangle, octagon,
diamond, square), a colour scheme (border / fill / symbol colours) and an inner symbol (a digit
drawn with ``cv2.putText``, arrows, bars, a cross, a ring). Class ``k`` uses shape ``k % 6``,
scheme ``(k // 6) % 8`` and symbol ``k % 17``, so any two of the first 43 classes differ in at
least two of the three. Every image draws its sign from the class template with a random affine jitter
(scale, rotation, shift) onto a random background (gradient, low-frequency blobs), then applies
per-image colour, brightness and contrast changes and pixel noise.

``make_signs(n, seed=s)`` is a pure function of its arguments: the same call always returns the
same arrays, and labels are balanced (``n // num_classes`` or one more per class).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from .errors import DataError

SHAPES = ("circle", "triangle", "inverted_triangle", "octagon", "diamond", "square")
# (border, fill, symbol) RGB colour schemes, loosely after real road signs.
SCHEMES = (
    ((200, 20, 30), (245, 245, 245), (20, 20, 20)),  # red ring, white fill, black symbol
    ((20, 60, 170), (40, 110, 220), (250, 250, 250)),  # blue sign, white symbol
    ((30, 30, 30), (250, 200, 20), (10, 10, 10)),  # yellow diamond style
    ((250, 250, 250), (200, 25, 35), (255, 255, 255)),  # red sign, white symbol
    ((20, 120, 50), (235, 235, 235), (20, 110, 40)),  # green ring, white fill, green symbol
    ((15, 15, 15), (250, 250, 250), (15, 15, 15)),  # black ring, white fill, black symbol
    ((30, 30, 30), (245, 130, 20), (10, 10, 10)),  # orange works sign
    ((250, 250, 250), (115, 65, 30), (250, 250, 250)),  # brown sign, white symbol
)
SYMBOLS = tuple(str(d) for d in range(10)) + (
    "arrow_up",
    "arrow_left",
    "arrow_right",
    "bar_h",
    "bar_v",
    "cross",
    "ring",
)
_TEMPLATE = 64  # class templates are drawn at this size, then warped down


def class_spec(label: int) -> dict:
    """Shape, colours and symbol of class ``label`` (deterministic)."""
    border, fill, symbol_colour = SCHEMES[(label // len(SHAPES)) % len(SCHEMES)]
    return {
        "shape": SHAPES[label % len(SHAPES)],
        "border": border,
        "fill": fill,
        "symbol_colour": symbol_colour,
        "symbol": SYMBOLS[label % len(SYMBOLS)],
    }


def _polygon(shape: str, c: float, r: float) -> np.ndarray:
    if shape == "triangle":
        angles = [-90, 30, 150]
    elif shape == "inverted_triangle":
        angles = [90, 210, 330]
    elif shape == "octagon":
        angles = [22.5 + 45 * i for i in range(8)]
    elif shape == "diamond":
        angles = [0, 90, 180, 270]
    elif shape == "square":
        angles = [45, 135, 225, 315]
    else:
        raise ValueError(shape)
    radius = r * (1.0 if shape != "square" else 0.92)
    pts = [(c + radius * math.cos(math.radians(a)), c + radius * math.sin(math.radians(a))) for a in angles]
    return np.round(np.array(pts)).astype(np.int32)


def _draw_outline(img: np.ndarray, shape: str, c: float, r: float, colour, thickness: int) -> None:
    """Filled shape of radius ``r`` (thickness < 0) or its outline."""
    if shape == "circle":
        cv2.circle(img, (int(c), int(c)), int(r), colour, thickness, cv2.LINE_AA)
    else:
        pts = _polygon(shape, c, r)
        if thickness < 0:
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            cv2.polylines(img, [pts], True, colour, thickness, cv2.LINE_AA)


def _draw_symbol(img: np.ndarray, symbol: str, c: int, colour, centre_y: int) -> None:
    s = _TEMPLATE
    if symbol.isdigit():
        font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.95, 5
        (w, h), _ = cv2.getTextSize(symbol, font, scale, thick)
        cv2.putText(img, symbol, (c - w // 2, centre_y + h // 2), font, scale, colour, thick, cv2.LINE_AA)
        return
    u = s // 8
    if symbol == "arrow_up":
        cv2.arrowedLine(img, (c, centre_y + 2 * u), (c, centre_y - 2 * u), colour, 5, cv2.LINE_AA, tipLength=0.5)
    elif symbol == "arrow_left":
        cv2.arrowedLine(img, (c + 2 * u, centre_y), (c - 2 * u, centre_y), colour, 5, cv2.LINE_AA, tipLength=0.5)
    elif symbol == "arrow_right":
        cv2.arrowedLine(img, (c - 2 * u, centre_y), (c + 2 * u, centre_y), colour, 5, cv2.LINE_AA, tipLength=0.5)
    elif symbol == "bar_h":
        cv2.rectangle(img, (c - 2 * u, centre_y - u // 2 - 1), (c + 2 * u, centre_y + u // 2 + 1), colour, -1)
    elif symbol == "bar_v":
        cv2.rectangle(img, (c - u // 2 - 1, centre_y - 2 * u), (c + u // 2 + 1, centre_y + 2 * u), colour, -1)
    elif symbol == "cross":
        cv2.line(img, (c - 2 * u, centre_y - 2 * u), (c + 2 * u, centre_y + 2 * u), colour, 5, cv2.LINE_AA)
        cv2.line(img, (c - 2 * u, centre_y + 2 * u), (c + 2 * u, centre_y - 2 * u), colour, 5, cv2.LINE_AA)
    elif symbol == "ring":
        cv2.circle(img, (c, centre_y), int(1.6 * u), colour, 4, cv2.LINE_AA)
    else:
        raise ValueError(symbol)


@lru_cache(maxsize=None)
def class_template(label: int) -> np.ndarray:
    """RGBA template ``[64, 64, 4]`` float32 (RGB 0..255, alpha 0..1) of class ``label``."""
    spec = class_spec(label)
    s = _TEMPLATE
    c, r = s / 2.0, s / 2.0 - 2
    rgb = np.zeros((s, s, 3), np.uint8)
    alpha = np.zeros((s, s), np.uint8)
    _draw_outline(alpha, spec["shape"], c, r, 255, -1)
    _draw_outline(rgb, spec["shape"], c, r, spec["border"], -1)
    inner = r * (0.72 if spec["shape"] in ("triangle", "inverted_triangle") else 0.8)
    _draw_outline(rgb, spec["shape"], c, inner, spec["fill"], -1)
    # Triangles have their centroid off the middle of the symbol area: nudge the symbol.
    centre_y = int(c) + {"triangle": 5, "inverted_triangle": -5}.get(spec["shape"], 0)
    _draw_symbol(rgb, spec["symbol"], int(c), spec["symbol_colour"], centre_y)
    out = np.concatenate([rgb.astype(np.float32), alpha[..., None].astype(np.float32) / 255.0], axis=-1)
    # Pre-blur so the ~2.5x downscale by warpAffine (bilinear) does not alias.
    out = cv2.GaussianBlur(out, (0, 0), 0.9)
    out.setflags(write=False)
    return out


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Random backgrounds ``[n, size, size, 3]`` float32: a colour gradient plus blobs."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    t = (np.cos(theta)[:, None, None] * (xx - 0.5) + np.sin(theta)[:, None, None] * (yy - 0.5)) + 0.5
    c0 = rng.uniform(15, 185, (n, 1, 1, 3)).astype(np.float32)
    c1 = c0 + rng.uniform(-70, 70, (n, 1, 1, 3)).astype(np.float32)
    bg = c0 + (c1 - c0) * t[..., None]
    # Low-frequency blobs: 4x4 Gaussian noise upsampled bilinearly (separable, as two matmuls).
    coarse = rng.normal(0, 1, (n, 4, 4, 3)).astype(np.float32) * rng.uniform(0, 35, (n, 1, 1, 1)).astype(np.float32)
    grid = np.linspace(0, 3, size, dtype=np.float32)
    interp = np.maximum(0.0, 1.0 - np.abs(grid[:, None] - np.arange(4, dtype=np.float32)[None, :]))
    blobs = np.einsum("ia,nabc->nibc", interp, coarse)
    blobs = np.einsum("jb,nibc->nijc", interp, blobs)
    return bg + blobs


def _warp_matrices(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Affine maps template (64 px) -> image (``size`` px): scale, rotation and shift jitter."""
    scale = rng.uniform(0.62, 0.88, n) * size / _TEMPLATE
    angle = np.radians(rng.uniform(-12, 12, n))
    shift = rng.uniform(-0.08, 0.08, (n, 2)) * size
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    c_src = _TEMPLATE / 2.0
    c_dst = size / 2.0 + shift
    m = np.empty((n, 2, 3), np.float64)
    m[:, 0, 0], m[:, 0, 1] = cos, -sin
    m[:, 1, 0], m[:, 1, 1] = sin, cos
    m[:, 0, 2] = c_dst[:, 0] - (cos * c_src - sin * c_src)
    m[:, 1, 2] = c_dst[:, 1] - (sin * c_src + cos * c_src)
    return m


def make_signs(n: int, *, seed: int = 0, size: int = 32, num_classes: int = 43):
    """Generate ``n`` synthetic sign images.

    Returns ``x`` uint8 ``[n, size, size, 3]`` RGB raw pixels and ``y`` int64 ``[n]`` in
    ``0..num_classes-1``, class-balanced and shuffled. Deterministic in (n, seed, size, num_classes).
    """
    if n < 0 or size < 8 or num_classes < 2:
        raise DataError(f"make_signs needs n >= 0, size >= 8 and num_classes >= 2 (got {n}, {size}, {num_classes})")
    rng = np.random.default_rng([int(seed), int(size), int(num_classes), 0x5157])
    y = np.arange(n, dtype=np.int64) % num_classes
    rng.shuffle(y)
    x = _backgrounds(rng, n, size)
    mats = _warp_matrices(rng, n, size)
    tint = rng.uniform(0.8, 1.15, (n, 3)).astype(np.float32)
    for i in range(n):
        warped = cv2.warpAffine(
            class_template(int(y[i])), mats[i], (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        a = warped[..., 3:4]
        x[i] = x[i] * (1.0 - a) + warped[..., :3] * tint[i] * a
    contrast = rng.uniform(0.6, 1.25, (n, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-40, 30, (n, 1, 1, 1)).astype(np.float32)
    x = (x - 128.0) * contrast + 128.0 + brightness
    sigma = rng.uniform(0, 10, (n, 1, 1, 1)).astype(np.float32)
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * sigma
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y
