"""Victim architectures: the paper's CNNs, VGG16 / ResNet50 from ``keras.applications``, a tiny CNN,
a small residual net and a small MobileNet-style (depthwise separable) net.

Every builder returns an uncompiled ``keras.Model`` mapping ``[B, H, W, C]`` model-domain inputs
to ``[B, K]`` softmax probabilities (or logits with ``output="logits"``). Preprocessing is not part
of the model unless ``embed_preprocessing`` is given (then a ``Rescaling`` layer maps raw pixels
to the training domain inside the model). ``batchnorm`` / ``dropout`` override an architecture's
own choice (BatchNorm after every conv; dropout before the classifier head).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import keras
from keras import layers

from ..errors import TaborError

Shape = Tuple[int, int, int]


def _conv(filters: int, padding: str = "same", batchnorm: bool = False, strides: int = 1):
    """3x3 conv + ReLU (conv -> BatchNorm -> ReLU with ``batchnorm``), as a callable on a tensor."""
    if not batchnorm:
        return layers.Conv2D(filters, 3, strides=strides, padding=padding, activation="relu")

    def apply(x):
        x = layers.Conv2D(filters, 3, strides=strides, padding=padding, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x)

    return apply


def _head(x, units: int, dropout: float):
    """Optional dropout, then a ReLU dense layer of ``units`` (0: none)."""
    if dropout:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(units, activation="relu")(x) if units else x


def _tiny(x, num_classes: int, width: float, batchnorm=None, dropout=None):
    """Two small conv blocks and a dense head: trains to >90% on the synthetic signs in seconds."""
    bn = bool(batchnorm)
    x = _conv(max(4, int(16 * width)), batchnorm=bn)(x)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(max(4, int(32 * width)), batchnorm=bn)(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    return _head(x, max(8, int(64 * width)), dropout or 0.0)


def _gtsrb6(x, num_classes: int, width: float, batchnorm=None, dropout=None):
    """Neural Cleanse / TABOR GTSRB net: 6 Conv + 2 MaxPool, dense 512 (valid padding, ~375k params
    at 32x32; needs inputs of at least 30x30 pixels)."""
    w = lambda f: max(4, int(f * width))  # noqa: E731
    bn = bool(batchnorm)
    for filters, pool in ((32, True), (64, True), (128, False)):
        x = _conv(w(filters), "valid", bn)(x)
        x = _conv(w(filters), "valid", bn)(x)
        if pool:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    return _head(x, w(512), 0.3 if dropout is None else dropout)


def _gtsrb10(x, num_classes: int, width: float, batchnorm=None, dropout=None):
    """Deeper GTSRB net of TABOR section 5: 10 Conv + 5 MaxPool (same padding), dense 256."""
    w = lambda f: max(4, int(f * width))  # noqa: E731
    bn = bool(batchnorm)
    for filters in (32, 64, 128, 256, 256):
        x = _conv(w(filters), batchnorm=bn)(x)
        x = _conv(w(filters), batchnorm=bn)(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    return _head(x, w(256), 0.3 if dropout is None else dropout)


def _resnet_small(x, num_classes: int, width: float, batchnorm=None, dropout=None):
    """Small residual net (ResNet-8-like): 3x3 stem, three residual blocks of two 3x3 convs with
    16/32/64 filters (the last two stride 2, 1x1 projection shortcuts), global average pooling.
    BatchNorm by default."""
    w = lambda f: max(4, int(f * width))  # noqa: E731
    bn = True if batchnorm is None else bool(batchnorm)
    x = _conv(w(16), batchnorm=bn)(x)
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        shortcut = x
        y = _conv(w(filters), batchnorm=bn, strides=stride)(x)
        y = layers.Conv2D(w(filters), 3, padding="same", use_bias=not bn)(y)
        if bn:
            y = layers.BatchNormalization()(y)
        if stride != 1 or shortcut.shape[-1] != w(filters):
            shortcut = layers.Conv2D(w(filters), 1, strides=stride, use_bias=not bn)(shortcut)
            if bn:
                shortcut = layers.BatchNormalization()(shortcut)
        x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return _head(x, 0, dropout or 0.0)


def _mobilenet_small(x, num_classes: int, width: float, batchnorm=None, dropout=None):
    """Small MobileNet-v1-style net: 3x3 stem (32), then six depthwise separable blocks
    (3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU) of 64, 64/2, 128, 128/2, 256,
    256/2 filters (/2: stride 2), global average pooling. BatchNorm by default."""
    w = lambda f: max(4, int(f * width))  # noqa: E731
    bn = True if batchnorm is None else bool(batchnorm)
    x = _conv(w(32), batchnorm=bn)(x)
    for filters, stride in ((64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2)):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=not bn)(x)
        if bn:
            x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(w(filters), 1, use_bias=not bn)(x)
        if bn:
            x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return _head(x, 0, dropout or 0.0)


_BODIES: Dict[str, Callable] = {
    "tiny": _tiny, "gtsrb6": _gtsrb6, "gtsrb10": _gtsrb10,
    "resnet_small": _resnet_small, "mobilenet_small": _mobilenet_small,
}
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
    batchnorm: Optional[bool] = None,
    dropout: Optional[float] = None,
) -> keras.Model:
    """Build an uncompiled victim classifier.

    ``arch``: one of ``ARCHITECTURES``. ``input_shape``: ``(H, W, C)``. ``width`` scales the
    filter/unit counts of the paper CNNs (demo models use < 1 to stay small). ``output``:
    ``probabilities`` (softmax last layer, like the paper's models) or ``logits``.
    ``embed_preprocessing``: ``unit`` or ``symmetric`` puts a ``Rescaling`` layer first, so the
    saved model takes raw pixels 0..255. ``batchnorm`` (bool) / ``dropout`` (rate in [0, 1)):
    ``None`` keeps the architecture's own choice (BatchNorm: only ``resnet_small`` and
    ``mobilenet_small``; dropout 0.3 before the dense head of ``gtsrb6`` / ``gtsrb10``, none
    elsewhere); not available for the ``keras.applications`` models.
    """
    if arch not in ARCHITECTURES:
        raise TaborError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if output not in ("probabilities", "logits"):
        raise TaborError(f"model output must be 'probabilities' or 'logits', not {output!r}")
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise TaborError(f"dropout must be in [0, 1), got {dropout}")
    if arch in _APPLICATIONS and (batchnorm is not None or dropout is not None):
        raise TaborError(f"{arch} (keras.applications) does not take the batchnorm / dropout options")
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
        features = _BODIES[arch](x, num_classes, width, batchnorm, dropout)
        outputs = layers.Dense(num_classes, activation=activation, name="predictions")(features)
    return keras.Model(inputs, outputs, name=name or arch)
