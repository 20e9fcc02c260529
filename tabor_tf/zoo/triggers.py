"""BadNet trigger specifications and their rendering to a mask and pattern in the raw pixel domain.

A trigger is a ``TriggerSpec``: a patch of ``size`` x ``size`` pixels (solid ``square``,
two-colour ``checkerboard``, seeded random-colour ``noise`` or legacy ``random``, or an ``icon``
read from a PNG with alpha) placed at a named position (corners, edge middles, ``center``;
``margin`` pixels from the edges it touches) or at an explicit ``(row, col)`` of its top-left
pixel; or a whole-image ``blend`` (alpha-blended seeded noise, a detector blind spot).
``render`` gives

    mask    [H, W]     float32 in [0, 1] (1 where the trigger replaces the image; alpha for blend)
    pattern [H, W, C]  float32 raw pixels 0..255 (0 outside the trigger)

so that ``tabor_tf.stamping.stamp(x, mask[..., None], pattern)`` inserts it. On grey images
(``C == 1``) colours collapse to their luminance (0.299 R + 0.587 G + 0.114 B).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple, Union

import cv2
import numpy as np

from ..errors import TaborError

SHAPES = ("square", "icon", "random", "checkerboard", "noise", "blend")
#: shapes a patch detector is not expected to find (reported, not scored as misses)
BLIND_SPOT_SHAPES = ("blend",)
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: named positions: (vertical, horizontal) anchor of the trigger box
POSITIONS = {
    "top-left": ("top", "left"), "top-center": ("top", "center"), "top-right": ("top", "right"),
    "middle-left": ("middle", "left"), "center": ("middle", "center"), "middle-right": ("middle", "right"),
    "bottom-left": ("bottom", "left"), "bottom-center": ("bottom", "center"), "bottom-right": ("bottom", "right"),
}
_POSITION_ALIASES = {
    "centre": "center", "middle-center": "center", "middle-centre": "center", "center-center": "center",
    "top-centre": "top-center", "top-middle": "top-center", "middle-top": "top-center", "center-top": "top-center",
    "bottom-centre": "bottom-center", "bottom-middle": "bottom-center", "middle-bottom": "bottom-center",
    "center-bottom": "bottom-center", "centre-left": "middle-left", "center-left": "middle-left",
    "left-middle": "middle-left", "centre-right": "middle-right", "center-right": "middle-right",
    "right-middle": "middle-right",
}
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_ICON = os.path.join(ASSETS, "logo.png")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Fields added after the first card schema: written by ``to_dict`` only when the shape uses them
# or they differ from the default, so specs (and recipe hashes) of older triggers do not change.
_EXTRA_DEFAULTS = {"colour2": (0, 0, 0), "cell": 1, "alpha": 0.15}
_EXTRA_USED_BY = {"checkerboard": ("colour2", "cell"), "noise": ("cell",), "blend": ("cell", "alpha")}

Position = Union[str, Tuple[int, int]]


def _rgb(value, what: str) -> Tuple[int, int, int]:
    colour = tuple(int(c) for c in value)
    if len(colour) != 3 or min(colour) < 0 or max(colour) > 255:
        raise TaborError(f"trigger {what} must be three RGB values 0..255, got {value!r}")
    return colour


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger.

    ``shape``: one of ``SHAPES``. ``size``: side of the square box in pixels. ``position``: a
    name of ``POSITIONS`` (aliases such as ``centre-left`` or ``middle-top`` accepted) or
    ``(row, col)`` of the box's top-left pixel. ``margin``: pixels from the image edges a named
    position touches. ``colour``: RGB of a square / first checkerboard colour; ``colour2``:
    second checkerboard colour. ``cell``: side in pixels of a checkerboard cell or of a noise
    block. ``icon``: PNG path (default the shipped logo). ``seed``: seed of a ``random`` /
    ``noise`` / ``blend`` pattern. ``alpha``: blend opacity in (0, 1] (``blend`` ignores size,
    position and margin: it covers the whole image).
    """

    shape: str = "square"
    size: int = 4
    position: Position = "bottom-right"
    margin: int = 1
    colour: Tuple[int, int, int] = (255, 255, 255)
    icon: Optional[str] = None
    seed: int = 0
    colour2: Tuple[int, int, int] = (0, 0, 0)
    cell: int = 1
    alpha: float = 0.15

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise TaborError(f"unknown trigger shape {self.shape!r}; choose one of {', '.join(SHAPES)}")
        if int(self.size) < 1:
            raise TaborError(f"trigger size must be at least 1 pixel, got {self.size}")
        pos = self.position
        if isinstance(pos, (list, tuple)):
            if len(pos) != 2:
                raise TaborError(f"trigger position must be a position name or (row, col), got {pos!r}")
            object.__setattr__(self, "position", (int(pos[0]), int(pos[1])))
        else:
            name = _POSITION_ALIASES.get(str(pos).strip().lower(), str(pos).strip().lower())
            if name not in POSITIONS:
                raise TaborError(
                    f"unknown trigger position {pos!r}; use one of {', '.join(POSITIONS)} or [row, col]"
                )
            object.__setattr__(self, "position", name)
        object.__setattr__(self, "colour", _rgb(self.colour, "colour"))
        object.__setattr__(self, "colour2", _rgb(self.colour2, "colour2"))
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "margin", int(self.margin))
        object.__setattr__(self, "seed", int(self.seed))
        if int(self.cell) < 1:
            raise TaborError(f"trigger cell must be at least 1 pixel, got {self.cell}")
        object.__setattr__(self, "cell", int(self.cell))
        if not 0.0 < float(self.alpha) <= 1.0:
            raise TaborError(f"blend alpha must be in (0, 1], got {self.alpha}")
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def icon_path(self) -> str:
        return self.icon or DEFAULT_ICON

    @property
    def blind_spot(self) -> Optional[str]:
        """Why a patch-trigger detector is not expected to find this trigger, or ``None``."""
        if self.shape == "blend":
            return "blended: a whole-image alpha blend, not a small patch"
        return None

    def box(self, image_shape) -> Tuple[int, int, int, int]:
        """``(row, col, height, width)`` of the trigger's footprint in an image of ``(H, W, ...)``."""
        if self.shape == "blend":
            return 0, 0, int(image_shape[0]), int(image_shape[1])
        row, col = self.offset(image_shape)
        return row, col, self.size, self.size

    def offset(self, image_shape) -> Tuple[int, int]:
        """Top-left ``(row, col)`` of the trigger box in an image of ``(H, W, ...)``."""
        h, w = int(image_shape[0]), int(image_shape[1])
        if self.shape == "blend":
            return 0, 0
        s, m = self.size, self.margin
        if isinstance(self.position, tuple):
            row, col = self.position
        else:
            vert, horiz = POSITIONS[self.position]
            row = {"top": m, "middle": (h - s) // 2, "bottom": h - m - s}[vert]
            col = {"left": m, "center": (w - s) // 2, "right": w - m - s}[horiz]
        if row < 0 or col < 0 or row + s > h or col + s > w:
            raise TaborError(
                f"a {s}px trigger at (row {row}, col {col}) does not fit a {h}x{w} image"
            )
        return int(row), int(col)

    def area_fraction(self, image_shape) -> float:
        """Fraction of the image's pixels inside the trigger's footprint (box), 0..1."""
        _, _, bh, bw = self.box(image_shape)
        return float(bh * bw) / float(int(image_shape[0]) * int(image_shape[1]))

    def _noise(self, h: int, w: int) -> np.ndarray:
        """Seeded random colours, one per ``cell`` x ``cell`` block: ``[h, w, 3]`` float32 0..255."""
        rng = np.random.default_rng([self.seed, 0x6E6F6973])  # own stream: differs from ``random``
        blocks = rng.integers(0, 256, (-(-h // self.cell), -(-w // self.cell), 3)).astype(np.float32)
        return np.repeat(np.repeat(blocks, self.cell, 0), self.cell, 1)[:h, :w]

    def _patch(self, channels: int):
        """The trigger box alone: mask ``[s, s]`` in [0,1], pattern ``[s, s, C]`` raw."""
        s = self.size
        mask = np.ones((s, s), np.float32)
        if self.shape == "square":
            pattern = np.broadcast_to(np.asarray(self.colour, np.float32), (s, s, 3)).copy()
        elif self.shape == "random":
            rng = np.random.default_rng(self.seed)
            pattern = rng.integers(0, 256, (s, s, 3)).astype(np.float32)
        elif self.shape == "checkerboard":
            idx = np.arange(s) // self.cell
            first = ((idx[:, None] + idx[None, :]) % 2 == 0)[..., None]
            pattern = np.where(first, np.asarray(self.colour, np.float32), np.asarray(self.colour2, np.float32))
        elif self.shape == "noise":
            pattern = self._noise(s, s)
        else:
            mask, pattern = load_icon(self.icon_path, s)
        return mask, _to_channels(pattern.astype(np.float32), channels)

    def render(self, image_shape):
        """``image_shape (H, W, C)`` -> ``(mask [H,W] float32 0..1, pattern [H,W,C] float32 0..255)``."""
        h, w = int(image_shape[0]), int(image_shape[1])
        channels = int(image_shape[2]) if len(image_shape) > 2 else 1
        if self.shape == "blend":
            return np.full((h, w), self.alpha, np.float32), _to_channels(self._noise(h, w), channels)
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
        d["colour2"] = list(self.colour2)
        if isinstance(self.position, tuple):
            d["position"] = list(self.position)
        used = _EXTRA_USED_BY.get(self.shape, ())
        for key, default in _EXTRA_DEFAULTS.items():
            if key not in used and getattr(self, key) == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TriggerSpec":
        known = {"shape", "size", "position", "margin", "colour", "icon", "seed", "colour2", "cell", "alpha"}
        unknown = set(d) - known - {"color", "color2"}
        if unknown:
            raise TaborError(
                f"unknown trigger field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        d = dict(d)
        if "color" in d:
            d["colour"] = d.pop("color")
        if "color2" in d:
            d["colour2"] = d.pop("color2")
        return cls(**d)


def _to_channels(pattern: np.ndarray, channels: int) -> np.ndarray:
    """RGB ``[..., 3]`` -> ``[..., C]``: unchanged for 3 channels, luminance for 1."""
    if channels == 3:
        return pattern
    if channels == 1:
        return (pattern @ _LUMA)[..., None]
    raise TaborError(f"triggers support 1 or 3 image channels, not {channels}")


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
