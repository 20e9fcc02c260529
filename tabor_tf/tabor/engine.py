"""Batched optimisation of TABOR triggers for all candidate labels at once.

Variables (created under ``strategy.scope()``): ``m_t [K,h,w,1]`` and ``p_t [K,H,W,C]`` (tanh
space, ``tabor_tf.trigger_vars``), Adam slots of the same shapes, a per-label Adam step count
``[K]``, live lambdas ``[K,6]``, round accumulators ``[K,8]`` and the best trigger so far
(``[K,H,W,1]`` mask, ``[K,H,W,C]`` raw pattern).

One step, inside one ``tf.function`` traced once (the label axis is dynamic):
gather the active labels' variables -> stamp the shared clean batch with every trigger
(``[n,B,H,W,C]`` -> ``[n*B,...]``), add the ``n*B3`` cropped images of R3 and the ``n`` trigger-alone
images of R4, run ONE forward pass -> per-label losses ``[n]`` -> their sum (so each label's
gradient is its own loss's) -> Adam on the gathered rows -> scatter the rows back.

Adam is implemented here as a few tensor ops with a step count per label (Keras 3's update
rule and epsilon): a label's update depends only on its own gradients and slots, so dropping
converged labels from the batch (gathering the active subset) never disturbs the others' state,
and running labels ``[a, b, c]`` together gives the masks of running each alone (same seed) up to
float noise. Each label's initialisation is seeded by ``(seed, label)``; the batch order by
``seed`` alone and shared by all labels, so it does not depend on which labels run together.
With ``start_seeds`` a position takes its own seed for both, and the step gathers each label's
rows of one batch per distinct seed (the fresh starts of the confirmation run this way).

Chunks: the active labels are split so that one forward pass holds at most
``max_images_per_step`` images, and each chunk is padded (with copies of its first label, whose
results are discarded) to a multiple of ``label_bucket`` labels, so a scan sees only a few
distinct shapes. Once per round (``round_steps`` steps) the per-label bookkeeping is updated by
``augmentation.update`` and labels that converged leave the batch.

Budget scheduler (``config.scheduler == "retire"``, ``scheduler.py``): after a warm-up, labels
whose provisional score (log L1 of the kept mask) lies far above the median also leave the batch
("retired"); they can no longer become low outliers of the MAD test. Two-stage scan
(``config.scheduler == "two-stage"``, ``two_stage.py``): after ``screen_rounds`` rounds the caller's
``screen`` scores every kept trigger with the real metric and the labels far above the median
stop ("screened").

Interruptions: ``run(checkpoint_path=..., fingerprint=...)`` saves the whole state (variables,
Adam slots and step counts, lambdas, augmentation and scheduler bookkeeping, the batch order's
RNG state and buffer, counters, per-label times) atomically to one ``.npz`` at round boundaries,
at most every ``config.checkpoint_seconds``, and a later ``run`` with the same file and
fingerprint continues from it: the steps that follow are the ones an uninterrupted run takes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from tabor_tf import trigger_vars
from tabor_tf.errors import TaborError
from tabor_tf.preprocess import preprocess as preprocess_fn
from tabor_tf.progress import ProgressFn, emit
from tabor_tf.stamping import crop_trigger, stamp_all, trigger_only

from . import augmentation as aug
from . import objective as obj
from . import scheduler as sched
from .presets import TaborConfig

KERAS_EPSILON = 1e-7
TIME_BUDGET = "time_budget"  # stop reason of labels a deadline (--time-budget) cut short
N_SUMS = 8  # attack CE, 6 terms, attack hits


def label_rng(seed: int, label: int) -> np.random.Generator:
    """The generator of one label's initialisation: depends on ``(seed, label)`` only."""
    return np.random.default_rng([int(seed), int(label), 0x7AB0])


def initial_trigger(rng: np.random.Generator, grid_shape, pattern_shape, mask_max: float = 0.1, clip: float = 0.0):
    """tanh-space ``(m_t, p_t)``: mask uniform in ``[0, mask_max]``, pattern uniform in raw ``[0, 255]``.

    ``mask_max = 1`` is Neural Cleanse's initialisation (``trigger_vars.random_init``). A small
    mask lets the attack grow the trigger only where it pays off while the lambdas are still
    small (docs/TABOR_CHOICES.md). ``clip > 0`` bounds both to ``[-clip, clip]``.
    """
    mask = rng.uniform(0.0, float(mask_max), size=grid_shape)
    pattern = rng.uniform(0.0, 255.0, size=pattern_shape)
    m_t, p_t = trigger_vars.mask_to_tanh(mask), trigger_vars.pattern_to_tanh(pattern)
    if clip > 0:
        m_t, p_t = np.clip(m_t, -clip, clip), np.clip(p_t, -clip, clip)
    return m_t.astype(np.float32), p_t.astype(np.float32)


class BatchOrder:
    """Fixed-size batches of image indices, a fresh permutation per epoch, seeded by ``seed`` only.

    Epochs are concatenated so every batch has exactly ``batch_size`` indices (one traced shape).
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = int(n), int(batch_size)
        self.rng = np.random.default_rng([int(seed), 0xBA7C])
        self._buffer = np.zeros(0, np.int32)

    def get_state(self) -> tuple:
        """``(rng state as JSON text, buffer [m] int32)``: everything ``next`` depends on."""
        return json.dumps(self.rng.bit_generator.state), self._buffer.copy()

    def set_state(self, rng_state: str, buffer) -> None:
        self.rng.bit_generator.state = json.loads(rng_state)
        self._buffer = np.asarray(buffer, np.int32).copy()

    def next(self) -> np.ndarray:
        while len(self._buffer) < self.batch_size:
            self._buffer = np.concatenate([self._buffer, self.rng.permutation(self.n).astype(np.int32)])
        batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size:]
        return batch


def plan_chunks(active: np.ndarray, labels_per_chunk: int, bucket: int) -> list:
    """Split active label positions into equal chunks of at most ``labels_per_chunk`` labels,
    each padded with copies of its first entry to a multiple of ``bucket`` (never beyond the cap
    unless the chunk itself is that big). Returns ``[(padded int32 [m], n_real)]``.
    """
    active = np.asarray(active, np.int32)
    if len(active) == 0:
        return []
    cap = max(1, int(labels_per_chunk))
    count = -(-len(active) // cap)
    size = -(-len(active) // count)
    padded_size = min(-(-size // bucket) * bucket, max(cap, size))
    chunks = []
    for start in range(0, len(active), size):
        part = active[start:start + size]
        pad = np.full(padded_size - len(part), part[0], np.int32)
        chunks.append((np.concatenate([part, pad]), len(part)))
    return chunks


def adam_update(var, grad, m, v, t, *, lr: float, beta_1: float, beta_2: float, eps: float = KERAS_EPSILON):
    """Keras 3's Adam rule with a per-row step count: rows ``[n, ...]``, ``t [n]`` (steps already
    taken). Returns ``(var', m', v', t + 1)``.
    """
    t1 = t + 1.0
    shape = tf.concat([tf.shape(t1), tf.ones([tf.rank(var) - 1], tf.int32)], axis=0)
    alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, t1)) / (1.0 - tf.pow(beta_1, t1))
    m = m + (grad - m) * (1.0 - beta_1)
    v = v + (tf.square(grad) - v) * (1.0 - beta_2)
    var = var - tf.reshape(alpha, shape) * m / (tf.sqrt(v) + eps)
    return var, m, v, t1


@dataclass
class EngineResult:
    """Best triggers and bookkeeping, in the order of ``labels``."""

    labels: list
    masks: np.ndarray  # [K,H,W] in [0,1]
    patterns: np.ndarray  # [K,H,W,C] raw 0..255
    steps: np.ndarray  # [K] optimisation steps each label ran
    stop_reasons: list  # "converged" / "max_steps" / "retired" (budget scheduler) / "screened" (two-stage)
    round_success: np.ndarray  # [K] round attack success of the kept trigger
    reached: np.ndarray  # [K] bool: the kept trigger reached phi
    lambdas: np.ndarray  # [K,6] live lambdas at the end
    best_terms: np.ndarray  # [K,6] round term means of the kept trigger
    seconds: np.ndarray  # [K] wall time from the start until the label left the batch
    image_steps: int  # stamped + cropped + trigger-alone images that went through forward+backward
    wall_seconds: float
    history: list = field(default_factory=list)  # per round: {"round", "active", "success", ...}
    resumed_at_step: int = 0  # > 0: this run continued a saved state from that step

    @property
    def time_limited(self) -> bool:
        """The deadline ended the search before every label stopped."""
        return TIME_BUDGET in self.stop_reasons

    @property
    def images_per_second(self) -> float:
        return self.image_steps / self.wall_seconds if self.wall_seconds > 0 else 0.0


class TriggerEngine:
    """Holds the variables and the compiled step for one victim and one set of candidate labels.

    ``logits_fn(x_model_domain [N,H,W,C]) -> [N,K]`` (traceable, e.g. ``victim.logits``);
    ``x_raw [N,H,W,C]`` clean images raw 0..255; ``y_ref [N]`` the true class of each image (or
    the model's own prediction on it) for R3; ``labels`` the candidate targets (a label may appear
    more than once). ``start_seeds``: one seed per position of ``labels`` for its initial trigger
    and its batch order (default ``seed`` for all); each position then follows exactly the search
    it would follow alone with its seed (up to float noise), so several starts of one label run as
    one search: the fresh-start confirmation (``confirm.py``).
    """

    def __init__(self, logits_fn: Callable, x_raw: np.ndarray, y_ref: np.ndarray, labels: Sequence[int],
                 config: TaborConfig, *, preprocess: str, seed: int = 0, strategy=None,
                 record_kept: bool = False, start_seeds: Optional[Sequence[int]] = None):
        self.logits_fn = logits_fn
        self.config = config
        self.mode = preprocess
        self.seed = int(seed)
        self.labels = [int(v) for v in labels]
        self.strategy = strategy or tf.distribute.get_strategy()
        x_raw = np.asarray(x_raw, np.float32)
        n, h, w, c = x_raw.shape
        self.shape = (h, w, c)
        self.grid = trigger_vars.mask_grid_shape(h, w, config.mask_upsample)
        self.batch_size = min(int(config.batch_size), n)
        self.blocking = min(int(config.blocking_batch_size), self.batch_size)
        self.images_per_label = self.batch_size + self.blocking + 1
        self.labels_per_chunk = max(1, int(config.max_images_per_step) // self.images_per_label)
        self.settings = aug.settings_from_config(config)
        k = len(self.labels)
        starts = [self.seed] * k if start_seeds is None else [int(v) for v in start_seeds]
        if len(starts) != k:
            raise TaborError(f"start_seeds needs one seed per label position ({k}), got {len(starts)}")
        order_seeds = list(dict.fromkeys(starts))  # one batch order per distinct seed, first seen first
        self.orders = [BatchOrder(n, self.batch_size, s) for s in order_seeds]
        self.order = self.orders[0]
        self.order_of = tf.constant(np.asarray([order_seeds.index(s) for s in starts], np.int32))
        inits = [initial_trigger(label_rng(start, lab), self.grid, self.shape, config.mask_init_max,
                                 config.tanh_clip) for start, lab in zip(starts, self.labels)]
        m0 = np.stack([i[0] for i in inits])
        p0 = np.stack([i[1] for i in inits])
        with self.strategy.scope():
            y_ref = np.asarray(y_ref, np.int32).reshape(-1)
            if self.strategy.num_replicas_in_sync > 1:  # a copy per replica: each gathers its share locally
                self.x = tf.Variable(x_raw, trainable=False, name="tabor_clean_images")
                self.y = tf.Variable(y_ref, trainable=False, name="tabor_reference_labels")
            else:
                self.x, self.y = tf.constant(x_raw), tf.constant(y_ref)
            self.targets = tf.constant(np.asarray(self.labels, np.int32))
            self.m_t = tf.Variable(m0, name="tabor_mask_tanh")
            self.p_t = tf.Variable(p0, name="tabor_pattern_tanh")
            self.m_m = tf.Variable(tf.zeros_like(m0), name="tabor_adam_m_mask")
            self.v_m = tf.Variable(tf.zeros_like(m0), name="tabor_adam_v_mask")
            self.m_p = tf.Variable(tf.zeros_like(p0), name="tabor_adam_m_pattern")
            self.v_p = tf.Variable(tf.zeros_like(p0), name="tabor_adam_v_pattern")
            self.t = tf.Variable(tf.zeros([k]), name="tabor_adam_steps")
            self.lambdas = tf.Variable(np.tile(np.asarray(config.lambdas, np.float32)[None], (k, 1)),
                                       name="tabor_lambdas")
            self.sums = tf.Variable(tf.zeros([k, N_SUMS]), name="tabor_round_sums")
            self.best_mask = tf.Variable(self._mask_values(m0), name="tabor_best_mask")
            self.best_pattern = tf.Variable(trigger_vars.pattern_from_tanh(p0), name="tabor_best_pattern")
        self.state = aug.initial_state(k, self.settings)
        self.best_terms = np.full((k, 6), np.nan, np.float32)
        self.steps_done = 0
        self.image_steps = 0
        self.retire_settings = None
        if getattr(config, "scheduler", "none") == "retire":
            self.retire_settings = sched.RetireSettings(int(config.scheduler_warmup_rounds),
                                                        float(config.scheduler_margin),
                                                        float(config.scheduler_max_fraction))
        self.retired = np.zeros(k, bool)
        self.screened = np.zeros(k, bool)  # two-stage scan: labels the screen stopped (two_stage.py)
        self.screen_done = False
        self.score_log = np.zeros((0, k))  # provisional score of every label after each round (scheduler)
        self.rounds_done = 0
        self.history = []
        # record_kept: every change of a kept trigger, ``(round, positions [m], masks [m,H,W], patterns
        # [m,H,W,C], reached [m])`` (benchmarks/stopping_rules.py replays stopping rules from it offline)
        self.kept_log = [] if record_kept else None
        self.stopped_at = np.zeros(k)  # seconds from the start until each label left the batch
        self.steps_of = np.zeros(k, np.int64)  # optimisation steps each label ran
        self.elapsed = 0.0  # optimisation seconds before this process (restored checkpoints)
        spec = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([len(self.orders), self.batch_size], tf.int32)]
        self._step = tf.function(self._distributed_step, input_signature=spec)

    # ----- trigger tensors ----------------------------------------------------------------------
    def _mask_values(self, m_t):
        h, w, _ = self.shape
        return trigger_vars.upsample_mask(trigger_vars.mask_from_tanh(m_t), self.config.mask_upsample, h, w)

    # ----- the compiled step --------------------------------------------------------------------
    def _distributed_step(self, idx, n_real, batch):
        """One step of the labels ``idx`` on the clean batch ``batch``: every replica takes its share
        of the images (``_step_fn``), the gradients and statistics are all-reduced (sums), and the
        Adam update is applied once, in cross-replica context, to every copy of the variables."""
        out = self.strategy.run(self._step_fn, args=(idx, n_real, batch))
        g_m, g_p, stats, loss = (self.strategy.experimental_local_results(v)[0] for v in out)
        self._apply(idx, n_real, g_m, g_p, stats)
        return tf.reduce_sum(loss[:n_real])

    @staticmethod
    def _share(size: int, replicas: int, replica):
        """``(start, end, weight)`` of this replica's share of ``size`` images: a contiguous slice
        when there are at least as many images as replicas (weight = share / size, so the shares'
        means add up to the whole batch's mean), else all of them on every replica (weight 1 / R)."""
        if replicas == 1 or size < replicas:
            return 0, size, tf.constant(1.0 / replicas)
        start = (replica * size) // replicas
        end = ((replica + 1) * size) // replicas
        return start, end, tf.cast(end - start, tf.float32) / float(size)

    def _losses(self, m_t, p_t, targets, lambdas, x, y, x_block=None, weights=(1.0, 1.0, 1.0)):
        """Per-label objective and its parts for gathered rows: -> (loss [n], terms [n,6], ce [n], hits [n]).

        ``x [b,H,W,C]`` the attack images, ``x_block``/``y [b3]`` the blocking (R3) images (default:
        the first ``blocking`` of ``x`` / ``y``). ``weights = (attack, blocking, rest)`` scale the
        batch means, R3, and the model-free terms + R4 of this replica's share (all 1 on one device).
        """
        cfg = self.config
        h, w, c = self.shape
        mask = self._mask_values(m_t)
        pattern = trigger_vars.pattern_from_tanh(p_t)
        n = tf.shape(m_t)[0]
        own = x.shape.rank == 5  # [n,b,H,W,C]: each label its own images (several batch orders)
        axis = 1 if own else 0
        b = x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]  # static on one replica
        w_att, w_block, w_rest = weights
        if x_block is None:
            x_block, y = (x[:, : self.blocking], y[:, : self.blocking]) if own else (x[: self.blocking], y[: self.blocking])
        b3 = x_block.shape[axis] if x_block.shape[axis] is not None else tf.shape(x_block)[axis]
        pieces = [tf.reshape(stamp_all(x, mask, pattern), [-1, h, w, c])]
        if self.blocking > 0:
            blocked = x_block if own else x_block[None]
            pieces.append(tf.reshape(crop_trigger(blocked, mask[:, None]), [-1, h, w, c]))
        pieces.append(trigger_only(mask, pattern))
        x_model = preprocess_fn(tf.concat(pieces, axis=0), self.mode)
        logits = tf.cast(self.logits_fn(x_model), tf.float32)  # a float16 twin (distribute) casts back
        k_cls = tf.shape(logits)[-1]
        l_att = tf.reshape(logits[: n * b], [n, b, k_cls])
        l_alone = logits[-n:]
        ce = obj.attack_loss(l_att, targets) * w_att
        shape_terms = obj.shape_terms(mask, pattern, pattern_regularizer=cfg.pattern_regularizer,
                                      pattern_scale=cfg.pattern_scale) * w_rest
        if self.blocking > 0:
            blocking = obj.blocking_loss(tf.reshape(logits[n * b: n * (b + b3)], [n, b3, k_cls]), y) * w_block
        else:
            blocking = tf.zeros([n])
        overlay = obj.overlay_loss(l_alone, targets, float(cfg.overlay_hinge)) * w_rest
        terms = tf.concat([shape_terms, blocking[:, None], overlay[:, None]], axis=1)
        return obj.total_loss(ce, terms, lambdas), terms, ce, obj.attack_hits(l_att, targets) * w_att

    def _step_fn(self, idx, n_real, batch):
        """Replica side of a step: this replica's share of the batch -> all-reduced
        ``(grad m_t [n,...], grad p_t [n,...], stats [n,8], loss [n])``."""
        ctx = tf.distribute.get_replica_context()
        replicas = int(ctx.num_replicas_in_sync)
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32) if replicas > 1 else 0
        a0, a1, w_att = self._share(self.batch_size, replicas, replica)
        k0, k1, w_block = self._share(self.blocking, replicas, replica)
        if len(self.orders) > 1:  # each label's rows of the batch: [n, batch_size]
            rows = tf.gather(batch, tf.gather(self.order_of, idx))
            att, block = rows[:, a0:a1], rows[:, :self.blocking][:, k0:k1]
        else:
            att, block = batch[0][a0:a1], batch[0][:self.blocking][k0:k1]
        targets = tf.gather(self.targets, idx)
        lambdas = tf.gather(self.lambdas, idx)
        m_t = tf.gather(self.m_t, idx)
        p_t = tf.gather(self.p_t, idx)
        with tf.GradientTape() as tape:
            tape.watch([m_t, p_t])
            loss, terms, ce, hits = self._losses(
                m_t, p_t, targets, lambdas, tf.gather(self.x, att), tf.gather(self.y, block),
                x_block=tf.gather(self.x, block), weights=(w_att, w_block, tf.constant(1.0 / replicas)))
            total = tf.reduce_sum(loss)  # label k's variables only see label k's loss
        g_m, g_p = tape.gradient(total, [m_t, p_t])
        stats = tf.concat([ce[:, None], terms, hits[:, None]], axis=1)
        out = (g_m, g_p, stats, loss)
        if replicas > 1:
            out = tuple(ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(out)))
        return out

    def _apply(self, idx, n_real, g_m, g_p, stats):
        """Adam on the gathered rows, scattered back (``scatter_update``: every replica's copy)."""
        cfg = self.config
        m_t = tf.gather(self.m_t, idx)
        p_t = tf.gather(self.p_t, idx)
        t = tf.gather(self.t, idx)
        adam = dict(lr=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2)
        new_m, mm, vm, t1 = adam_update(m_t, g_m, tf.gather(self.m_m, idx), tf.gather(self.v_m, idx), t, **adam)
        new_p, mp, vp, _ = adam_update(p_t, g_p, tf.gather(self.m_p, idx), tf.gather(self.v_p, idx), t, **adam)
        if cfg.tanh_clip > 0:  # a float32 tanh saturates to exactly +-1 (zero gradient) beyond ~8.7
            new_m = tf.clip_by_value(new_m, -cfg.tanh_clip, cfg.tanh_clip)
            new_p = tf.clip_by_value(new_p, -cfg.tanh_clip, cfg.tanh_clip)
        real = idx[:n_real]
        for var, value in ((self.m_t, new_m), (self.v_m, vm), (self.m_m, mm), (self.p_t, new_p),
                           (self.m_p, mp), (self.v_p, vp), (self.t, t1),
                           (self.sums, tf.gather(self.sums, idx) + stats)):
            var.scatter_update(tf.IndexedSlices(value[:n_real], real))

    # ----- rounds -------------------------------------------------------------------------------
    def active_positions(self) -> np.ndarray:
        return np.flatnonzero(self.state.active.numpy())

    def run_round(self, out_of_time: Optional[Callable[[int], bool]] = None) -> Optional[dict]:
        """``round_steps`` steps for every active label, then the augmentation update.

        ``out_of_time(image_steps of the next step) -> bool`` is asked before every step: True ends
        the round early (the update then uses the steps taken, and the record says ``"cut"``), or
        skips it when no step was taken (-> None).
        """
        cfg = self.config
        active = self.active_positions()
        steps = min(cfg.round_steps, cfg.steps - self.steps_done)
        chunks = plan_chunks(active, self.labels_per_chunk, cfg.label_bucket)
        chunk_tensors = [(tf.constant(p), tf.constant(r, tf.int32)) for p, r in chunks]
        per_step = sum(len(p) for p, _ in chunks) * self.images_per_label
        self.sums.assign(tf.zeros_like(self.sums))
        taken = 0
        for _ in range(steps):
            if out_of_time is not None and out_of_time(per_step):
                break
            batch = tf.constant(np.stack([order.next() for order in self.orders]))
            for padded, n_real in chunk_tensors:
                self._step(padded, n_real, batch)
            taken += 1
            self.image_steps += per_step
        if taken == 0:
            return None
        self.steps_done += taken
        means = self.sums.numpy() / taken
        terms, success = means[:, 1:7], means[:, 7]
        state, improved = aug.update(self.state, terms, success, self.settings)
        self.state = state
        self.lambdas.assign(state.lambdas)
        imp = improved.numpy()
        if imp.any():
            sel = tf.constant(imp)
            self.best_mask.assign(tf.where(sel[:, None, None, None], self._mask_values(self.m_t), self.best_mask))
            self.best_pattern.assign(tf.where(sel[:, None, None, None], trigger_vars.pattern_from_tanh(self.p_t),
                                              self.best_pattern))
            self.best_terms[imp] = terms[imp]
            if self.kept_log is not None:
                pos = np.flatnonzero(imp)
                self.kept_log.append((self.rounds_done + 1, pos, self.best_mask.numpy()[pos, ..., 0],
                                      self.best_pattern.numpy()[pos], self.state.reached.numpy()[pos]))
        self.rounds_done += 1
        retired_now = self._retire()
        record = {"step": self.steps_done, "active": [self.labels[i] for i in active],
                  "success": {self.labels[i]: round(float(success[i]), 4) for i in active},
                  "improved": [self.labels[i] for i in np.flatnonzero(imp)],
                  "retired": [self.labels[i] for i in np.flatnonzero(retired_now)]}
        if taken < steps:
            record["cut"] = taken
        return record

    def kept_triggers(self) -> tuple:
        """The kept (best so far) triggers: ``(masks [K,H,W] in [0,1], patterns [K,H,W,C] raw 0..255)``."""
        return self.best_mask.numpy()[..., 0], self.best_pattern.numpy()

    def screen_due(self) -> bool:
        """Two-stage scan: the screen has not run yet and every label has had its screening rounds."""
        return (self.config.scheduler == "two-stage" and not self.screen_done
                and self.rounds_done >= int(self.config.screen_rounds))

    def apply_screen(self, keep) -> list:
        """Stop the active labels that ``keep [K]`` (bool) leaves out -> their labels."""
        active = self.state.active.numpy()
        out = active & ~np.asarray(keep, bool)
        self.screened |= out
        self.screen_done = True
        if out.any():
            self.state = self.state._replace(active=tf.constant(active & ~out))
        return [self.labels[i] for i in np.flatnonzero(out)]

    def _retire(self) -> np.ndarray:
        """The budget scheduler's decision after a round: retired labels leave the batch -> ``[K]`` bool."""
        k = len(self.labels)
        if self.retire_settings is None:
            return np.zeros(k, bool)
        scores = sched.provisional_scores(tf.reduce_sum(self.best_mask, axis=[1, 2, 3]).numpy())
        self.score_log = np.concatenate([self.score_log, scores[None]])
        earlier = self.score_log[max(0, len(self.score_log) - 1 - self.retire_settings.window)]
        active = self.state.active.numpy()
        out = sched.retire(scores, earlier, self.config.max_rounds - self.rounds_done, active,
                           self.state.reached.numpy(), self.retired, self.rounds_done, self.retire_settings)
        if out.any():
            self.retired |= out
            self.state = self.state._replace(active=tf.constant(active & ~out))
        return out

    # ----- checkpoints --------------------------------------------------------------------------
    def _variables(self) -> dict:
        return {"m_t": self.m_t, "p_t": self.p_t, "m_m": self.m_m, "v_m": self.v_m, "m_p": self.m_p,
                "v_p": self.v_p, "t": self.t, "lambdas": self.lambdas, "best_mask": self.best_mask,
                "best_pattern": self.best_pattern}

    def save_state(self, path, fingerprint: str = "") -> Path:
        """Write the whole optimisation state atomically to ``path`` (``.npz``), at a round boundary."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rng_state, buffer = self.order.get_state()
        more = [order.get_state() for order in self.orders[1:]]  # the other batch orders (start_seeds)
        arrays = {f"var_{k}": v.numpy() for k, v in self._variables().items()}
        arrays.update({f"aug_{k}": np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                       for k, v in self.state._asdict().items()})
        meta = {"fingerprint": fingerprint, "labels": self.labels, "steps_done": int(self.steps_done),
                "image_steps": int(self.image_steps), "rounds_done": int(self.rounds_done),
                "rng_state": rng_state, "more_rng_states": [state for state, _ in more],
                "history": self.history, "elapsed": float(self.elapsed)}
        arrays.update({f"order_buffer_{g + 1}": buf for g, (_, buf) in enumerate(more)})
        arrays.update(best_terms=self.best_terms, retired=self.retired, score_log=self.score_log,
                      screened=self.screened, screen_done=np.array(self.screen_done),
                      stopped_at=self.stopped_at,
                      steps_of=self.steps_of, order_buffer=buffer, meta=np.array(json.dumps(meta)))
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def load_state(self, path, fingerprint: str = "") -> bool:
        """Restore a state written by ``save_state`` for the same fingerprint and labels -> True if done."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("fingerprint") != fingerprint or meta.get("labels") != self.labels \
                        or len(meta.get("more_rng_states", [])) != len(self.orders) - 1:
                    return False
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            return False
        for name, var in self._variables().items():
            var.assign(arrays[f"var_{name}"])
        self.state = aug.AugmentState(**{f: tf.constant(arrays[f"aug_{f}"]) for f in aug.AugmentState._fields})
        self.best_terms = arrays["best_terms"].astype(np.float32)
        self.retired = arrays["retired"].astype(bool)
        self.screened = arrays["screened"].astype(bool)
        self.screen_done = bool(arrays["screen_done"])
        self.score_log = arrays["score_log"].astype(np.float64)
        self.stopped_at = arrays["stopped_at"].astype(np.float64)
        self.steps_of = arrays["steps_of"].astype(np.int64)
        self.order.set_state(meta["rng_state"], arrays["order_buffer"])
        for g, order in enumerate(self.orders[1:]):
            order.set_state(meta["more_rng_states"][g], arrays[f"order_buffer_{g + 1}"])
        self.steps_done, self.image_steps = int(meta["steps_done"]), int(meta["image_steps"])
        self.rounds_done, self.history = int(meta["rounds_done"]), list(meta["history"])
        self.elapsed = float(meta["elapsed"])
        return True

    def run(self, progress: ProgressFn = None, method: str = "tabor", *, checkpoint_path=None,
            fingerprint: str = "", deadline: Optional[float] = None,
            reserve: Optional[Callable[[float], float]] = None,
            screen: Optional[Callable[["TriggerEngine"], np.ndarray]] = None) -> EngineResult:
        """Rounds until every label converged, was retired or screened out, or ran ``config.steps`` steps.

        ``checkpoint_path``: resume from this state file when it holds the same ``fingerprint``,
        and save the state there at most every ``config.checkpoint_seconds`` (at round ends) and
        at the end. ``deadline`` (``time.monotonic()`` seconds): take no step that would end after
        it (checked before every step; the steps after the first, which traces, measure the speed),
        cutting the round short; ``reserve(images_per_second)``: seconds to keep free before the deadline for
        what follows the search (the scoring). Labels still running then stop with ``time_budget``.
        ``screen(engine) -> keep [K] bool``: the two-stage scan's screen (``config.scheduler ==
        "two-stage"``), called once after ``config.screen_rounds`` rounds; labels it leaves out
        stop with ``screened`` (``two_stage.py``).
        """
        k = len(self.labels)
        every = float(getattr(self.config, "checkpoint_seconds", 30.0))
        resumed_at = 0
        if checkpoint_path is not None and self.load_state(checkpoint_path, fingerprint):
            resumed_at = self.steps_done
            emit(progress, method=method, labels_done=int(k - self.state.active.numpy().sum()), labels_total=k,
                 step=self.steps_done, max_steps=int(self.config.steps), label=None,
                 message=f"resumed the trigger search at step {self.steps_done} from {checkpoint_path}")
        start = time.perf_counter() - self.elapsed
        last_save = run_start = time.perf_counter()
        time_limited = False
        images_before = self.image_steps

        mark = {}  # time and image-steps after this run's first step (which traces the step function)

        def out_of_time(next_images: int) -> bool:
            if deadline is None or self.image_steps == images_before:
                return False
            if not mark:  # the second step runs if a step as slow as the first (tracing) still fits
                mark.update(t=time.perf_counter(), n=self.image_steps)
                return time.monotonic() + (mark["t"] - run_start) > deadline
            done = self.image_steps - mark["n"]
            ips = done / max(time.perf_counter() - mark["t"], 1e-6)
            spare = (reserve(ips) if reserve is not None else 0.0) + 1.5 * next_images / ips
            return time.monotonic() + spare > deadline

        while self.steps_done < self.config.steps and self.state.active.numpy().any():
            before = self.state.active.numpy()
            record = self.run_round(out_of_time if deadline is not None else None)
            if record is None or "cut" in record:
                time_limited = True
            if record is None:
                break
            self.history.append(record)
            if screen is not None and self.screen_due():
                self.history[-1]["screened"] = self.apply_screen(screen(self))
            after = self.state.active.numpy()
            now = time.perf_counter() - start
            self.stopped_at[before & ~after] = now
            self.steps_of[before] = self.steps_done
            self.elapsed = now
            if checkpoint_path is not None and time.perf_counter() - last_save >= every:
                self.save_state(checkpoint_path, fingerprint)
                last_save = time.perf_counter()
            emit(progress, method=method, labels_done=int(k - after.sum()), labels_total=k,
                 step=self.steps_done, max_steps=int(self.config.steps), label=None,
                 message=f"round {len(self.history)}: {int(after.sum())} label(s) still optimising")
            if time_limited:
                break
        wall = time.perf_counter() - start
        self.elapsed = wall
        still = self.state.active.numpy()
        self.stopped_at[still] = wall
        if checkpoint_path is not None:
            self.save_state(checkpoint_path, fingerprint)
        codes = self.state.stop_code.numpy()
        reasons = ["retired" if self.retired[i] else "screened" if self.screened[i] else
                   (TIME_BUDGET if time_limited else aug.STOP_REASONS[aug.MAX_STEPS]) if still[i]
                   else aug.STOP_REASONS[int(codes[i])]
                   for i in range(k)]
        return EngineResult(
            labels=list(self.labels),
            masks=self.best_mask.numpy()[..., 0],
            patterns=self.best_pattern.numpy(),
            steps=self.steps_of.copy(),
            stop_reasons=reasons,
            round_success=np.maximum(self.state.best_success.numpy(), 0.0),
            reached=self.state.reached.numpy(),
            lambdas=self.state.lambdas.numpy(),
            best_terms=self.best_terms.copy(),
            seconds=self.stopped_at.copy(),
            image_steps=int(self.image_steps),
            wall_seconds=wall,
            history=list(self.history),
            resumed_at_step=int(resumed_at),
        )


def optimise_triggers(logits_fn: Callable, x_raw, y_ref, labels: Sequence[int], config: TaborConfig, *,
                      preprocess: str, seed: int = 0, strategy=None, progress: ProgressFn = None) -> EngineResult:
    """Run the all-labels engine to the end (see ``TriggerEngine``)."""
    engine = TriggerEngine(logits_fn, x_raw, y_ref, labels, config, preprocess=preprocess, seed=seed,
                           strategy=strategy)
    return engine.run(progress)
