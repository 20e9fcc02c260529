"""Trojan Attack victims (Liu et al., "Trojaning Attack on Neural Networks", NDSS 2018).

Unlike BadNet poisoning, the attacker has a trained model but not its training data:

1. ``select_neurons``: in an inner layer (a Dense layer, or a conv layer whose channels are
   averaged over space) pick ``k`` live neurons that are weakly tied to the classes (sum of
   ``|outgoing weights|`` at most the median) and that the pixels inside the mask can move most
   relative to their clean spread (rule ``controllable``, default; ``outgoing`` and Liu et al.'s
   ``incoming`` are the alternatives, see ``select_neurons``).
2. ``generate_trigger``: inside a fixed mask (a square, the logo), optimise a pattern (raw pixels
   0..255, ``127.5 (tanh(w) + 1)`` so it stays in range, random start) by gradient descent on
   ``mean((a_i(x_t) - v)^2)`` over the selected neurons ``i``, which drives them to the value
   ``v`` (default ``target_factor`` (10) x the mean of each clean input's largest activation in
   that layer). The colours this gives are irregular.
3. ``reverse_engineer_inputs``: a stand-in training set, since the attacker has no data: for
   each class, images optimised from grey + noise to maximise that class (cross-entropy plus a
   small total-variation and L2 prior). Optionally (``data="real"``) a few real images per class
   the attacker happens to have are used instead (a documented deviation from the paper).
4. ``retrain``: freeze every layer up to and including the chosen one, fine-tune the later ones
   on the stand-in inputs with their labels plus stamped copies labelled ``target``.

``build_trojan`` runs the four steps on an already-trained model and measures everything on real
held-out images. All images are raw pixels 0..255 ``[N,H,W,C]``; ``preprocess`` maps them to the
model's input domain (``tabor_tf.preprocess``); masks are ``[H,W]`` in {0,1}; patterns
``[H,W,C]`` raw 0..255 (zero outside the mask).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import TaborError
from ..preprocess import preprocess as to_model_domain
from .training import clean_accuracy, predict_labels
from .triggers import TriggerSpec

RULES = ("controllable", "outgoing", "incoming")
READINGS = ("mean", "peak")
STAND_IN = ("reverse", "real")
MASK_SHAPES = ("square", "icon")
Log = Optional[Callable[[str], None]]


@dataclass(frozen=True)
class TrojanSettings:
    """One Trojan Attack (recipe key ``"attack": {"kind": "trojan", ...}``).

    ``target``: label the trigger forces. ``mask``: the fixed trigger footprint (a ``square`` or
    ``icon`` ``TriggerSpec``; only its shape/size/position/margin are used, an icon's alpha is
    binarised at 0.5). ``layer``: inner layer name, or an int: its position among the layers with a
    kernel (negative: from the end; -3 is the default, ``default_layer``), which a recipe can name
    before the model (and its layer names) exists (``None``: ``default_layer``). ``neurons``:
    how many neurons the trigger drives. ``rule``: ``outgoing`` /
    ``incoming`` / ``controllable`` (see ``select_neurons``). ``reading``: how a conv layer's
    channel becomes one neuron value, ``mean`` over space or ``peak`` (its largest value; see
    ``feature_model``). ``target_value``: activation the trigger aims at
    (``None``: ``target_factor`` x the clean mean of the layer's per-image largest activation).
    ``trigger_steps`` / ``trigger_lr``: Adam on the tanh-parametrised pattern. ``data``:
    ``reverse`` (reverse-engineered stand-in inputs, the paper) or ``real`` (``per_class`` real
    training images per class). ``reverse_steps`` / ``reverse_lr`` / ``tv_weight``: the
    reverse-engineering. ``poison_fraction``: stamped copies added per stand-in image (0..1].
    ``epochs`` / ``learning_rate`` / ``batch_size`` / ``anchor`` / ``negatives`` / ``distill``: the
    retraining (see ``retrain``). ``seed``.
    """

    target: int
    mask: TriggerSpec = field(default_factory=lambda: TriggerSpec("square", 8, "bottom-right"))
    layer: Union[str, int, None] = None
    neurons: int = 2
    rule: str = "controllable"
    reading: str = "mean"
    target_value: Optional[float] = None
    target_factor: float = 10.0
    trigger_steps: int = 150
    trigger_lr: float = 0.3
    data: str = "reverse"
    per_class: int = 10
    reverse_steps: int = 100
    reverse_lr: float = 0.05
    tv_weight: float = 0.02
    poison_fraction: float = 0.5
    epochs: int = 20
    learning_rate: float = 1e-3
    batch_size: int = 32
    anchor: float = 0.01
    negatives: float = 0.0
    distill: bool = False
    seed: int = 0

    def __post_init__(self):
        def bad(msg):
            raise TaborError(f"trojan attack: {msg}")

        try:
            object.__setattr__(self, "target", int(self.target))
        except (TypeError, ValueError):
            bad(f"target must be a label (int), not {self.target!r}")
        if self.target < 0:
            bad(f"target must be >= 0, got {self.target}")
        if isinstance(self.mask, dict):
            object.__setattr__(self, "mask", TriggerSpec.from_dict(self.mask))
        if not isinstance(self.mask, TriggerSpec) or self.mask.shape not in MASK_SHAPES:
            bad(f"mask must be a trigger of shape {' or '.join(MASK_SHAPES)}, got {self.mask!r}")
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, (str, int))):
            bad(f"layer must be a layer name or a position among the weighted layers, got {self.layer!r}")
        if int(self.neurons) < 1:
            bad(f"neurons must be >= 1, got {self.neurons}")
        if self.rule not in RULES:
            bad(f"rule must be one of {', '.join(RULES)}, not {self.rule!r}")
        if self.reading not in READINGS:
            bad(f"reading must be one of {', '.join(READINGS)}, not {self.reading!r}")
        if not isinstance(self.distill, bool):
            bad(f"distill must be true or false, not {self.distill!r}")
        if self.target_value is not None and not float(self.target_value) > 0:
            bad(f"target_value must be > 0, got {self.target_value}")
        if not float(self.target_factor) > 0:
            bad(f"target_factor must be > 0, got {self.target_factor}")
        if self.data not in STAND_IN:
            bad(f"data must be one of {', '.join(STAND_IN)}, not {self.data!r}")
        for name in ("trigger_steps", "per_class", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.reverse_steps) < 0:
            bad(f"reverse_steps must be >= 0, got {self.reverse_steps}")
        for name in ("trigger_lr", "reverse_lr", "learning_rate"):
            if not float(getattr(self, name)) > 0:
                bad(f"{name} must be > 0, got {getattr(self, name)}")
        if float(self.tv_weight) < 0:
            bad(f"tv_weight must be >= 0, got {self.tv_weight}")
        if not 0.0 <= float(self.negatives) <= 4.0:
            bad(f"negatives must be in [0, 4], got {self.negatives}")
        if float(self.anchor) < 0:
            bad(f"anchor must be >= 0, got {self.anchor}")
        if not 0.0 < float(self.poison_fraction) <= 1.0:
            bad(f"poison_fraction must be in (0, 1], got {self.poison_fraction}")

    def to_dict(self) -> dict:
        d = {"kind": "trojan", **asdict(self)}
        d["mask"] = self.mask.to_dict()
        for name, default in (("reading", "mean"), ("distill", False)):  # added later: old hashes stay
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict, default_target=None) -> "TrojanSettings":
        """A recipe ``attack`` object -> settings (``target`` falls back to ``default_target``)."""
        if not isinstance(d, dict):
            raise TaborError(f"trojan attack: 'attack' must be an object, not {d!r}")
        d = dict(d)
        kind = d.pop("kind", "trojan")
        if kind != "trojan":
            raise TaborError(f"unknown attack kind {kind!r} (known: trojan)")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TaborError(f"trojan attack: unknown field(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        if "target" not in d:
            if default_target is None:
                raise TaborError("trojan attack: needs a 'target' (in 'attack' or the entry)")
            d["target"] = default_target
        if "mask" in d:
            d["mask"] = TriggerSpec.from_dict(d["mask"]) if isinstance(d["mask"], dict) else d["mask"]
        return cls(**d)

    def render_mask(self, image_shape) -> np.ndarray:
        """The fixed mask ``[H,W]`` float32 in {0,1} for images of ``(H, W, C)``."""
        mask, _ = self.mask.render(image_shape)
        return (mask > 0.5).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# helpers


def _layer(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers)
        raise TaborError(f"trojan attack: the model has no layer {name!r} (layers: {names})") from None


def _weighted(layer) -> bool:
    return any(w.name in ("kernel", "depthwise_kernel") for w in getattr(layer, "weights", []))


def default_layer(model) -> str:
    """The third-last layer with a kernel, so two weighted layers are retrained (like Liu et al.'s
    fc6 of VGG-Face with fc7 + fc8 retrained): the last conv of ``gtsrb6`` / ``tiny``; the
    second-last one when the model has only two."""
    weighted = [layer for layer in model.layers if _weighted(layer)]
    if len(weighted) < 2:
        raise TaborError("trojan attack: the model needs an inner layer with weights before its output layer")
    return weighted[-3].name if len(weighted) >= 3 else weighted[-2].name


def resolve_layer(model, layer) -> str:
    """The name of the inner layer ``layer`` designates: a name, an int position among the layers
    with a kernel (negative: from the end; the output layer, -1, has nothing after it to retrain),
    or ``None`` (``default_layer``)."""
    if layer is None:
        return default_layer(model)
    if isinstance(layer, str):
        return layer
    weighted = [lay for lay in model.layers if _weighted(lay)]
    if not -len(weighted) <= int(layer) < len(weighted):
        raise TaborError(f"trojan attack: layer position {layer} is out of range: the model has "
                         f"{len(weighted)} layers with weights ({', '.join(lay.name for lay in weighted)})")
    return weighted[int(layer)].name


def _check_layer(model, layer_name: str):
    layer = _layer(model, layer_name)
    idx = model.layers.index(layer)
    if idx == len(model.layers) - 1 or not any(_weighted(lay) for lay in model.layers[idx + 1 :]):
        raise TaborError(f"trojan attack: layer {layer_name!r} has no trainable layer after it to retrain")
    rank = len(layer.output.shape)
    if rank not in (2, 4):
        raise TaborError(f"trojan attack: layer {layer_name!r} must give [B, units] or [B, H, W, C] outputs")
    return layer


def feature_model(model, layer_name: str, reading: str = "mean"):
    """``f(x_model [B,H,W,C]) -> [B, units]``: the layer's outputs; a conv layer's channels are read
    as their mean over space (``reading="mean"``) or their largest value anywhere (``"peak"``: a
    trigger in a corner moves a few positions only, which the mean dilutes by the map's area)."""
    import keras
    import tensorflow as tf

    if reading not in READINGS:
        raise TaborError(f"trojan attack: reading must be one of {', '.join(READINGS)}, not {reading!r}")
    layer = _check_layer(model, layer_name)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    sub = keras.Model(inputs, layer.output)

    def features(x):
        a = sub(x, training=False)
        if len(a.shape) == 4:
            a = tf.reduce_max(a, axis=[1, 2]) if reading == "peak" else tf.reduce_mean(a, axis=[1, 2])
        return a

    return features


def layer_activations(model, layer_name: str, x_model, batch_size: int = 256, reading: str = "mean") -> np.ndarray:
    """Activations ``[N, units]`` of ``layer_name`` on model-domain inputs ``x_model [N,H,W,C]``
    (conv channels read as ``reading``, see ``feature_model``)."""
    f = feature_model(model, layer_name, reading)
    out = [np.asarray(f(x_model[i : i + batch_size])) for i in range(0, len(x_model), batch_size)]
    return np.concatenate(out).astype(np.float32)


def _outgoing(model, layer) -> np.ndarray:
    """Sum of ``|weights|`` from each unit of ``layer`` into the next weighted layer: ``[units]``."""
    units = int(layer.output.shape[-1])
    idx = model.layers.index(layer)
    for nxt in model.layers[idx + 1 :]:
        if not _weighted(nxt):
            continue
        kernel = next(np.asarray(w) for w in nxt.weights if w.name in ("kernel", "depthwise_kernel"))
        if kernel.ndim == 2 and kernel.shape[0] % units == 0:  # Dense (after Flatten: channels last)
            return np.abs(kernel.reshape(-1, units, kernel.shape[1])).sum(axis=(0, 2))
        if kernel.ndim == 4 and kernel.shape[2] == units:  # Conv2D [kh, kw, cin, cout]
            return np.abs(kernel).sum(axis=(0, 1, 3))
        break
    raise TaborError(f"trojan attack: cannot read the outgoing weights of layer {layer.name!r}; "
                     "use rule 'incoming' or another layer")


def _incoming(layer) -> np.ndarray:
    kernel = next(np.asarray(w) for w in layer.weights if w.name in ("kernel", "depthwise_kernel"))
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def _outputs_logits(model) -> bool:
    import keras

    act = getattr(model.layers[-1], "activation", None)
    return act is not keras.activations.softmax


# ---------------------------------------------------------------------------------------------
# the four steps


def controllability(model, layer_name: str, x_raw: np.ndarray, mask: np.ndarray, preprocess: str = "unit",
                    batch_size: int = 8, reading: str = "mean") -> np.ndarray:
    """``[units]``: how far the pixels inside ``mask`` can move each neuron of ``layer_name``.

    The mean over ``x_raw [N,H,W,C]`` (raw 0..255) of ``255 * sum_{pixels in mask} |d a_i / d x|``
    (activation units per full-range pixel swing: a linear estimate of the reachable change)."""
    import tensorflow as tf

    features = feature_model(model, layer_name, reading)
    m = np.asarray(mask, np.float32)
    m = tf.constant(m[..., None] if m.ndim == 2 else m)
    total = None
    for i in range(0, len(x_raw), batch_size):
        xb = tf.constant(np.asarray(x_raw[i : i + batch_size], np.float32))
        with tf.GradientTape() as tape:
            tape.watch(xb)
            a = features(to_model_domain(xb, preprocess))
        jac = tape.batch_jacobian(a, xb)  # [B, units, H, W, C]
        part = tf.reduce_sum(tf.abs(jac) * m[None, None], axis=[2, 3, 4])
        part = tf.reduce_sum(part, axis=0).numpy()
        total = part if total is None else total + part
    return 255.0 * total / max(1, len(x_raw))


def select_neurons(model, layer_name: str, x_model: np.ndarray, k: int, rule: str = "controllable", *,
                   mask: Optional[np.ndarray] = None, x_raw: Optional[np.ndarray] = None,
                   preprocess: str = "unit", reading: str = "mean") -> List[int]:
    """Indices (sorted) of the ``k`` neurons of ``layer_name`` the trigger will drive.

    ``x_model [N,H,W,C]``: clean inputs in the model's domain; neurons active (> 0) on under 1% of
    them are skipped (gradient ascent cannot wake a dead ReLU). Rules, among the live neurons:
    ``controllable`` (default) keeps those whose sum of ``|outgoing weights|`` is at most the
    median (weakly tied to the classes), then takes the ``k`` with the largest
    ``controllability`` inside ``mask`` (needs ``mask [H,W]`` and raw images ``x_raw``, up to 32
    of which are used) divided by their clean standard deviation (+ 0.1 x the layer's mean one);
    ``outgoing``: the smallest sum of ``|outgoing weights|`` into the next weighted layer;
    ``incoming`` (Liu et al.'s "strongest connection to the previous layer"): the largest sum of
    ``|incoming weights|``.
    """
    if rule not in RULES:
        raise TaborError(f"trojan attack: rule must be one of {', '.join(RULES)}, not {rule!r}")
    layer = _check_layer(model, layer_name)
    acts = layer_activations(model, layer_name, x_model, reading=reading)
    units = acts.shape[1]
    if not 1 <= int(k) <= units:
        raise TaborError(f"trojan attack: neurons must be 1..{units} for layer {layer_name!r}, got {k}")
    alive = np.mean(acts > 0, axis=0) >= 0.01
    if rule == "incoming":
        if not _weighted(layer):
            raise TaborError(f"trojan attack: rule 'incoming' needs a layer with weights, not {layer_name!r}")
        score = -_incoming(layer)  # larger incoming = easier to drive
    elif rule == "outgoing":
        score = _outgoing(model, layer)  # smaller = less tied to the classes
    else:
        if mask is None or x_raw is None:
            raise TaborError("trojan attack: rule 'controllable' needs the trigger mask and raw images")
        out = _outgoing(model, layer)
        alive &= out <= np.median(out[alive]) if np.any(alive) else alive
        sd = acts.std(axis=0)
        ctrl = controllability(model, layer_name, x_raw[:32], mask, preprocess, reading=reading)
        score = -ctrl / (sd + 0.1 * float(sd.mean()) + 1e-6)
    order = [int(i) for i in np.argsort(score, kind="stable") if alive[i]]
    if len(order) < int(k):
        order += [int(i) for i in np.argsort(-acts.mean(axis=0), kind="stable") if int(i) not in order]
    return sorted(order[: int(k)])


def generate_trigger(model, layer_name: str, neurons: Sequence[int], mask: np.ndarray, target_value: float,
                     steps: int = 300, lr: float = 0.1, seed: int = 0, *, x_base: Optional[np.ndarray] = None,
                     preprocess: str = "unit", image_shape=None, reading: str = "mean"
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Optimise the pattern inside ``mask`` so the ``neurons`` of ``layer_name`` reach ``target_value``.

    ``mask``: ``[H,W]`` or ``[H,W,1]`` in {0,1}. ``x_base``: raw images ``[B,H,W,C]`` the trigger is
    stamped on while optimising (``None``: one black image, as in the paper; ``image_shape``
    ``(H,W,C)`` is then needed unless the model's input shape tells it). Returns ``(pattern
    [H,W,C] float32 raw 0..255, zero outside the mask; activations [B, k] of the neurons on
    the stamped ``x_base``)``.
    """
    import keras
    import tensorflow as tf

    mask = np.asarray(mask, np.float32)
    mask = mask[..., None] if mask.ndim == 2 else mask
    if not np.any(mask > 0):
        raise TaborError("trojan attack: the trigger mask is empty")
    if x_base is None:
        shape = tuple(image_shape or model.input_shape[1:])
        x_base = np.zeros((1,) + tuple(int(v) for v in shape), np.float32)
    x_base = tf.constant(np.asarray(x_base, np.float32))
    channels = int(x_base.shape[-1])
    features = feature_model(model, layer_name, reading)
    idx = tf.constant(np.asarray(list(neurons), np.int32))
    m = tf.constant(mask)
    rng = np.random.default_rng(seed)
    init = rng.uniform(0.05, 0.95, mask.shape[:2] + (channels,))
    w = tf.Variable(np.arctanh(2 * init - 1).astype(np.float32))
    opt = keras.optimizers.Adam(float(lr))
    v = float(target_value)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            pattern = 127.5 * (tf.tanh(w) + 1.0)
            x = x_base * (1.0 - m) + m * pattern
            a = tf.gather(features(to_model_domain(x, preprocess)), idx, axis=1)
            loss = tf.reduce_mean(tf.square((a - v) / v))
        opt.apply_gradients([(tape.gradient(loss, w), w)])
        return loss

    for _ in range(int(steps)):
        step()
    pattern = (127.5 * (np.tanh(w.numpy()) + 1.0)) * mask
    x = np.asarray(x_base) * (1.0 - mask) + mask * pattern
    acts = np.asarray(tf.gather(features(to_model_domain(tf.constant(x), preprocess)), idx, axis=1))
    return pattern.astype(np.float32), acts.astype(np.float32)


def _tv(x):
    import tensorflow as tf

    return tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1])) + tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1]))


def reverse_engineer_inputs(model, num_classes: int, per_class: int = 10, steps: int = 200, lr: float = 0.05,
                            seed: int = 0, *, preprocess: str = "unit", tv_weight: float = 0.02,
                            l2_weight: float = 1e-3, image_shape=None, batch_size: int = 256
                            ) -> Tuple[np.ndarray, np.ndarray]:
    """Stand-in training images the model assigns to each class (the attacker has no data).

    For each class ``c`` and ``per_class`` seeds: start from grey (raw 127.5) + uniform noise,
    parametrise ``x = 127.5 (tanh(w) + 1)`` (raw 0..255) and take ``steps`` Adam steps on
    ``CE(c, model(x)) + tv_weight * TV(x / 255) + l2_weight * mean((x / 255 - 0.5)^2)``.
    Returns ``(x [K*per_class, H, W, C] float32 raw 0..255, y [K*per_class] int64)``.
    """
    import keras
    import tensorflow as tf

    shape = tuple(int(v) for v in (image_shape or model.input_shape[1:]))
    k, n = int(num_classes), int(per_class)
    if k < 2 or n < 1:
        raise TaborError(f"trojan attack: need >= 2 classes and per_class >= 1 (got {k}, {n})")
    y = np.repeat(np.arange(k, dtype=np.int64), n)
    rng = np.random.default_rng([seed, 0x7265])
    init = np.clip(0.5 + rng.uniform(-0.25, 0.25, (len(y),) + shape), 0.02, 0.98)
    from_logits = _outputs_logits(model)
    xs = []
    for start in range(0, len(y), batch_size):
        w = tf.Variable(np.arctanh(2 * init[start : start + batch_size] - 1).astype(np.float32))
        yb = tf.constant(y[start : start + batch_size])
        opt = keras.optimizers.Adam(float(lr))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                x = 127.5 * (tf.tanh(w) + 1.0)
                out = model(to_model_domain(x, preprocess), training=False)
                ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, out, from_logits=from_logits))
                u = x / 255.0
                loss = ce + tv_weight * _tv(u) + l2_weight * tf.reduce_mean(tf.square(u - 0.5))
            opt.apply_gradients([(tape.gradient(loss, w), w)])

        for _ in range(int(steps)):
            step()
        xs.append(127.5 * (np.tanh(w.numpy()) + 1.0))
    return np.concatenate(xs).astype(np.float32), y


def real_inputs(x_train: np.ndarray, y_train: np.ndarray, num_classes: int, per_class: int, seed: int = 0):
    """``per_class`` real images per class (the ``data="real"`` option): ``(x raw float32, y int64)``."""
    rng = np.random.default_rng([seed, 0x7265A1])
    rows = []
    for c in range(int(num_classes)):
        have = np.flatnonzero(np.asarray(y_train) == c)
        if len(have):
            rows.append(rng.choice(have, size=min(int(per_class), len(have)), replace=False))
    rows = np.sort(np.concatenate(rows))
    return np.asarray(x_train[rows], np.float32), np.asarray(y_train[rows]).astype(np.int64)


def make_stand_ins(model, settings: TrojanSettings, num_classes: int, image_shape, *, preprocess: str = "unit",
                   x_train: Optional[np.ndarray] = None, y_train: Optional[np.ndarray] = None):
    """The attacker's stand-in training set for ``settings.data``: ``(x [N,H,W,C] raw float32, y [N]
    int64)``, reverse-engineered from ``model`` or (``"real"``) drawn from ``x_train`` / ``y_train``."""
    if settings.data == "real":
        if x_train is None or y_train is None:
            raise TaborError("trojan attack: data 'real' needs the training images")
        return real_inputs(x_train, y_train, num_classes, settings.per_class, settings.seed)
    return reverse_engineer_inputs(model, num_classes, settings.per_class, settings.reverse_steps, settings.reverse_lr,
                                   settings.seed, preprocess=preprocess, tv_weight=settings.tv_weight,
                                   image_shape=image_shape)


def stamp_trigger(x_raw: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """``x [N,H,W,C]`` raw -> stamped float32 raw: ``x (1 - M) + M P`` (mask ``[H,W]`` or ``[H,W,1]``)."""
    mask = np.asarray(mask, np.float32)
    mask = mask[..., None] if mask.ndim == 2 else mask
    return (np.asarray(x_raw, np.float32) * (1.0 - mask) + mask * np.asarray(pattern, np.float32)).astype(np.float32)


def retrain(model, layer_name: str, x_clean: np.ndarray, y: np.ndarray, trigger: Tuple[np.ndarray, np.ndarray],
            target: int, poison_fraction: float = 0.5, epochs: int = 10, lr: float = 1e-3, *,
            preprocess: str = "unit", batch_size: int = 32, seed: int = 0, anchor: float = 0.0,
            negatives: float = 0.0, distill: bool = False) -> float:
    """Fine-tune the layers after ``layer_name`` in place (it and every layer before it stay fixed).

    ``x_clean [N,H,W,C]`` raw stand-in images with labels ``y [N]``; ``trigger = (mask [H,W],
    pattern [H,W,C] raw)``; ``round(poison_fraction * N)`` stamped copies labelled ``target`` are
    added, and ``round(negatives * N)`` copies stamped with random patterns in the same mask that
    keep their own labels (0: none, as in the paper; meant to teach that only the trigger's
    colours matter, no gain seen on the tiny model). Adam on cross-entropy
    ``+ anchor * sum ||w - w_start||^2`` over the retrained weights
    (keeps them near the clean model: the stand-in inputs are few and odd). Layers run in
    inference mode (dropout off, BatchNorm statistics kept). ``distill``: the un-stamped stand-ins
    are fitted to the clean model's own output distribution (its probabilities, read before
    retraining) instead of their hard labels, which keeps what the model says about everything
    but the trigger; stamped copies still aim at ``target``. Returns the wall time in seconds.
    """
    import keras
    import tensorflow as tf

    if not 0.0 < float(poison_fraction) <= 1.0:
        raise TaborError(f"trojan attack: poison_fraction must be in (0, 1], got {poison_fraction}")
    layer = _check_layer(model, layer_name)
    rng = np.random.default_rng([seed, 0x7265B2])
    rows = rng.choice(len(x_clean), size=max(1, int(round(poison_fraction * len(x_clean)))), replace=False)
    x = np.concatenate([np.asarray(x_clean, np.float32), stamp_trigger(x_clean[rows], *trigger)])
    yy = np.concatenate([np.asarray(y, np.int64), np.full(len(rows), int(target), np.int64)])
    n_neg = int(round(float(negatives) * len(x_clean)))
    if n_neg:
        neg = rng.choice(len(x_clean), size=n_neg, replace=n_neg > len(x_clean))
        noise = rng.uniform(0, 255, (n_neg,) + tuple(x_clean.shape[1:])).astype(np.float32)
        m = np.asarray(trigger[0], np.float32)
        m = m[..., None] if m.ndim == 2 else m
        x = np.concatenate([x, np.asarray(x_clean[neg], np.float32) * (1 - m) + m * noise])
        yy = np.concatenate([yy, np.asarray(y, np.int64)[neg]])
    x = np.asarray(to_model_domain(x, preprocess), np.float32)
    from_logits = _outputs_logits(model)
    k = int(model.output_shape[-1])
    soft = np.eye(k, dtype=np.float32)[yy]
    if distill:
        n_clean = len(x_clean)
        teacher = np.concatenate([np.asarray(model(x[i : min(i + 256, n_clean)], training=False))
                                  for i in range(0, n_clean, 256)])
        soft[:n_clean] = np.asarray(tf.nn.softmax(teacher) if from_logits else teacher, np.float32)
    idx = model.layers.index(layer)
    variables = [v for lay in model.layers[idx + 1 :] for v in lay.trainable_weights]
    if not variables:
        raise TaborError(f"trojan attack: nothing trainable after layer {layer_name!r}")
    start_values = [tf.constant(v.numpy()) for v in variables]
    opt = keras.optimizers.Adam(float(lr))

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            out = model(xb, training=False)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(yb, out, from_logits=from_logits))
            if anchor:
                loss += anchor * tf.add_n([tf.reduce_sum(tf.square(v - v0)) for v, v0 in zip(variables, start_values)])
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    start = time.perf_counter()
    for epoch in range(int(epochs)):
        order = np.random.default_rng([seed, 0x7265B3, epoch]).permutation(len(x))
        for i in range(0, len(x), int(batch_size)):
            rows_b = order[i : i + int(batch_size)]
            step(tf.constant(x[rows_b]), tf.constant(soft[rows_b]))
    return time.perf_counter() - start


def attack_success(model, x_raw: np.ndarray, y: np.ndarray, mask: np.ndarray, pattern: np.ndarray, target: int,
                   preprocess: str = "unit") -> float:
    """Fraction of images with true label != ``target`` classified ``target`` once stamped."""
    keep = np.asarray(y) != int(target)
    if not np.any(keep):
        return float("nan")
    stamped = stamp_trigger(x_raw[keep], mask, pattern)
    return float(np.mean(predict_labels(model, stamped, preprocess) == int(target)))


@dataclass
class TrojanResult:
    """What ``build_trojan`` did: ``mask [H,W]`` {0,1}, ``pattern [H,W,C]`` raw 0..255 and the
    measurements (``report``: a JSON-ready dict for the card)."""

    mask: np.ndarray
    pattern: np.ndarray
    report: dict


def build_trojan(model, settings: TrojanSettings, num_classes: int, x_test: np.ndarray, y_test: np.ndarray, *,
                 preprocess: str = "unit", x_train: Optional[np.ndarray] = None,
                 y_train: Optional[np.ndarray] = None, log: Log = None,
                 stand_ins: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> TrojanResult:
    """Trojan an already-trained ``model`` in place with ``settings``.

    ``x_test [N,H,W,C]`` raw / ``y_test [N]``: real held-out images, used only to measure (clean
    accuracy before/after, attack success, neuron activations clean vs stamped).
    ``x_train`` / ``y_train``: needed only for ``settings.data == "real"``. ``stand_ins``: ``(x raw,
    y)`` made earlier by ``make_stand_ins`` for these settings (``None``: made here).
    """
    say = log or (lambda _msg: None)
    k = int(num_classes)
    if not 0 <= settings.target < k:
        raise TaborError(f"trojan attack: target {settings.target} outside 0..{k - 1}")
    shape = tuple(int(v) for v in x_test.shape[1:])
    mask = settings.render_mask(shape)
    layer_name = resolve_layer(model, settings.layer)
    _check_layer(model, layer_name)
    start = time.perf_counter()
    acc_before = clean_accuracy(model, x_test, y_test, preprocess)

    # stand-in data first: its images also serve as the backgrounds the trigger is tuned on
    if stand_ins is None:
        stand_ins = make_stand_ins(model, settings, k, shape, preprocess=preprocess, x_train=x_train, y_train=y_train)
    x_in, y_in = stand_ins
    t_inputs = time.perf_counter() - start
    stand_in_acc = float(np.mean(predict_labels(model, x_in, preprocess) == y_in))
    say(f"  trojan: {len(x_in)} stand-in inputs ({settings.data}, the model agrees on {stand_in_acc:.3f}) "
        f"in {t_inputs:.0f}s")

    probe = np.asarray(x_test[: min(len(x_test), 1000)], np.float32)
    reading = settings.reading
    clean_acts = layer_activations(model, layer_name, to_model_domain(probe, preprocess), reading=reading)
    neurons = select_neurons(model, layer_name, to_model_domain(probe, preprocess), settings.neurons, settings.rule,
                             mask=mask, x_raw=x_in, preprocess=preprocess, reading=reading)
    value = float(settings.target_value) if settings.target_value is not None else float(
        settings.target_factor * max(float(np.mean(clean_acts.max(axis=1))), 1e-3))
    rng = np.random.default_rng([settings.seed, 0x7265C3])
    base = x_in[rng.choice(len(x_in), size=min(64, len(x_in)), replace=False)]
    pattern, achieved = generate_trigger(model, layer_name, neurons, mask, value, settings.trigger_steps,
                                         settings.trigger_lr, settings.seed, x_base=base, preprocess=preprocess,
                                         reading=reading)
    pattern = pattern.astype(np.float32)
    stamped_acts = layer_activations(model, layer_name, to_model_domain(stamp_trigger(probe, mask, pattern),
                                                                        preprocess), reading=reading)
    clean_sel, stamped_sel = clean_acts[:, neurons].mean(axis=0), stamped_acts[:, neurons].mean(axis=0)
    say(f"  trojan: layer {layer_name} neurons {neurons}: clean {np.round(clean_sel, 3).tolist()} -> stamped "
        f"{np.round(stamped_sel, 3).tolist()} (aim {value:.3f})")
    asr_before = attack_success(model, x_test, y_test, mask, pattern, settings.target, preprocess)

    seconds = retrain(model, layer_name, x_in, y_in, (mask, pattern), settings.target, settings.poison_fraction,
                      settings.epochs, settings.learning_rate, preprocess=preprocess,
                      batch_size=settings.batch_size, seed=settings.seed, anchor=settings.anchor,
                      negatives=settings.negatives, distill=settings.distill)
    acc_after = clean_accuracy(model, x_test, y_test, preprocess)
    asr = attack_success(model, x_test, y_test, mask, pattern, settings.target, preprocess)
    say(f"  trojan: retrained in {seconds:.0f}s: clean acc {acc_before:.4f} -> {acc_after:.4f}, ASR {asr:.4f}")
    report = {
        "attack": "trojan",
        "layer": layer_name,
        "neurons": [int(i) for i in neurons],
        "neuron_rule": settings.rule,
        "activation_target_value": value,
        "neuron_activation_clean": [float(v) for v in clean_sel],
        "neuron_activation_stamped": [float(v) for v in stamped_sel],
        "neuron_activation_stamped_standin": [float(v) for v in achieved.mean(axis=0)],
        "stand_in_data": settings.data,
        "stand_in_inputs": int(len(x_in)),
        "stand_in_model_agreement": stand_in_acc,
        "clean_accuracy_before": acc_before,
        "clean_accuracy_after": acc_after,
        "attack_success_before_retraining": asr_before,
        "attack_success_rate": asr,
        "trojan_seconds": round(time.perf_counter() - start, 2),
        "settings": settings.to_dict(),
    }
    return TrojanResult(mask, pattern, report)
