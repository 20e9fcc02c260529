"""Turn a loaded model into a classifier view: checked shapes, a forward function and true logits."""

from __future__ import annotations

from typing import Optional

from ..errors import ModelLoadError
from .files import first_line
from .graph_logits import NoSoftmaxLogits, softmax_input_logits
from .victim import LayerInfo, log_probabilities, probe_is_probabilities

PREPROCESSING_CLASSES = frozenset({
    "Rescaling", "Normalization", "Resizing", "CenterCrop", "RandomCrop", "RandomFlip",
    "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness",
    "RandomHeight", "RandomWidth", "Solarization", "AutoContrast", "Equalization", "Grayscale",
    "RandAugment", "RandomGrayscale", "RandomColorJitter", "RandomSaturation", "RandomHue",
})
_SETTINGS = ("scale", "offset", "mean", "variance", "axis", "height", "width", "interpolation",
             "crop_to_aspect_ratio", "mode", "factor", "invert")


def check_classifier_shapes(input_shape, output_shape, where: str) -> tuple[tuple, int]:
    """Full input/output shapes (batch first) -> ((H, W, C), K); ModelLoadError for non-classifiers."""
    input_shape = tuple(input_shape)
    output_shape = tuple(output_shape)
    if len(input_shape) != 4:
        raise ModelLoadError(
            f"{where}: the model's input has shape {_fmt(input_shape)}; tabor-tf inspects image"
            " classifiers whose input is [batch, height, width, channels]"
        )
    h, w, c = input_shape[1:]
    if c not in (1, 3):
        if input_shape[1] in (1, 3):
            raise ModelLoadError(
                f"{where}: the input {_fmt(input_shape)} looks channels-first; tabor-tf needs"
                " channels-last images [batch, height, width, channels]"
            )
        raise ModelLoadError(
            f"{where}: the input has {c} channels ({_fmt(input_shape)}); tabor-tf supports"
            " 1 (grayscale) or 3 (RGB)"
        )
    if h is None or w is None:
        raise ModelLoadError(
            f"{where}: the input {_fmt(input_shape)} has no fixed height/width; tabor-tf needs a fixed image size"
        )
    if len(output_shape) != 2 or output_shape[-1] is None:
        raise ModelLoadError(
            f"{where}: the output has shape {_fmt(output_shape)}; expected one score per class, [batch, classes]"
        )
    k = int(output_shape[-1])
    if k < 2:
        raise ModelLoadError(
            f"{where}: the output has a single unit: a regression or binary model, not a"
            " classifier with one output per class"
        )
    return (int(h), int(w), int(c)), k


def check_float_input(dtype_name: str, is_float: bool, where: str) -> None:
    """ModelLoadError unless the image input is a float tensor."""
    if not is_float:
        raise ModelLoadError(f"{where}: the input dtype is {dtype_name}; tabor-tf needs a float image input")


RECOVERED_SOURCE = "pre-softmax logits recovered from the graph's Softmax op"
LOG_PROB_SOURCE = "log of the output probabilities (floored at the smallest float32 normal)"


def probed_logits(forward, shape: tuple, notes: Optional[list] = None) -> tuple:
    """(output_kind, logits_fn, logits_source) of a forward function whose final activation could
    not be split off. Probe whether it outputs probabilities; if so, take the input of the graph's
    final Softmax op (checked: its softmax must equal the output), else log p (a line is added to
    ``notes`` saying why)."""
    if not probe_is_probabilities(forward, shape):
        return "logits", forward, "model output (logits)"
    try:
        logits_fn, op_name = softmax_input_logits(forward, shape)
        _check_softmax_matches(logits_fn, forward, shape)
        return "probabilities", logits_fn, f"{RECOVERED_SOURCE} {op_name!r}"
    except NoSoftmaxLogits as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of the recovery falls back to log p
        reason = f"{type(exc).__name__}: {first_line(exc)[:200]}"
    if notes is not None:
        notes.append(f"the model outputs probabilities and its pre-softmax logits could not be recovered"
                     f" ({reason}): logits = log(p), so labels whose probability underflows float32"
                     " (p < 1.2e-38) get no gradient")
    return "probabilities", log_probabilities(forward), LOG_PROB_SOURCE


def _check_softmax_matches(logits_fn, forward, shape: tuple, seed: int = 1, atol: float = 1e-3) -> None:
    """NoSoftmaxLogits unless softmax(logits_fn(x)) == forward(x) (finite logits) on random inputs."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for scale in (1.0, 255.0):
        x = tf.constant((rng.random((4, *shape)) * scale).astype(np.float32))
        z = tf.cast(logits_fn(x), tf.float32)
        p = tf.cast(forward(x), tf.float32).numpy()
        if not np.all(np.isfinite(z.numpy())) or np.abs(tf.nn.softmax(z).numpy() - p).max() > atol:
            raise NoSoftmaxLogits("the recovered logits do not reproduce the output")


CLASSIFIER_KEYS = ("forward", "logits_fn", "input_shape", "num_classes", "output_kind", "logits_source",
                   "preprocessing_layers", "param_count", "notes")


def classifier_parts(*, forward, logits_fn, input_shape: tuple, num_classes: int, output_kind: str,
                     logits_source: str, preprocessing_layers, param_count, notes: list, **extra) -> dict:
    """The classifier view every loader returns (``CLASSIFIER_KEYS`` + loader-specific ``extra``,
    e.g. a SavedModel's ``model`` and ``format_detail``): ``Victim(**parts)`` takes it as is."""
    return {"forward": forward, "logits_fn": logits_fn, "input_shape": input_shape, "num_classes": num_classes,
            "output_kind": output_kind, "logits_source": logits_source,
            "preprocessing_layers": preprocessing_layers, "param_count": param_count, "notes": notes, **extra}


def _fmt(shape) -> str:
    return "[" + ", ".join("batch" if i == 0 and d is None else ("?" if d is None else str(d))
                           for i, d in enumerate(shape)) + "]"


def layer_info(class_name: str, name: str, config: dict) -> LayerInfo:
    settings = {}
    for key in _SETTINGS:
        if key in config and config[key] is not None:
            settings[key] = _jsonable(config[key])
    return LayerInfo(name=name, class_name=class_name, settings=settings)


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            value = value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (list, tuple)):
        flat = [_jsonable(v) for v in value]
        return flat if len(flat) <= 8 else flat[:8] + ["..."]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, (int, str, bool)):
        return value
    return str(value)


def keras_preprocessing_layers(model) -> tuple:
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        cls = type(layer).__name__
        if cls in PREPROCESSING_CLASSES:
            config = layer.get_config()
            if cls == "Normalization":  # the adapted statistics live on the layer, not the config
                for key in ("mean", "variance"):
                    value = getattr(layer, key, None)
                    if value is not None:
                        config[key] = value.numpy() if hasattr(value, "numpy") else value
            found.append(layer_info(cls, layer.name, config))
    return tuple(found)


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "") if act is not None else ""


def _split_activation(inp, out) -> Optional[tuple]:
    """(logits tensor, activation name, how) for a Keras graph ``inp -> out`` ending in a softmax
    or sigmoid, built on the same layers; None when the final op is something else."""
    import keras

    history = getattr(out, "_keras_history", None)
    if history is None:
        return None
    op, node_index = history[0], history[1]
    node = op._inbound_nodes[node_index]
    inputs = node.input_tensors
    if len(inputs) != 1:
        return None
    pre = inputs[0]
    if isinstance(op, keras.Model):
        if len(op.inputs) != 1 or len(op.outputs) != 1:
            return None
        inner = _split_activation(op.inputs[0], op.outputs[0])
        if inner is None:
            return None
        inner_model = keras.Model(op.inputs[0], inner[0])
        return inner_model(pre), inner[1], inner[2] + f" inside {op.name!r}"
    if isinstance(op, keras.layers.Softmax):
        axis = op.get_config().get("axis", -1)
        if axis not in (-1, len(out.shape) - 1, [-1]):
            return None
        return pre, "softmax", f"input of the final Softmax layer {op.name!r}"
    act = _activation_name(op)
    if act not in ("softmax", "sigmoid"):
        return None
    if isinstance(op, keras.layers.Activation):
        return pre, act, f"input of the final Activation('{act}') layer {op.name!r}"
    config = op.get_config()
    config["activation"] = "linear"
    config["name"] = f"{op.name}_logits"
    linear = type(op).from_config(config)
    logits = linear(pre)
    linear.set_weights(op.get_weights())
    linear.trainable = False
    return logits, act, f"pre-{act} output of the final layer {op.name!r} ({type(op).__name__})"


def keras_classifier(model, where: str) -> dict:
    """Frozen Keras model -> {forward, logits_fn, input_shape, num_classes, output_kind, logits_source,
    preprocessing_layers, param_count, notes}."""
    import keras

    model.trainable = False
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise ModelLoadError(f"{where}: the model has no defined input shape (never built)") from None
    if len(inputs) != 1:
        raise ModelLoadError(f"{where}: the model has {len(inputs)} inputs; tabor-tf needs one image input")
    if len(outputs) != 1:
        raise ModelLoadError(f"{where}: the model has {len(outputs)} outputs; tabor-tf needs one class-score output")
    inp, out = inputs[0], outputs[0]
    shape, k = check_classifier_shapes(inp.shape, out.shape, where)
    check_float_input(str(inp.dtype), str(inp.dtype).startswith(("float", "bfloat")), where)
    view = keras.Model(inp, out)
    view.trainable = False

    def forward(x):
        return view(x, training=False)

    notes = []
    try:
        split = _split_activation(inp, out)
    except Exception as exc:  # noqa: BLE001 - an unusual final layer: fall back to probing
        split = None
        notes.append(f"could not split off the final activation ({type(exc).__name__}); probing the output")
    if split is not None:
        logits_model = keras.Model(inp, split[0])
        logits_model.trainable = False

        def logits_fn(x):
            return logits_model(x, training=False)

        kind = "probabilities" if split[1] == "softmax" else "logits"
        source = split[2]
        if split[1] == "sigmoid":
            notes.append("final sigmoid: its pre-sigmoid values are scanned as logits (same ranking)")
    else:
        kind, logits_fn, source = probed_logits(forward, shape, notes)
    return classifier_parts(forward=forward, logits_fn=logits_fn, input_shape=shape, num_classes=k, output_kind=kind,
                            logits_source=source, preprocessing_layers=keras_preprocessing_layers(model),
                            param_count=int(model.count_params()), notes=notes)
