"""Static checks on a model file *before* anything in it is deserialised.

Nothing here imports user code or runs the model: configs are read as JSON and SavedModel graphs
as protocol buffers.

* Keras configs (``.keras`` ``config.json``, ``.h5`` ``model_config``): a ``Lambda`` layer carries
  Python bytecode (or names an importable function) that Keras would run while rebuilding the
  model; a class that is not a built-in Keras layer needs user code (a custom object). Both are
  refused unless the user explicitly allows unsafe deserialisation.
* SavedModels hold TensorFlow graphs, not Python: ``tf.saved_model.load`` rebuilds functions from
  ``GraphDef`` protos and restores variables from the checkpoint, so no Python stored in the
  directory can run (a Keras ``Lambda`` survives only as the graph ops it traced). A graph can
  still touch the file system through ops such as ``WriteFile``; those ops are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

# tf.keras (Keras 2) layer classes that record raw TensorFlow ops by name. They hold no bytecode,
# but Keras 3 cannot rebuild them.
TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda", "TensorFlowOpLayer")
# Built-in Keras 2 layers that Keras 3 removed: not custom code, but not loadable either.
KERAS2_ONLY_LAYERS = ("ThresholdedReLU", "LocallyConnected1D", "LocallyConnected2D", "CuDNNLSTM", "CuDNNGRU",
                      "DenseFeatures", "SequenceFeatures", "RandomFourierFeatures")
# Built-in layers that read other files named in the config.
EXTERNAL_FILE_LAYERS = ("TFSMLayer",)
MODEL_CLASSES = ("Sequential", "Functional", "Model")
# Graph ops that read or write files or call back into Python: never needed for inference.
UNSAFE_GRAPH_OPS = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary", "WriteImageSummary",
    "WriteRawProtoSummary", "WriteHistogramSummary", "WriteAudioSummary", "WriteGraphSummary",
    "ImportEvent", "DebugIdentityV2", "DebugIdentityV3",
})
# The checkpoint save/restore functions every TF2 SavedModel carries (they use SaveV2/RestoreV2).
_SAVER_FUNCTION_PREFIXES = ("__inference__traced_save", "__inference__traced_restore")


@dataclass(frozen=True)
class UnsafeItem:
    """One thing that would run code stored in the file (or outside it)."""

    layer: str  # layer name (or function / node name)
    class_name: str
    reason: str

    def describe(self) -> str:
        return f"layer {self.layer!r} ({self.class_name}): {self.reason}"


_BUILTIN_LAYERS: Optional[frozenset] = None


def builtin_layer_names() -> frozenset:
    """Class names of every layer Keras 3 ships (plus the model classes)."""
    global _BUILTIN_LAYERS
    if _BUILTIN_LAYERS is None:
        import keras

        names = set(MODEL_CLASSES)
        for name in dir(keras.layers):
            obj = getattr(keras.layers, name)
            if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
                names.add(name)
                names.add(obj.__name__)
        _BUILTIN_LAYERS = frozenset(names)
    return _BUILTIN_LAYERS


def iter_layer_configs(config) -> Iterator[dict]:
    """Every layer entry ``{"class_name", "config", ...}`` in a Keras model config, nested models included.

    Accepts Keras 3 and Keras 2 configs, including Keras 2.2's Sequential whose config is a plain
    list of layers.
    """
    if isinstance(config, list):
        for item in config:
            yield from iter_layer_configs(item)
        return
    if not isinstance(config, dict) or "class_name" not in config:
        return
    yield config
    inner = config.get("config")
    layers = inner if isinstance(inner, list) else inner.get("layers") if isinstance(inner, dict) else None
    if isinstance(layers, list):
        for layer in layers:
            yield from iter_layer_configs(layer)
    if isinstance(inner, dict):
        for key in ("layer", "forward_layer", "backward_layer"):  # wrappers: TimeDistributed, Bidirectional
            if isinstance(inner.get(key), dict):
                yield from iter_layer_configs(inner[key])


def _iter_objects(node) -> Iterator[dict]:
    """Every dict with a ``class_name`` anywhere in a config (layers, initializers, activations...)."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _iter_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _iter_objects(value)


def _layer_name(entry: dict) -> str:
    inner = entry.get("config")
    if isinstance(inner, dict) and inner.get("name"):
        return str(inner["name"])
    return str(entry.get("name") or "?")


def _is_custom_module(module) -> bool:
    return isinstance(module, str) and module != "builtins" and not module.startswith(("keras", "tf_keras"))


def find_unsafe_layers(config) -> list[UnsafeItem]:
    """Lambda layers, custom classes and serialised Python functions found in a Keras model config."""
    builtin = builtin_layer_names()
    found: list[UnsafeItem] = []
    for entry in iter_layer_configs(config):
        cls = str(entry.get("class_name"))
        name = _layer_name(entry)
        if cls == "Lambda":
            found.append(UnsafeItem(name, cls, "stores Python code that loading would execute"))
        elif cls in TF_OP_LAYERS or cls in KERAS2_ONLY_LAYERS:
            continue  # reported by ``find_unsupported_layers``; no code in it
        elif cls in EXTERNAL_FILE_LAYERS:
            found.append(UnsafeItem(name, cls, "loads another model from a path outside the file"))
        elif cls not in builtin or _is_custom_module(entry.get("module")) or ">" in str(
            entry.get("registered_name") or ""
        ):
            found.append(UnsafeItem(name, cls, "is not a built-in Keras layer (custom object needing user code)"))
    layer_entries = {id(e) for e in iter_layer_configs(config)}
    for obj in _iter_objects(config):
        if id(obj) in layer_entries:
            continue
        cls = str(obj.get("class_name"))
        if cls == "__lambda__":
            found.append(UnsafeItem("?", "lambda function", "a serialised Python lambda (bytecode)"))
        elif _is_custom_module(obj.get("module")) or ">" in str(obj.get("registered_name") or ""):
            found.append(UnsafeItem("?", cls, f"custom object from module {obj.get('module')!r}"))
    return found


def find_unsupported_layers(config) -> list[UnsafeItem]:
    """tf.keras raw-op layers (``TFOpLambda``...) and Keras 2 layers that Keras 3 cannot rebuild."""
    found = []
    for e in iter_layer_configs(config):
        cls = e.get("class_name")
        if cls in TF_OP_LAYERS:
            found.append(UnsafeItem(_layer_name(e), cls, "a raw TensorFlow op recorded by tf.keras"))
        elif cls in KERAS2_ONLY_LAYERS:
            found.append(UnsafeItem(_layer_name(e), cls, "a Keras 2 layer that Keras 3 no longer has"))
    return found


def describe_unsafe(items: Iterable[UnsafeItem], limit: int = 3) -> str:
    items = list(items)
    text = "; ".join(i.describe() for i in items[:limit])
    if len(items) > limit:
        text += f"; and {len(items) - limit} more"
    return text


def parse_json_config(raw):
    """``raw`` (bytes/str JSON) -> Python object; ``ValueError`` when it is not JSON."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="strict")
    return json.loads(raw)


# --------------------------------------------------------------------------------------------
# SavedModel graphs


def graph_ops(saved_model_proto) -> dict[str, set]:
    """``{op type: {node names}}`` over every meta graph and library function, except the
    checkpoint save/restore functions that every TF2 SavedModel carries."""
    ops: dict[str, set] = {}
    for meta in saved_model_proto.meta_graphs:
        for node in meta.graph_def.node:
            ops.setdefault(node.op, set()).add(node.name)
        for fn in meta.graph_def.library.function:
            if fn.signature.name.startswith(_SAVER_FUNCTION_PREFIXES):
                continue
            for node in fn.node_def:
                ops.setdefault(node.op, set()).add(f"{fn.signature.name}/{node.name}")
    return ops


def find_unsafe_graph_ops(saved_model_proto) -> list[UnsafeItem]:
    """File-system / Python-callback ops in a SavedModel's graphs (``PrintV2`` only when it writes a file)."""
    found = []
    for op, nodes in sorted(graph_ops(saved_model_proto).items()):
        if op in UNSAFE_GRAPH_OPS:
            found.append(UnsafeItem(sorted(nodes)[0], op, "a graph op that reads/writes files or runs Python"))
    for meta in saved_model_proto.meta_graphs:
        nodes = list(meta.graph_def.node)
        for fn in meta.graph_def.library.function:
            nodes.extend(fn.node_def)
        for node in nodes:
            if node.op == "PrintV2" and "output_stream" in node.attr:
                stream = node.attr["output_stream"].s.decode("utf-8", "replace")
                if stream.startswith("file://"):
                    found.append(UnsafeItem(node.name, "PrintV2", f"writes to {stream}"))
    return found


def keras_metadata_layers(raw: bytes) -> list[dict]:
    """Layer metadata dicts (``class_name``, ``name``, ``config``...) from a tf.keras ``keras_metadata.pb``.

    The file is a ``SavedMetadata`` proto: ``repeated SavedObject nodes = 1`` with the JSON
    ``metadata`` string in field 5. Decoded with a minimal wire-format reader so that tf_keras is
    not needed at run time.
    """
    layers = []
    for field, value in _proto_fields(raw):
        if field != 1 or not isinstance(value, bytes):
            continue
        for sub_field, sub_value in _proto_fields(value):
            if sub_field == 5 and isinstance(sub_value, bytes):
                try:
                    meta = json.loads(sub_value.decode("utf-8"))
                except ValueError:
                    continue
                if isinstance(meta, dict) and "class_name" in meta:
                    layers.append(meta)
    return layers


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, object]]:
    """(field number, int or bytes) pairs of one protobuf message; stops quietly at garbage."""
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _read_varint(buf, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _read_varint(buf, pos)
            elif wire == 2:
                length, pos = _read_varint(buf, pos)
                if pos + length > len(buf):
                    return
                value, pos = buf[pos:pos + length], pos + length
            elif wire == 1:
                value, pos = buf[pos:pos + 8], pos + 8
            elif wire == 5:
                value, pos = buf[pos:pos + 4], pos + 4
            else:
                return
            yield field, value
    except ValueError:
        return
