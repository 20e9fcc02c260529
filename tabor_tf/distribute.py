"""Where and in what precision a scan runs: ``tf.distribute`` strategies and mixed precision.

    execution = make_execution("auto", "float32")   # resolved once, before the model is loaded
    with using(execution):                          # scanning.run_scan picks it up (scan, audit, compare)
        ...

Strategies (``--strategy``): ``default`` (TensorFlow's default: one device, no replicas),
``one-device`` (the first GPU, else the CPU), ``mirrored`` (``MirroredStrategy`` over every GPU; on a
CPU-only host over the logical CPU devices, see ``split_cpu``), ``multiworker``
(``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``), ``auto`` (``mirrored`` when more
than one GPU is visible, else ``default``). Both detectors shard each step's clean images over the
replicas and all-reduce the gradients, so a scan gives the single-device result up to float noise.

Precisions (``--precision``): ``float32`` (default), ``mixed_float16`` (the victim's forward and
backward pass in float16, everything else: trigger variables, stamping, losses, optimiser state, in
float32) and ``auto`` (``mixed_float16`` when a GPU is visible, else ``float32``). Mixed precision
runs a float16 twin of the Keras model (``victim_for``): a clone of its layers under the
``mixed_float16`` policy with the same weights; no code stored in the model file is executed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass, field
from typing import Iterator, Optional

from .errors import TaborError

STRATEGIES = ("auto", "default", "one-device", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "mixed_float16")
MIXED = "mixed_float16"
# fixed loss scale of the float16 backward pass (gradients of a mean cross-entropy are <= 1 per
# label; scaled by 2**10 they stay far from float16's 65504 and clear of its underflow)
LOSS_SCALE = 1024.0
# device memory one forward + backward pass of TABOR's stamped images may use, per replica, unless
# --memory-budget says otherwise: fits a 16 GB GPU next to the model's weights and TF's workspace
DEFAULT_MEMORY_BUDGET_GIB = 10.0
# bytes kept per activation element and image for the backward pass: the activation itself, its
# gradient and the kernels' workspace (conservative; measured models stay below it)
ACTIVATION_COPIES = 3


# ----------------------------------------------------------------------------- devices


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def split_cpu(n: int) -> list:
    """Split the first physical CPU into ``n`` logical devices (for ``MirroredStrategy`` tests).

    Must run before TensorFlow initialises its devices (first op, first device listing of logical
    devices): in a test, call it at the start of a fresh process. Returns the logical CPU names.
    """
    import tensorflow as tf

    if int(n) < 1:
        raise TaborError(f"split_cpu needs at least 1 device, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(n))
    except RuntimeError:
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(names) == int(n):
            return names
        raise TaborError(
            f"cannot split the CPU into {n} devices: TensorFlow already initialised {len(names)}; "
            "call split_cpu at the start of a fresh process") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


# ----------------------------------------------------------------------------- strategies


def tf_config() -> dict:
    """The validated ``TF_CONFIG`` of a multi-worker job; ``TaborError`` naming what is wrong."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        raise TaborError("--strategy multiworker needs the TF_CONFIG environment variable, e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise TaborError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(cfg, dict):
        raise TaborError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise TaborError("TF_CONFIG has no 'cluster' (a map of job name -> list of 'host:port')")
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise TaborError(f"TF_CONFIG cluster job {job!r} must be a non-empty list of 'host:port' strings")
    if "worker" not in cluster and "chief" not in cluster:
        raise TaborError("TF_CONFIG cluster needs a 'worker' (or 'chief') job")
    if not isinstance(task, dict) or "type" not in task:
        raise TaborError("TF_CONFIG has no 'task' ({'type': 'worker', 'index': N} of this process)")
    job, index = task.get("type"), task.get("index", 0)
    if job not in cluster:
        raise TaborError(f"TF_CONFIG task type {job!r} is not a job of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise TaborError(f"TF_CONFIG task index {index!r} out of range for job {job!r} "
                         f"({len(cluster[job])} task(s))")
    return cfg


def resolve_strategy_name(name: str) -> str:
    """``auto`` -> ``mirrored`` when more than one GPU is visible, else ``default``; checks the name."""
    key = str(name or "auto").strip().lower().replace("_", "-")
    if key not in STRATEGIES:
        raise TaborError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if key == "auto":
        return "mirrored" if gpu_count() > 1 else "default"
    return key


# one strategy object per kind and device set in a process: two MirroredStrategy objects over the
# same devices would issue collective ops with clashing instance keys (a shape-mismatch abort)
_STRATEGIES: dict = {}


def make_strategy(name: str = "auto"):
    """A ``tf.distribute`` strategy by name (see the module docstring); the same object for the same
    name and devices within a process."""
    import tensorflow as tf

    key = resolve_strategy_name(name)
    if key == "default":
        return tf.distribute.get_strategy()
    if key == "one-device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpu_count() else "/cpu:0")
    if key == "mirrored":
        devices = tuple(d.name for d in tf.config.list_logical_devices("GPU" if gpu_count() else "CPU"))
        if ("mirrored", devices) not in _STRATEGIES:
            _STRATEGIES[("mirrored", devices)] = tf.distribute.MirroredStrategy(list(devices))
        return _STRATEGIES[("mirrored", devices)]
    config = json.dumps(tf_config(), sort_keys=True)
    if ("multiworker", config) not in _STRATEGIES:
        try:
            _STRATEGIES[("multiworker", config)] = tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as exc:
            raise TaborError(f"cannot start MultiWorkerMirroredStrategy from TF_CONFIG: {exc}") from None
    return _STRATEGIES[("multiworker", config)]


def replicas_of(strategy) -> int:
    return int(getattr(strategy, "num_replicas_in_sync", 1))


def resolve_precision(name: str) -> str:
    """``auto`` -> ``mixed_float16`` when a GPU is visible, else ``float32``; checks the name."""
    key = str(name or "float32").strip().lower().replace("-", "_")
    if key in ("fp32", "float"):
        key = "float32"
    if key in ("mixed", "fp16", "float16"):
        key = MIXED
    if key not in PRECISIONS:
        raise TaborError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if key == "auto":
        return MIXED if gpu_count() else "float32"
    return key


@dataclass(frozen=True)
class Execution:
    """A resolved strategy and precision. ``strategy`` is the ``tf.distribute`` object."""

    strategy_name: str = "default"
    precision: str = "float32"
    replicas: int = 1
    devices: tuple = ()
    requested_strategy: str = "default"
    requested_precision: str = "float32"
    memory_budget_gib: float = 0.0  # per device, for TABOR's chunks; 0: DEFAULT_MEMORY_BUDGET_GIB
    strategy: object = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy_name, "replicas": int(self.replicas), "devices": list(self.devices),
                "precision": self.precision, "strategy_requested": self.requested_strategy,
                "precision_requested": self.requested_precision, "memory_budget_gib": self.budget_gib}

    @property
    def budget_gib(self) -> float:
        return float(self.memory_budget_gib) if self.memory_budget_gib > 0 else DEFAULT_MEMORY_BUDGET_GIB

    def scope(self):
        """The strategy's scope (variables created in it are mirrored over its replicas)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def make_execution(strategy: str = "auto", precision: str = "float32",
                   memory_budget_gib: Optional[float] = None) -> Execution:
    """Resolve ``--strategy``, ``--precision`` and ``--memory-budget`` (checked before the strategy is built)."""
    prec = resolve_precision(precision)
    budget = float(memory_budget_gib or 0.0)
    if budget < 0 or budget != budget:
        raise TaborError(f"--memory-budget must be a positive number of GiB, got {memory_budget_gib}")
    obj = make_strategy(strategy)
    try:
        devices = tuple(str(d) for d in obj.extended.worker_devices)
    except (RuntimeError, AttributeError):  # the default strategy has no device list
        devices = ()
    name = resolve_strategy_name(strategy)
    return Execution(strategy_name=name, precision=prec, replicas=replicas_of(obj), devices=devices,
                     requested_strategy=str(strategy), requested_precision=str(precision),
                     memory_budget_gib=budget, strategy=obj)


_CURRENT: list = []


def current() -> Execution:
    """The execution set by ``using`` (innermost), else the default strategy in float32."""
    if _CURRENT:
        return _CURRENT[-1]
    import tensorflow as tf

    return Execution(strategy=tf.distribute.get_strategy())


@contextlib.contextmanager
def using(execution: Execution) -> Iterator[Execution]:
    """Make ``execution`` the one ``scanning.run_scan`` uses inside the block."""
    _CURRENT.append(execution)
    try:
        yield execution
    finally:
        _CURRENT.pop()


# ----------------------------------------------------------------------------- the victim's twin


def _scaled_logits(logits_fn, scale: float):
    """Wrap a float16 ``logits_fn`` with a fixed loss scale: gradients reaching its float16 output
    are multiplied by ``scale`` and those leaving at its float32 input divided by it (non-finite
    input gradients, an overflow, are zeroed). Forward values are unchanged (logits cast to float32)."""
    import tensorflow as tf

    @tf.custom_gradient
    def unscale_in(x):
        def grad(g):
            g = g / scale
            return tf.where(tf.math.is_finite(g), g, tf.zeros_like(g))
        return tf.identity(x), grad

    @tf.custom_gradient
    def scale_out(y):
        def grad(g):
            return tf.cast(tf.cast(g, tf.float32) * scale, y.dtype)
        return tf.cast(y, tf.float32), grad

    def fn(x):
        return scale_out(logits_fn(unscale_in(tf.cast(x, tf.float32))))

    return fn


def clone_keras(model, policy: Optional[str] = None):
    """A copy of the Keras ``model`` built in the current strategy scope, its layers under the
    dtype ``policy`` (None: unchanged), with the same weights. Layers are rebuilt from their
    configs in Keras' safe mode: a layer holding stored code (Lambda) is refused, not executed."""
    import keras

    def layers_of(m):
        for layer in m.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from layers_of(layer)

    if any(isinstance(layer, keras.layers.Lambda) for layer in layers_of(model)):
        raise ValueError("the model has a Lambda layer (stored code); it is not rebuilt")
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # another Keras layout: the Lambda check above still holds
        SafeModeScope = None

    def clone_layer(layer):
        config = layer.get_config()
        if policy is not None and "dtype" in config and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    with SafeModeScope(True) if SafeModeScope is not None else contextlib.nullcontext():
        twin = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    twin.set_weights(model.get_weights())
    twin.trainable = False
    return twin


def victim_for(victim, execution: Optional[Execution] = None):
    """The victim as ``execution`` runs it: unchanged for float32 on one replica; else a twin whose
    weights live in the strategy's scope (mirrored) and, for ``mixed_float16``, whose layers compute
    in float16 behind a fixed loss scale. Its ``sha256`` carries the precision (checkpoints of the
    two precisions never mix). A Keras model is required for mixed precision (``TaborError``); for
    several replicas a model that cannot be cloned is used as loaded (its weights are then copied
    to the replicas every step: correct, slower).
    """
    execution = execution or current()
    mixed = execution.precision == MIXED
    if not mixed and execution.replicas <= 1:
        return victim
    import keras

    from .loading.classifier import keras_classifier

    model = getattr(victim, "model", None)
    if not isinstance(model, keras.Model):
        if mixed:
            raise TaborError(f"--precision {MIXED} needs a Keras model (.keras / .h5); this one is {victim.format}: "
                             "use --precision float32")
        return victim
    try:
        with execution.scope():
            twin_model = clone_keras(model, MIXED if mixed else None)
            parts = keras_classifier(twin_model, str(victim.path))
    except TaborError:
        raise
    except Exception as exc:  # noqa: BLE001 - a layer that cannot be rebuilt from its config
        if mixed:
            raise TaborError(f"cannot run this model in {MIXED} ({type(exc).__name__}: {str(exc)[:200]}); "
                             "use --precision float32") from None
        return victim
    twin = copy.copy(victim)
    twin.model = twin_model
    twin._forward = parts["forward"]
    twin._logits_fn = _scaled_logits(parts["logits_fn"], LOSS_SCALE) if mixed else parts["logits_fn"]
    twin._predict_fn = None
    if mixed:
        twin.sha256 = f"{victim.sha256}+{MIXED}"
        twin.notes = tuple(victim.notes) + (f"run in {MIXED} (float16 forward/backward, loss scale {LOSS_SCALE:g})",)
    return twin


# ----------------------------------------------------------------------------- memory budget


def _elements(tensor) -> Optional[int]:
    import math

    dims = list(tensor.shape)[1:]
    if any(d is None for d in dims):
        return None
    return math.prod(int(d) for d in dims)


def activation_elements(model, *, count_inputs: bool = True) -> Optional[int]:
    """Elements of the input and of every layer output of a Keras ``model`` for ONE image (nested
    models walked); ``None`` when a shape is unknown (not a Keras model, dynamic shapes)."""
    import keras

    if not isinstance(model, keras.Model):
        return None
    try:
        parts = [_elements(t) for t in model.inputs] if count_inputs else []
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.Model):
                parts.append(activation_elements(layer, count_inputs=False))
                continue
            outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
            parts.extend(_elements(t) for t in outputs)
    except (AttributeError, ValueError, TypeError):
        return None
    if any(p is None for p in parts):
        return None
    return int(sum(parts))


def bytes_per_image(victim, precision: str = "float32") -> Optional[int]:
    """Estimated device memory of one image's forward + backward pass through the victim."""
    elems = activation_elements(getattr(victim, "model", None))
    if elems is None:
        return None
    return int(elems * (2 if precision == MIXED else 4) * ACTIVATION_COPIES)


def images_per_step(victim, execution: Optional[Execution] = None) -> Optional[int]:
    """Stamped images one TABOR step may hold within the memory budget (all replicas together:
    each replica holds its share); ``None`` when the model's activations cannot be estimated."""
    execution = execution or current()
    per_image = bytes_per_image(victim, execution.precision)
    if not per_image:
        return None
    per_device = int(execution.budget_gib * 2**30 // per_image)
    return max(1, per_device * max(1, int(execution.replicas)))


def add_arguments(parser) -> None:
    """``--strategy``, ``--precision`` and ``--memory-budget`` (scan, audit, compare)."""
    parser.add_argument("--strategy", default="auto", choices=STRATEGIES,
                        help="tf.distribute strategy: auto (mirrored over the GPUs when more than one is visible, "
                             "else default; the default), default, one-device, mirrored, multiworker (TF_CONFIG)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="float32 (default); mixed_float16: the model's forward/backward in float16, triggers, "
                             "losses and optimiser in float32 (GPUs; Keras models); auto: mixed_float16 on a GPU")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                        help=f"device memory per replica for TABOR's stamped images (default "
                             f"{DEFAULT_MEMORY_BUDGET_GIB:g} GiB); labels are chunked to fit")


def execution_from_args(args) -> Execution:
    return make_execution(getattr(args, "strategy", "auto"), getattr(args, "precision", "float32"),
                          getattr(args, "memory_budget", None))
