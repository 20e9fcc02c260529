"""Map raw pixels (0..255, RGB) to the model's input domain and back.

All functions take and return arrays/tensors of shape ``[..., H, W, C]``. The same code runs on
numpy arrays and TF tensors (arithmetic and a channel flip only, so gradients flow).

Named modes (Neural Cleanse's names in brackets):
    raw        identity (NC ``raw``, their GTSRB models)
    unit       x / 255                        (NC ``mnist``)
    symmetric  x / 127.5 - 1                  (NC ``inception``: (x/255 - 0.5) * 2)
    imagenet   RGB -> BGR, minus the Caffe means [103.939, 116.779, 123.68] (NC ``imagenet``)
    bgr        RGB -> BGR, raw 0..255
    bgr-unit   RGB -> BGR, / 255

Custom modes (keys separated by ``,`` or ``;``; each key takes 1 value for every channel or 3,
one per channel in the MODEL's channel order, i.e. B,G,R after ``order=bgr``):
    mean=M1,M2,M3,std=S1,S2,S3   (x/255 - mean) / std, torchvision style (values in 0..1 units).
                                 If any mean or std value is above 1, all of them are in pixel
                                 units (0..255): (x - mean) / std. Either key may be left out
                                 (mean 0, std 1).
    scale=S,offset=O             x * scale + offset on raw 0..255 pixels (scale 1, offset 0 when
                                 left out; scale must not be 0).
    order=bgr                    optional with either: flip RGB -> BGR first.
A custom mode resolves to a canonical string (``mean=0.485,0.456,0.406;std=0.229,0.224,0.225``,
``scale=0.0078431;offset=-1``) that ``resolve_mode`` maps to itself, so it can be stored in
reports and passed to worker processes. ``auto`` (``input_check``) only tries ``MODES``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from .errors import DataError, TaborError

MODES = ("raw", "unit", "symmetric", "imagenet")  # the built-in modes --preprocess auto tries
NAMED_MODES = MODES + ("bgr", "bgr-unit")
ALIASES = {"mnist": "unit", "inception": "symmetric", "none": "raw", "identity": "raw"}
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
CUSTOM_KEYS = ("mean", "std", "scale", "offset", "order")
CUSTOM_HELP = "mean=R,G,B,std=R,G,B or scale=S,offset=O (optionally with order=bgr)"


@dataclass(frozen=True)
class CustomMode:
    """A parsed custom mode: model input = ``flip(x_raw) * scale + offset`` per channel.

    ``scale``/``offset``: 1 value (every channel) or one per channel (model's channel order),
    applied to raw 0..255 pixels; ``bgr``: flip RGB -> BGR first; ``text``: the canonical string.
    """

    text: str
    scale: tuple
    offset: tuple
    bgr: bool = False

    @property
    def values_per_key(self) -> int:
        return max(len(self.scale), len(self.offset))


def resolve_mode(name: str) -> str:
    """The canonical mode for ``name``: a named mode (aliases accepted), ``auto``, or a custom
    mode's canonical string; ``TaborError`` naming the problem otherwise."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in NAMED_MODES or key == "auto":
        return key
    if "=" in key:
        return parse_custom(key).text
    raise TaborError(
        f"unknown preprocessing mode {name!r}; choose one of {', '.join(NAMED_MODES + ('auto',))}"
        f" (aliases: {', '.join(sorted(ALIASES))}), or a custom mode {CUSTOM_HELP}"
    )


def is_custom(mode: str) -> bool:
    """True for a custom (``key=value``) mode."""
    return "=" in str(mode)


def _fmt(value: float) -> str:
    """Shortest text that reads back as the same float (``-1`` rather than ``-1.0``)."""
    value = float(value)
    if value == 0:
        return "0"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


@functools.lru_cache(maxsize=64)
def parse_custom(text: str) -> CustomMode:
    """``"mean=0.485,0.456,0.406,std=0.229,0.224,0.225"`` (see the module doc) -> ``CustomMode``."""
    where = f"preprocessing mode {text!r}"
    fields: dict = {}
    current = None
    for token in re.split(r"[,;]", re.sub(r"[\[\]()]", "", str(text).strip().lower())):
        token = token.strip()
        if "=" in token:
            current, token = (part.strip() for part in token.split("=", 1))
            if current not in CUSTOM_KEYS:
                raise TaborError(f"{where}: unknown key {current!r}; custom modes take {CUSTOM_HELP}")
            if current in fields:
                raise TaborError(f"{where}: {current} is given twice")
            fields[current] = []
        elif current is None and token:
            raise TaborError(f"{where}: value {token!r} comes before any key; write KEY=V1,V2,... ({CUSTOM_HELP})")
        if token:
            fields[current].append(token)
    for key, values in fields.items():
        if not values:
            raise TaborError(f"{where}: {key} has no value")
    bgr = False
    if "order" in fields:
        if fields["order"] not in (["rgb"], ["bgr"]):
            raise TaborError(f"{where}: order takes rgb or bgr, got {','.join(fields['order'])!r}")
        bgr = fields.pop("order") == ["bgr"]
    numbers = {}
    for key, values in fields.items():
        if len(values) not in (1, 3):
            raise TaborError(f"{where}: {key} takes 1 value (every channel) or 3 (one per channel),"
                             f" got {len(values)}")
        try:
            numbers[key] = [float(v) for v in values]
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            raise TaborError(f"{where}: {key} value {bad!r} is not a number") from None
        if not all(np.isfinite(numbers[key])):
            raise TaborError(f"{where}: {key} values must be finite numbers")
    if {"mean", "std"} & set(numbers) and {"scale", "offset"} & set(numbers):
        raise TaborError(f"{where}: give mean/std or scale/offset, not both")
    if not numbers:
        raise TaborError(f"{where}: needs mean/std or scale/offset values (order=bgr alone is the 'bgr' mode)")
    order = ";order=bgr" if bgr else ""
    if "mean" in numbers or "std" in numbers:
        mean, std = numbers.get("mean", [0.0]), numbers.get("std", [1.0])
        if min(std) <= 0:
            raise TaborError(f"{where}: std values must be > 0, got {_fmt(min(std))}")
        unit = 1.0 if max(mean + std) > 1 else 255.0  # values above 1: pixel units
        width = max(len(mean), len(std))
        canonical = f"mean={','.join(map(_fmt, mean))};std={','.join(map(_fmt, std))}"
        mean, std = mean * (width // len(mean)), std * (width // len(std))  # 1 value -> every channel
        return CustomMode(canonical + order, tuple(1.0 / (unit * s) for s in std),
                          tuple(-m / s for m, s in zip(mean, std)), bgr)
    scale, offset = numbers.get("scale", [1.0]), numbers.get("offset", [0.0])
    if any(s == 0 for s in scale):
        raise TaborError(f"{where}: scale must not be 0 (the mapping has to be invertible)")
    canonical = f"scale={','.join(map(_fmt, scale))};offset={','.join(map(_fmt, offset))}"
    return CustomMode(canonical + order, tuple(scale), tuple(offset), bgr)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_channels(mode: str, channels: int) -> None:
    """``DataError`` when a custom ``mode`` has one value per channel for a different channel count."""
    mode = resolve_mode(mode)
    if not is_custom(mode) or channels is None:
        return
    n, c = parse_custom(mode).values_per_key, int(channels)
    if n > 1 and n != c:
        wanted = "one value" if c == 1 else f"1 or {c} values"
        raise DataError(f"preprocessing mode {mode!r} has {n} values per key but the images have {c}"
                        f" channel{'s' if c != 1 else ''}; give {wanted} per key")


def _flip_channels(x):
    """Reverse the last axis (RGB <-> BGR) for numpy arrays and TF tensors alike."""
    if isinstance(x, np.ndarray):
        return x[..., ::-1]
    import tensorflow as tf

    return tf.reverse(x, axis=[-1])


def _flip3(x):
    """Flip RGB <-> BGR when there are 3 channels (grayscale / other counts are left alone)."""
    return _flip_channels(x) if x.shape[-1] == 3 else x


def _mean(x):
    channels = x.shape[-1]
    if channels == 3:
        return np.asarray(CAFFE_BGR_MEAN, dtype=np.float32)
    return np.float32(np.mean(CAFFE_BGR_MEAN))


def _affine(x, mode: str):
    """(x as float, scale, offset, bgr) for a custom mode; constants in ``x``'s float dtype."""
    custom = parse_custom(mode)
    check_channels(mode, x.shape[-1])
    if isinstance(x, np.ndarray):
        x = x if x.dtype.kind == "f" else x.astype(np.float32)
        dtype = x.dtype
        return x, np.asarray(custom.scale, dtype), np.asarray(custom.offset, dtype), custom.bgr
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    return x, tf.constant(custom.scale, x.dtype), tf.constant(custom.offset, x.dtype), custom.bgr


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
        return _flip3(x_raw) - _mean(x_raw)
    if mode == "bgr":
        return _flip3(x_raw)
    if mode == "bgr-unit":
        return _flip3(x_raw) / 255.0
    if is_custom(mode):
        x, scale, offset, bgr = _affine(x_raw, mode)
        return (_flip3(x) if bgr else x) * scale + offset
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
        return _flip3(x + _mean(x))
    if mode == "bgr":
        return _flip3(x)
    if mode == "bgr-unit":
        return _flip3(x * 255.0)
    if is_custom(mode):
        y, scale, offset, bgr = _affine(x, mode)
        y = (y - offset) / scale
        return _flip3(y) if bgr else y
    raise TaborError(f"preprocessing mode {mode!r} must be resolved before use")
