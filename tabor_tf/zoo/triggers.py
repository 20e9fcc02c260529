"""BadNet trigger specifications and their rendering to a mask and pattern in the raw pixel domain.

A trigger is a ``TriggerSpec`` (square of any colour, an icon read from a PNG with alpha, or a
random pattern) of ``size`` pixels placed at a corner (``margin`` pixels from both edges) or at
an explicit ``(row, col)`` offset of its top-left pixel. ``render`` gives

    mask    [H, W]     float32 in [0, 1] (1 where the trigger replaces the image)
    pattern [H, W, C]  float32 raw pixels 0..255 (0 outside the trigger)

so that ``tabor_tf.stamping.stamp(x, mask[..., None], pattern)`` inserts it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple, Union

import cv2
import numpy as np

from ..errors import TaborError

SHAPES = ("square", "icon", "random")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_ICON = os.path.join(ASSETS, "logo.png")

Position = Union[str, Tuple[int, int]]


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger: shape, size (px), position (corner name or ``(row, col)``), margin (px from
    the corner's edges), colour (RGB, squares), icon (PNG path, default the shipped logo), seed
    (random patterns)."""

    shape: str = "square"
    size: int = 4
    position: Position = "bottom-right"
    margin: int = 1
    colour: Tuple[int, int, int] = (255, 255, 255)
    icon: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise TaborError(f"unknown trigger shape {self.shape!r}; choose one of {', '.join(SHAPES)}")
        if int(self.size) < 1:
            raise TaborError(f"trigger size must be at least 1 pixel, got {self.size}")
        pos = self.position
        if isinstance(pos, (list, tuple)):
            if len(pos) != 2:
                raise TaborError(f"trigger position must be a corner name or (row, col), got {pos!r}")
            object.__setattr__(self, "position", (int(pos[0]), int(pos[1])))
        elif pos not in CORNERS:
            raise TaborError(f"unknown trigger position {pos!r}; use one of {', '.join(CORNERS)} or [row, col]")
        colour = tuple(int(c) for c in self.colour)
        if len(colour) != 3 or min(colour) < 0 or max(colour) > 255:
            raise TaborError(f"trigger colour must be three RGB values 0..255, got {self.colour!r}")
        object.__setattr__(self, "colour", colour)
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "margin", int(self.margin))

    @property
    def icon_path(self) -> str:
        return self.icon or DEFAULT_ICON

    def offset(self, image_shape) -> Tuple[int, int]:
        """Top-left ``(row, col)`` of the trigger box in an image of ``(H, W, ...)``."""
        h, w = int(image_shape[0]), int(image_shape[1])
        if isinstance(self.position, tuple):
            row, col = self.position
        else:
            vert, horiz = self.position.split("-")
            row = self.margin if vert == "top" else h - self.margin - self.size
            col = self.margin if horiz == "left" else w - self.margin - self.size
        if row < 0 or col < 0 or row + self.size > h or col + self.size > w:
            raise TaborError(
                f"a {self.size}px trigger at (row {row}, col {col}) does not fit a {h}x{w} image"
            )
        return int(row), int(col)

    def _patch(self, channels: int):
        """The trigger box alone: mask ``[s, s]`` in [0,1], pattern ``[s, s, C]`` raw."""
        s = self.size
        if self.shape == "square":
            mask = np.ones((s, s), np.float32)
            pattern = np.broadcast_to(np.asarray(self.colour, np.float32), (s, s, 3)).copy()
        elif self.shape == "random":
            rng = np.random.default_rng(self.seed)
            mask = np.ones((s, s), np.float32)
            pattern = rng.integers(0, 256, (s, s, 3)).astype(np.float32)
        else:
            mask, pattern = load_icon(self.icon_path, s)
        if channels == 1:
            pattern = pattern @ np.array([0.299, 0.587, 0.114], np.float32)
            pattern = pattern[..., None]
        elif channels != 3:
            raise TaborError(f"triggers support 1 or 3 image channels, not {channels}")
        return mask, pattern

    def render(self, image_shape):
        """``image_shape (H, W, C)`` -> ``(mask [H,W] float32 0..1, pattern [H,W,C] float32 0..255)``."""
        h, w = int(image_shape[0]), int(image_shape[1])
        channels = int(image_shape[2]) if len(image_shape) > 2 else 1
        row, col = self.offset(image_shape)
        patch_mask, patch_pattern = self._patch(channels)
        mask = np.zeros((h, w), np.float32)
        pattern = np.zeros((h, w, channels), np.float32)
        mask[row : row + self.size, col : col + self.size] = patch_mask
        pattern[row : row + self.size, col : col + self.size] = patch_pattern * (patch_mask[..., None] > 0)
        return mask, pattern

    def to_dict(self) -> dict:
        d = asdict(self)
        d["colour"] = list(self.colour)
        if isinstance(self.position, tuple):
            d["position"] = list(self.position)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TriggerSpec":
        known = {"shape", "size", "position", "margin", "colour", "icon", "seed"}
        unknown = set(d) - known - {"color"}
        if unknown:
            raise TaborError(
                f"unknown trigger field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        d = dict(d)
        if "color" in d:
            d["colour"] = d.pop("color")
        return cls(**d)


def load_icon(path: str, size: int):
    """Read a PNG (alpha -> mask) and resize it to ``size`` px: mask ``[s,s]`` 0..1, RGB ``[s,s,3]`` 0..255."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise TaborError(f"cannot read trigger icon {path!r} (a PNG image with an alpha channel is expected)")
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None].repeat(3, -1)
    if img.shape[-1] == 4:
        alpha = img[..., 3:] / 255.0
        bgr = img[..., :3]
    else:
        alpha = np.ones(img.shape[:2] + (1,), np.float32)
        bgr = img[..., :3]
    # Resize alpha-premultiplied colours so transparent pixels do not darken the edges.
    premult = cv2.resize(bgr * alpha, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, 3)
    alpha = cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size)
    rgb = (premult / np.maximum(alpha, 1e-6)[..., None])[..., ::-1]
    return np.clip(alpha, 0, 1).astype(np.float32), np.clip(rgb, 0, 255).astype(np.float32)


def draw_logo(size: int = 64) -> np.ndarray:
    """A Firefox-like logo drawn with OpenCV (BGRA uint8 ``[size, size, 4]``): a blue globe with
    an orange fox-tail crescent wrapped around it, transparent elsewhere. Nothing is downloaded."""
    s = size * 4  # draw large, downscale for smooth edges
    c = s // 2
    bgra = np.zeros((s, s, 4), np.uint8)
    globe = (200, 70, 40, 255)  # BGR blue
    cv2.circle(bgra, (c, c), int(0.34 * s), globe, -1, cv2.LINE_AA)
    # continents: lighter blue blobs
    for dx, dy, rx, ry in ((-0.10, -0.08, 0.09, 0.06), (0.08, 0.06, 0.07, 0.10), (-0.04, 0.14, 0.06, 0.04)):
        cv2.ellipse(bgra, (int(c + dx * s), int(c + dy * s)), (int(rx * s), int(ry * s)), 20, 0, 360,
                    (235, 160, 90, 255), -1, cv2.LINE_AA)
    # the fox: an orange crescent, outer circle minus an offset inner circle, plus an ear
    fox = np.zeros((s, s), np.uint8)
    cv2.circle(fox, (c, c), int(0.48 * s), 255, -1, cv2.LINE_AA)
    cv2.circle(fox, (int(c + 0.12 * s), int(c - 0.10 * s)), int(0.40 * s), 0, -1, cv2.LINE_AA)
    ear = np.array([[c - 0.30 * s, c - 0.30 * s], [c - 0.20 * s, c - 0.47 * s], [c - 0.08 * s, c - 0.33 * s]])
    cv2.fillPoly(fox, [ear.astype(np.int32)], 255, cv2.LINE_AA)
    # orange-to-yellow gradient over the crescent
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    orange = np.stack([np.full((s, s), 0.0), 60 + 120 * (1 - t) * np.ones((1, s)), np.full((s, s), 245.0)], -1)
    a = fox.astype(np.float32)[..., None] / 255.0
    bgra[..., :3] = (bgra[..., :3] * (1 - a) + orange * a).astype(np.uint8)
    bgra[..., 3] = np.maximum(bgra[..., 3], fox)
    return cv2.resize(bgra, (size, size), interpolation=cv2.INTER_AREA)


def write_default_icon(path: str = DEFAULT_ICON, size: int = 64) -> str:
    """(Re)create the shipped logo PNG."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, draw_logo(size)):
        raise TaborError(f"cannot write {path}")
    return path
