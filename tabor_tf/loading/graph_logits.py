"""True logits of a probability-output TensorFlow graph: the input of its final ``Softmax`` op.

``softmax_input_logits(forward, input_shape)`` traces ``forward`` (``x [B,H,W,C] float32 ->
probabilities [B,K]``), freezes it (variables become constants and nested function calls, e.g. a
SavedModel signature or a Keras model's call, are inlined), walks back from the output through
``Identity`` / ``IdentityN`` / ``Cast`` ops to a ``Softmax`` op and returns a function
``x [B,H,W,C] -> logits [B,K]`` computing that op's input. Gradients flow through it to ``x``.

Nothing is executed to find the op: tracing and freezing only rewrite graphs (no Python stored in a
model runs, and the pruned function holds only the ops that compute the logits).
"""

from __future__ import annotations

from typing import Callable

_PASS_THROUGH = ("Identity", "IdentityN", "Cast")


class NoSoftmaxLogits(ValueError):
    """The graph's output does not come from a Softmax op (or the graph cannot be frozen)."""


def _split_ref(ref: str) -> tuple:
    name, _, index = ref.lstrip("^").partition(":")
    return name, int(index or 0)


def softmax_input_logits(forward: Callable, input_shape: tuple) -> tuple:
    """``forward`` (probabilities) -> (``logits_fn`` x [B,H,W,C] float32 -> [B,K], Softmax op name).

    Raises ``NoSoftmaxLogits`` when the output is not (a pass-through of) a Softmax over the last axis.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([None, *input_shape], tf.float32)
    try:
        traced = tf.function(forward, autograph=False).get_concrete_function(spec)
        frozen = convert_variables_to_constants_v2(traced)
    except Exception as exc:  # noqa: BLE001 - TF raises many types for graphs it cannot freeze
        raise NoSoftmaxLogits(f"cannot freeze the graph ({type(exc).__name__})") from None
    if len(frozen.inputs) != 1 or len(frozen.outputs) != 1:
        raise NoSoftmaxLogits(f"the frozen graph has {len(frozen.inputs)} inputs, {len(frozen.outputs)} outputs")
    graph_def = frozen.graph.as_graph_def()
    nodes = {n.name: n for n in graph_def.node}
    name, index = _split_ref(frozen.outputs[0].name)
    node = nodes[name]
    while node.op in _PASS_THROUGH:  # a frozen graph is acyclic outside loops (no pass-through ops there)
        name, index = _split_ref(node.input[index if node.op == "IdentityN" else 0])
        node = nodes[name]
    if node.op != "Softmax":
        raise NoSoftmaxLogits(f"the output comes from a {node.op} op, not Softmax")
    name, index = _split_ref(node.input[0])
    fetch = f"{name}:{index}"
    if len(frozen.graph.get_tensor_by_name(fetch).shape) != 2:
        raise NoSoftmaxLogits("the Softmax input is not [batch, classes]")

    def _import():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    logits_fn = wrapped.prune(frozen.inputs[0].name, fetch)
    return logits_fn, node.name
