"""Victim architectures: the paper's CNNs, VGG16 / ResNet50 from ``keras.applications``, a tiny CNN.

Every builder returns an uncompiled ``keras.Model`` mapping ``[B, H, W, C]`` model-domain inputs
to ``[B, K]`` softmax probabilities (or logits with ``output="logits"``). Preprocessing is not part
of the model unless ``embed_preprocessing`` is given (then a ``Rescaling`` layer maps raw pixels
to the training domain inside the model).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import keras
from keras import layers

from ..errors import TaborError

Shape = Tuple[int, int, int]


def _conv(filters: int, padding: str = "same") -> layers.Layer:
    return layers.Conv2D(filters, 3, padding=padding, activation="relu")


def _tiny(x, num_classes: int, width: float):
    """Two small conv blocks and a dense head: trains to >90% on the synthetic signs in seconds."""
    x = _conv(max(4, int(16 * width)))(x)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(max(4, int(32 * width)))(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    return layers.Dense(max(8, int(64 * width)), activation="relu")(x)


def _gtsrb6(x, num_classes: int, width: float):
    """Neural Cleanse / TABOR GTSRB net: 6 Conv + 2 MaxPool, dense 512 (valid padding, ~375k params)."""
    w = lambda f: max(4, int(f * width))  # noqa: E731
    for filters, pool in ((32, True), (64, True), (128, False)):
        x = _conv(w(filters), "valid")(x)
        x = _conv(w(filters), "valid")(x)
        if pool:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    return layers.Dense(w(512), activation="relu")(x)


def _gtsrb10(x, num_classes: int, width: float):
    """Deeper GTSRB net of TABOR section 5: 10 Conv + 5 MaxPool (same padding), dense 256."""
    w = lambda f: max(4, int(f * width))  # noqa: E731
    for filters in (32, 64, 128, 256, 256):
        x = _conv(w(filters))(x)
        x = _conv(w(filters))(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    return layers.Dense(w(256), activation="relu")(x)


_BODIES: Dict[str, Callable] = {"tiny": _tiny, "gtsrb6": _gtsrb6, "gtsrb10": _gtsrb10}
_APPLICATIONS = ("vgg16", "resnet50")
ARCHITECTURES = tuple(_BODIES) + _APPLICATIONS


def build_model(
    arch: str,
    input_shape: Shape,
    num_classes: int,
    *,
    width: float = 1.0,
    output: str = "probabilities",
    embed_preprocessing: Optional[str] = None,
    name: Optional[str] = None,
) -> keras.Model:
    """Build an uncompiled victim classifier.

    ``arch``: one of ``ARCHITECTURES``. ``input_shape``: ``(H, W, C)``. ``width`` scales the
    filter/unit counts of the paper CNNs (demo models use < 1 to stay small). ``output``:
    ``probabilities`` (softmax last layer, like the paper's models) or ``logits``.
    ``embed_preprocessing``: ``unit`` or ``symmetric`` puts a ``Rescaling`` layer first, so the
    saved model takes raw pixels 0..255.
    """
    if arch not in ARCHITECTURES:
        raise TaborError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if output not in ("probabilities", "logits"):
        raise TaborError(f"model output must be 'probabilities' or 'logits', not {output!r}")
    activation = "softmax" if output == "probabilities" else None
    inputs = keras.Input(shape=tuple(int(v) for v in input_shape), name="image")
    x = inputs
    if embed_preprocessing:
        scale, offset = {"unit": (1 / 255.0, 0.0), "symmetric": (1 / 127.5, -1.0)}.get(
            embed_preprocessing, (None, None)
        )
        if scale is None:
            raise TaborError(f"embed_preprocessing supports 'unit' or 'symmetric', not {embed_preprocessing!r}")
        x = layers.Rescaling(scale, offset, name="preprocess")(x)
    if arch in _APPLICATIONS:
        app = keras.applications.VGG16 if arch == "vgg16" else keras.applications.ResNet50
        body = app(
            weights=None,
            include_top=True,
            input_shape=tuple(int(v) for v in input_shape),
            classes=num_classes,
            classifier_activation=activation,
            name=name or arch,
        )
        if not embed_preprocessing:
            return body  # flat model, as keras.applications builds it
        outputs = body(x)
    else:
        features = _BODIES[arch](x, num_classes, width)
        outputs = layers.Dense(num_classes, activation=activation, name="predictions")(features)
    return keras.Model(inputs, outputs, name=name or arch)
