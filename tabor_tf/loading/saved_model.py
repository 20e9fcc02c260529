"""TensorFlow SavedModel directories (``tf.saved_model.save``, ``keras.Model.export``, tf.keras
``model.save('dir')``) seen through their ``serving_default`` (or ``serve``) signature.

Loading a SavedModel runs no Python stored in it (see ``model_safety``); the graph is checked for
file-system ops first, and the checkpoint's declared tensor sizes against the bytes on disk.
Gradients flow through the restored signature function to its input. A signature that outputs
probabilities is scanned on the input of its final Softmax op, recovered from the frozen graph
(``graph_logits``); log(p) only when that op cannot be found.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError, UnsafeModelError
from . import model_safety
from .classifier import (PREPROCESSING_CLASSES, check_classifier_shapes, check_float_input, classifier_parts,
                         layer_info, probed_logits)
from .files import check_declared_bytes, first_line
from .keras_files import UNSAFE_HINT

_SKIPPED_VARIABLES = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "OPTIMIZER_SLOT", "optimizer")


def read_saved_model_proto(directory: Path):
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    pb, pbtxt = directory / "saved_model.pb", directory / "saved_model.pbtxt"
    try:
        if pb.is_file():
            proto.ParseFromString(pb.read_bytes())
        else:
            text_format.Parse(pbtxt.read_text(encoding="utf-8"), proto)
    except (DecodeError, text_format.ParseError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{directory}: unreadable saved_model.pb ({first_line(exc)})") from None
    if not proto.meta_graphs:
        raise ModelLoadError(f"{directory}: saved_model.pb holds no graph (truncated or corrupt)")
    return proto


def _checkpoint_stats(directory: Path) -> tuple[int, int]:
    """(parameter count, declared bytes) from the variables checkpoint index; refuses absurd sizes."""
    import numpy as np
    import tensorflow as tf

    prefix = directory / "variables" / "variables"
    if not (directory / "variables" / "variables.index").is_file():
        return 0, 0
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as exc:  # noqa: BLE001 - corrupt index
        raise ModelLoadError(f"{directory}: unreadable variables checkpoint ({first_line(exc)})") from None
    params, declared = 0, 0
    for name, shape in shapes.items():
        count = int(np.prod(shape, dtype=object)) if shape else 1
        size = dtypes[name].size if dtypes[name].size else 1
        declared += count * size
        if not any(s in name for s in _SKIPPED_VARIABLES):
            params += count
    on_disk = sum(p.stat().st_size for p in (directory / "variables").glob("variables.data-*"))
    check_declared_bytes(declared, on_disk, f"{directory} (variables)")
    return params, declared


def _keras_metadata(directory: Path) -> list | None:
    path = directory / "keras_metadata.pb"
    if not path.is_file() or path.stat().st_size > 256 * 2**20:
        return None
    return model_safety.keras_metadata_layers(path.read_bytes())


def _signature(loaded, where: str):
    sigs = getattr(loaded, "signatures", {}) or {}
    for key in ("serving_default", "serve"):
        if key in sigs:
            return key, sigs[key]
    if len(sigs) == 1:
        return next(iter(sigs.items()))
    if not sigs:
        raise ModelLoadError(f"{where}: the SavedModel has no serving signature (serving_default/serve)")
    raise ModelLoadError(
        f"{where}: the SavedModel has several signatures ({', '.join(sorted(sigs))}) and no serving_default"
    )


def saved_model_classifier(directory: Path, allow_unsafe: bool) -> dict:
    """SavedModel directory -> ``classifier_parts`` (as ``keras_classifier``) + ``model``, ``format_detail``."""
    import tensorflow as tf

    where = str(directory)
    proto = read_saved_model_proto(directory)
    notes = []
    unsafe = model_safety.find_unsafe_graph_ops(proto)
    if unsafe and not allow_unsafe:
        raise UnsafeModelError(f"{where}: {model_safety.describe_unsafe(unsafe)}. {UNSAFE_HINT}")
    if unsafe:
        notes.append(f"unsafe graph ops allowed: {model_safety.describe_unsafe(unsafe)}")
    params, _ = _checkpoint_stats(directory)
    meta_layers = _keras_metadata(directory)
    try:
        loaded = tf.saved_model.load(str(directory))
    except Exception as exc:  # noqa: BLE001 - TF raises many types for broken directories
        raise ModelLoadError(f"{where}: cannot load the SavedModel ({first_line(exc)})") from None
    sig_name, sig = _signature(loaded, where)
    args, kwargs = sig.structured_input_signature
    specs = list(tf.nest.flatten((args, kwargs)))
    if len(specs) != 1:
        raise ModelLoadError(f"{where}: signature {sig_name!r} takes {len(specs)} inputs; tabor-tf needs one image input")
    outputs = sig.structured_outputs
    out_items = list(outputs.items()) if isinstance(outputs, dict) else [(None, outputs)]
    if len(out_items) != 1:
        raise ModelLoadError(
            f"{where}: signature {sig_name!r} has {len(out_items)} outputs"
            f" ({', '.join(str(k) for k, _ in out_items)}); tabor-tf needs one class-score output"
        )
    spec = specs[0]
    out_key, out_spec = out_items[0]
    shape, k = check_classifier_shapes(spec.shape.as_list(), out_spec.shape.as_list(), where)
    check_float_input(spec.dtype.name, spec.dtype.is_floating, where)
    in_name = next(iter(kwargs)) if kwargs else None

    def forward(x):
        x = tf.cast(x, spec.dtype)
        result = sig(**{in_name: x}) if in_name is not None else sig(x)
        return result[out_key] if out_key is not None else result

    kind, logits_fn, source = probed_logits(forward, shape, notes)
    preprocessing = None
    if meta_layers is not None:
        preprocessing = tuple(
            layer_info(m["class_name"], str(m.get("name", "")), m.get("config") or {})
            for m in meta_layers if m.get("class_name") in PREPROCESSING_CLASSES
        )
        lambdas = [m.get("name", "?") for m in meta_layers if m.get("class_name") == "Lambda"]
        if lambdas:
            notes.append(
                f"Lambda layer(s) {', '.join(map(str, lambdas))} were saved as graph ops; no Python is run"
            )
    notes.append(f"signature {sig_name!r}")
    try:  # the variables the serving function actually captures (checkpoints can list them twice)
        params = sum(int(v.shape.num_elements() or 0) for v in sig.variables) or params
    except Exception:  # noqa: BLE001 - fall back to the checkpoint count
        pass
    return classifier_parts(forward=forward, logits_fn=logits_fn, input_shape=shape, num_classes=k, output_kind=kind,
                            logits_source=source, preprocessing_layers=preprocessing, param_count=params or None,
                            notes=notes, model=loaded,
                            format_detail="TensorFlow SavedModel"
                            + (" (tf.keras metadata)" if meta_layers is not None else ""))

