"""``Victim``: the frozen model under inspection, seen as ``x (model domain) -> logits [B, K]``.

``Victim.logits`` is a pure TensorFlow function of its input (no numpy, no Python side effects),
so it can be called inside ``tf.function`` and in a ``tf.distribute`` replica context, and
gradients flow to ``x``. ``softmax(logits(x))`` equals the model's probabilities:

* logits models: the output itself;
* Keras models ending in a softmax (``Dense(activation="softmax")``, ``Softmax``,
  ``Activation("softmax")``): the exact pre-softmax values, from a functional view of the same
  layers that stops before the softmax (the final layer's weights are shared by a linear copy);
* other outputs ending in a ``Softmax`` op (SavedModels, ``keras.ops.softmax``): the input of
  that op, recovered from the frozen graph (``graph_logits``);
* probability outputs whose softmax cannot be found: ``log(max(p, PROB_FLOOR))`` with a backward
  pass that stays finite (``log_probabilities``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import TaborError
from ..preprocess import preprocess as _preprocess
from ..preprocess import resolve_mode

# The smallest normal float32 (1.18e-38): log(p) keeps an exact gradient down to it; a fixed floor
# such as 1e-12 would zero the gradient of every label a confident model gives p < 1e-12.
PROB_FLOOR = float(np.finfo(np.float32).tiny)
# Bound on d log(p) / dp in the backward pass (1 / PROB_FLOOR = 8.5e37 is close to float32 max).
_GRAD_CAP = 1e37


@dataclass(frozen=True)
class LayerInfo:
    """A preprocessing layer found inside the model."""

    name: str
    class_name: str
    settings: dict

    def __str__(self) -> str:
        parts = ", ".join(f"{k}={_short(v)}" for k, v in self.settings.items())
        return f"{self.class_name}({parts})" + (f" '{self.name}'" if self.name else "")

    def to_dict(self) -> dict:
        return {"name": self.name, "class_name": self.class_name, "settings": self.settings}


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


class Victim:
    """The loaded model, frozen. Build it with ``tabor_tf.loading.load_victim``.

    Attributes: ``path``, ``format`` ("keras", "keras3-h5", "keras2-h5", "savedmodel",
    "tf-serving"), ``format_detail``, ``input_shape`` (H, W, C), ``num_classes``,
    ``output_kind`` ("logits"/"probabilities"), ``logits_source``, ``sha256``,
    ``preprocessing_layers`` (tuple of ``LayerInfo``; ``None`` when the format cannot tell),
    ``param_count``, ``version`` (TF Serving version or None), ``notes``, ``model`` (the Keras
    model or the loaded SavedModel object).
    """

    def __init__(
        self,
        *,
        model,
        forward: Callable,
        logits_fn: Callable,
        path: str,
        format: str,
        format_detail: str,
        input_shape: tuple,
        num_classes: int,
        output_kind: str,
        logits_source: str,
        sha256: str,
        preprocessing_layers: Optional[tuple],
        param_count: Optional[int],
        version: Optional[int] = None,
        notes: tuple = (),
    ):
        self.model = model
        self._forward = forward
        self._logits_fn = logits_fn
        self.path = path
        self.format = format
        self.format_detail = format_detail
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.output_kind = output_kind
        self.logits_source = logits_source
        self.sha256 = sha256
        self.preprocessing_layers = preprocessing_layers
        self.param_count = param_count
        self.version = version
        self.notes = tuple(notes)
        self._predict_fn = None

    @property
    def channels(self) -> int:
        return self.input_shape[-1]

    def logits(self, x):
        """``x`` [B, H, W, C] in the model's input domain -> float32 logits [B, K]."""
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
        return tf.cast(self._logits_fn(x), tf.float32)

    def probabilities(self, x):
        """``x`` [B, H, W, C] in the model's input domain -> float32 class probabilities [B, K]."""
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
        if self.output_kind == "probabilities":
            return tf.cast(self._forward(x), tf.float32)
        return tf.nn.softmax(tf.cast(self._logits_fn(x), tf.float32), axis=-1)

    def predict_raw(self, x_raw: np.ndarray, preprocess: str = "raw", batch_size: int = 256) -> np.ndarray:
        """Raw pixels [N, H, W, C] 0..255 -> predicted labels [N] int64, after ``preprocess``."""
        import tensorflow as tf

        mode = resolve_mode(preprocess)
        if mode == "auto":
            raise TaborError("predict_raw needs a concrete preprocessing mode, not 'auto'")
        if self._predict_fn is None:
            spec = tf.TensorSpec([None, *self.input_shape], tf.float32)
            self._predict_fn = tf.function(lambda x: tf.argmax(self._forward(x), axis=-1), input_signature=[spec])
        x_raw = np.asarray(x_raw)
        out = np.empty(len(x_raw), dtype=np.int64)
        for start in range(0, len(x_raw), max(1, int(batch_size))):
            batch = x_raw[start:start + batch_size].astype(np.float32)
            out[start:start + len(batch)] = self._predict_fn(tf.constant(_preprocess(batch, mode))).numpy()
        return out

    def describe(self) -> dict:
        """JSON-ready description (for ``info`` and reports)."""
        return {
            "path": self.path,
            "format": self.format,
            "format_detail": self.format_detail,
            "version": self.version,
            "input_shape": list(self.input_shape),
            "channels": self.channels,
            "num_classes": self.num_classes,
            "output_kind": self.output_kind,
            "logits_source": self.logits_source,
            "preprocessing_layers": None if self.preprocessing_layers is None
            else [p.to_dict() for p in self.preprocessing_layers],
            "param_count": self.param_count,
            "sha256": self.sha256,
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        return (f"Victim({self.format}, input={self.input_shape}, classes={self.num_classes},"
                f" output={self.output_kind}, path={self.path!r})")


def probe_is_probabilities(forward: Callable, input_shape: tuple, seed: int = 0) -> bool:
    """Rows of the output on random inputs are non-negative and sum to 1 -> probabilities."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for scale in (1.0, 255.0):
        x = (rng.random((4, *input_shape)) * scale).astype(np.float32)
        y = forward(tf.constant(x)).numpy().astype(np.float64)
        if not np.all(np.isfinite(y)) or y.min() < -1e-6 or not np.allclose(y.sum(axis=-1), 1.0, atol=1e-3):
            return False
    return True


def log_probabilities(forward: Callable) -> Callable:
    """``x -> log(max(p, PROB_FLOOR))``: logits [B, K] whose softmax is ``p = forward(x)`` (rows sum
    to 1). Backward: ``g / max(p, PROB_FLOOR)`` capped at ``_GRAD_CAP``, finite even where p == 0, so
    every label with p above the floor gets its true gradient (that of the model's own logits)."""
    import tensorflow as tf

    @tf.custom_gradient
    def safe_log(p):
        q = tf.maximum(p, PROB_FLOOR)

        def grad(g):
            return tf.clip_by_value(g / q, -_GRAD_CAP, _GRAD_CAP)

        return tf.math.log(q), grad

    def logits_fn(x):
        return safe_log(tf.cast(forward(x), tf.float32))

    return logits_fn
