"""Per-label trigger reverse engineering of Neural Cleanse with a ``tf.function`` training step.

For a candidate target label ``t`` the reference solves, over a one-channel mask ``m`` and a
raw-domain pattern ``p`` (both tanh-parametrised, see ``tabor_tf.trigger_vars``):

    min  sum_i CE(f(preprocess((1 - m) * x_i + m * p)), t) + B * cost * |m|_1

with Adam(lr 0.1, beta_1 0.5, beta_2 0.9) reset for every label, ``mini_batch`` batches of
``batch_size`` clean images per step, and the cost / early stop / best mask handled once per
step by ``schedule.update``. The reference differentiates the per-sample loss vector, which
TensorFlow sums over the batch; we minimise that same sum (the cost term counts once per sample).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import keras

import numpy as np
import tensorflow as tf

from tabor_tf import trigger_vars
from tabor_tf.preprocess import preprocess as preprocess_fn
from tabor_tf.preprocess import resolve_mode
from tabor_tf.stamping import stamp

from . import schedule as sched
from .presets import NCConfig

KERAS_EPSILON = 1e-7


class BatchStream:
    """Shuffled mini-batches of indices over ``n`` images, like Keras' ``ImageDataGenerator.flow``.

    A new permutation starts every epoch; the last batch of an epoch holds the ``n % batch_size``
    remaining images; epochs follow each other without a gap.
    """

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator, shuffle: bool = True):
        if n < 1:
            raise ValueError("BatchStream needs at least one image")
        self.n, self.batch_size, self.rng, self.shuffle = int(n), int(batch_size), rng, shuffle
        self._order = np.arange(self.n)
        self._pos = 0

    def next(self) -> np.ndarray:
        if self._pos == 0 and self.shuffle:
            self._order = self.rng.permutation(self.n)
        start = self._pos
        batch = self._order[start : start + self.batch_size]
        self._pos = start + self.batch_size if self.n > start + self.batch_size else 0
        return batch


def target_loss(logits, target, ce_form: str = "softmax_ce"):
    """Per-sample classification loss towards ``target``: ``logits [B,K]``, ``target`` int -> ``[B]``.

    ``softmax_ce``: softmax cross-entropy. ``reference_keras22``: the reference's swapped-argument
    Keras 2.2 ``categorical_crossentropy``: ``-sum_k p_k log(clip(onehot_k, eps, 1 - eps))``.
    """
    batch = tf.shape(logits)[0]
    labels = tf.fill([batch], tf.cast(target, tf.int32))
    if ce_form == "softmax_ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if ce_form == "reference_keras22":
        probs = tf.nn.softmax(logits, axis=-1)
        onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=probs.dtype)
        clipped = tf.clip_by_value(onehot, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        return -tf.reduce_sum(probs * tf.math.log(clipped), axis=-1)
    raise ValueError(f"unknown ce_form {ce_form!r}")


def mask_norm(mask_up, regularization: str = "l1"):
    """Reg term of the one-channel upsampled mask ``[H,W,1]``: L1 ``sum|m|`` or L2 ``sqrt(sum m^2)``.

    (The reference repeats the mask over the C channels and divides by C, which cancels.)
    """
    if regularization == "l1":
        return tf.reduce_sum(tf.abs(mask_up))
    if regularization == "l2":
        return tf.sqrt(tf.reduce_sum(tf.square(mask_up)))
    raise ValueError(f"unknown regularization {regularization!r}")


@dataclass
class ReverseOutcome:
    """The reverse-engineered trigger of one label (``mask [H,W]``, ``pattern [H,W,C]`` raw)."""

    label: int
    mask: np.ndarray
    mask_grid: np.ndarray  # the super-pixel mask [ceil(H/u), ceil(W/u)] before upsampling
    pattern: np.ndarray
    reg_best: float  # inf when no step reached the attack-success threshold
    reached_threshold: bool
    steps: int
    stop_reason: str  # "early_stop", "max_steps" or "time_budget" (``run(stop_at=...)`` cut it short)
    final_cost: float
    logs: list = field(default_factory=list)  # (step, ce, reg, acc, reg_best, cost) per step


class Reverser:
    """Holds the trigger variables, the optimiser and the compiled step for one victim.

    ``victim``: needs ``logits(x_model_domain) -> [B,K]`` (traceable), ``input_shape (H,W,C)``,
    ``num_classes``. ``x_raw``: clean images ``[N,H,W,C]`` raw 0..255.
    """

    def __init__(self, victim, x_raw, preprocess: str, config: NCConfig):
        self.victim = victim
        self.config = config
        self.strategy = tf.distribute.get_strategy()  # variables and steps live in its scope
        self.mode = resolve_mode(preprocess)
        h, w, c = (int(v) for v in victim.input_shape)
        self.shape = (h, w, c)
        self.grid_shape = trigger_vars.mask_grid_shape(h, w, config.upsample_size)
        self.x = tf.constant(np.asarray(x_raw, dtype=np.float32))
        self.n = int(self.x.shape[0])
        self.mask_t = tf.Variable(tf.zeros(self.grid_shape), name="nc_mask_tanh")
        self.pattern_t = tf.Variable(tf.zeros(self.shape), name="nc_pattern_tanh")
        self.cost = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="nc_cost")
        self.target = tf.Variable(0, dtype=tf.int32, trainable=False, name="nc_target")
        self.optimizer = keras.optimizers.Adam(  # Keras 3 (same update rule as Keras 2.2's)
            learning_rate=config.lr, beta_1=config.beta_1, beta_2=config.beta_2, epsilon=KERAS_EPSILON
        )
        self.params = [self.pattern_t, self.mask_t]
        self.optimizer.build(self.params)  # state exists before the first (traced) step
        self._opt_initial = [v.numpy() for v in self.optimizer.variables]
        self.train_step = tf.function(
            self._step, input_signature=[tf.TensorSpec([None], tf.int32)], reduce_retracing=True
        )
        self._success = tf.function(
            self._success_batch,
            input_signature=[
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([h, w, 1], tf.float32),
                tf.TensorSpec([h, w, c], tf.float32),
                tf.TensorSpec([], tf.int32),
            ],
        )

    # ----- trigger tensors -------------------------------------------------------------------
    def mask_upsampled(self):
        """Current mask ``[H,W,1]`` in (0,1)."""
        m = trigger_vars.mask_from_tanh(self.mask_t)
        h, w, _ = self.shape
        return trigger_vars.upsample_mask(m, self.config.upsample_size, h, w)

    def pattern_raw(self):
        """Current pattern ``[H,W,C]`` raw (0,255)."""
        return trigger_vars.pattern_from_tanh(self.pattern_t)

    # ----- compiled step ---------------------------------------------------------------------
    def _replica_step(self, idx):
        """This replica's share of the batch ``x[idx]``: loss, gradients, one Adam update.

        Returns sums over its images (ce, hits, count) and the mask norm. The loss is the
        reference's: the per-sample loss summed over the images, so the gradients that the
        optimiser all-reduces (sums) over replicas equal those of the whole batch on one device.
        """
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        share = (tf.shape(idx)[0] + replicas - 1) // replicas
        start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * share
        idx = idx[start : start + share]
        x_raw = tf.gather(self.x, idx)
        count = tf.cast(tf.shape(idx)[0], tf.float32)
        with tf.GradientTape() as tape:
            mask = self.mask_upsampled()
            x_adv = preprocess_fn(stamp(x_raw, mask, self.pattern_raw()), self.mode)
            logits = tf.cast(self.victim.logits(x_adv), tf.float32)
            ce = target_loss(logits, self.target, self.config.ce_form)
            reg = mask_norm(mask, self.config.regularization)
            loss = tf.reduce_sum(ce) + count * self.cost * reg
        grads = tape.gradient(loss, self.params)
        self.optimizer.apply_gradients(zip(grads, self.params))
        hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), self.target), tf.float32)
        return tf.reduce_sum(ce), tf.reduce_sum(hits), count, reg

    def _step(self, idx):
        """One optimisation step on the batch ``x[idx]`` -> (ce mean, reg, attack accuracy, batch size).

        Runs through the active ``tf.distribute`` strategy (the default one does nothing special).
        """
        out = self.strategy.run(self._replica_step, args=(idx,))
        ce_sum, hits, count = (self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out[:3])
        reg = self.strategy.experimental_local_results(out[3])[0]  # the same on every replica
        return ce_sum / count, reg, hits / count, count

    def _success_batch(self, idx, mask, pattern, target):
        x_adv = preprocess_fn(stamp(tf.gather(self.x, idx), mask, pattern), self.mode)
        pred = tf.argmax(self.victim.logits(x_adv), axis=-1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(tf.equal(pred, target), tf.float32))

    def attack_success(self, mask, pattern, label: int, batch_size: int = 256) -> float:
        """Fraction of all clean images sent to ``label`` by the trigger (``mask [H,W]``, raw pattern)."""
        m = tf.constant(np.asarray(mask, np.float32).reshape(self.shape[0], self.shape[1], 1))
        p = tf.constant(np.asarray(pattern, np.float32))
        hits = 0.0
        for start in range(0, self.n, batch_size):
            idx = tf.range(start, min(start + batch_size, self.n), dtype=tf.int32)
            hits += float(self._success(idx, m, p, tf.constant(int(label), tf.int32)))
        return hits / self.n

    # ----- per-label run ---------------------------------------------------------------------
    def reset(self, label: int, rng: np.random.Generator, cost: float) -> None:
        """Random mask / pattern init (NC's), cost, target, and a fresh Adam state."""
        mask_t, pattern_t = trigger_vars.random_init(rng, self.grid_shape, self.shape)
        self.mask_t.assign(mask_t)
        self.pattern_t.assign(pattern_t)
        self.cost.assign(cost)
        self.target.assign(int(label))
        for var, value in zip(self.optimizer.variables, self._opt_initial):
            var.assign(value)

    def _snapshot(self):
        mask_grid = trigger_vars.mask_from_tanh(self.mask_t).numpy()[..., 0]
        return self.mask_upsampled().numpy()[..., 0], mask_grid, self.pattern_raw().numpy()

    def run(
        self,
        label: int,
        rng: np.random.Generator,
        on_step: Optional[Callable[[int, dict], None]] = None,
        max_steps: Optional[int] = None,
        stop_at: Optional[float] = None,
    ) -> ReverseOutcome:
        """Reverse-engineer the trigger of ``label``; ``rng`` seeds the init and the batch order.

        ``max_steps``: stop after this many steps instead of ``config.steps`` (the budget scheduler's
        warm-up; the steps taken are exactly the first ones of a full run). ``stop_at``
        (``time.monotonic()`` seconds, ``--time-budget``): take no step after it; the outcome then
        stops with ``time_budget`` (its mask is the best one so far, as at any other stop).
        """
        cfg = self.config
        settings = cfg.schedule()
        state = sched.initial_state(settings)
        self.reset(label, rng, state.cost)
        stream = BatchStream(self.n, cfg.batch_size, rng)
        best = None
        logs = []
        stop_reason = "max_steps"
        for _ in range(cfg.steps if max_steps is None else min(int(max_steps), cfg.steps)):
            if stop_at is not None and state.step > 0 and time.monotonic() >= stop_at:
                stop_reason = "time_budget"
                break
            ce_sum = acc_sum = count = reg_sum = 0.0
            for _ in range(cfg.mini_batch):
                idx = stream.next()
                ce, reg, acc, b = self.train_step(tf.constant(idx, tf.int32))
                b = float(b)
                ce_sum += float(ce) * b
                acc_sum += float(acc) * b
                count += b
                reg_sum += float(reg)
            mean_ce, mean_acc, mean_reg = ce_sum / count, acc_sum / count, reg_sum / cfg.mini_batch
            cost_used = state.cost
            state, actions = sched.update(state, settings, mean_acc, mean_reg)
            if actions.save_best:
                best = self._snapshot()
            logs.append((state.step, mean_ce, mean_reg, mean_acc, state.reg_best, cost_used))
            if on_step is not None:
                on_step(
                    state.step,
                    {"ce": mean_ce, "reg": mean_reg, "acc": mean_acc, "cost": cost_used, "reg_best": state.reg_best},
                )
            if actions.stop:
                stop_reason = "early_stop"
                break
            if state.cost != cost_used:
                self.cost.assign(state.cost)
        reached = best is not None
        if best is None:  # no mask ever reached the threshold: the reference returns the last one
            best = self._snapshot()
        mask, mask_grid, pattern = best
        return ReverseOutcome(
            label=int(label),
            mask=mask.astype(np.float32),
            mask_grid=mask_grid.astype(np.float32),
            pattern=pattern.astype(np.float32),
            reg_best=float(state.reg_best),
            reached_threshold=reached,
            steps=int(state.step),
            stop_reason=stop_reason,
            final_cost=float(state.cost),
            logs=logs,
        )


def png8_l1(mask) -> float:
    """L1 norm of ``mask [H,W]`` as the reference's MAD script read it: ``sum(floor(255 m)) / 255``."""
    scaled = np.asarray(mask, np.float32) * np.float32(255.0)  # float32 as Keras held it
    return float(np.sum(np.floor(scaled).clip(0, 255), dtype=np.float64) / 255.0)
