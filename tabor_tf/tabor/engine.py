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

Chunks: the active labels are split so that one forward pass holds at most
``max_images_per_step`` images, and each chunk is padded (with copies of its first label, whose
results are discarded) to a multiple of ``label_bucket`` labels, so a scan sees only a few
distinct shapes. Once per round (``round_steps`` steps) the per-label bookkeeping is updated by
``augmentation.update`` and labels that converged leave the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from tabor_tf import trigger_vars
from tabor_tf.preprocess import preprocess as preprocess_fn
from tabor_tf.progress import ProgressFn, emit
from tabor_tf.stamping import crop_trigger, stamp_all, trigger_only

from . import augmentation as aug
from . import objective as obj
from .presets import TaborConfig

KERAS_EPSILON = 1e-7
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
    stop_reasons: list  # "converged" / "max_steps"
    round_success: np.ndarray  # [K] round attack success of the kept trigger
    reached: np.ndarray  # [K] bool: the kept trigger reached phi
    lambdas: np.ndarray  # [K,6] live lambdas at the end
    best_terms: np.ndarray  # [K,6] round term means of the kept trigger
    seconds: np.ndarray  # [K] wall time from the start until the label left the batch
    image_steps: int  # stamped + cropped + trigger-alone images that went through forward+backward
    wall_seconds: float
    history: list = field(default_factory=list)  # per round: {"round", "active", "success", ...}

    @property
    def images_per_second(self) -> float:
        return self.image_steps / self.wall_seconds if self.wall_seconds > 0 else 0.0


class TriggerEngine:
    """Holds the variables and the compiled step for one victim and one set of candidate labels.

    ``logits_fn(x_model_domain [N,H,W,C]) -> [N,K]`` (traceable, e.g. ``victim.logits``);
    ``x_raw [N,H,W,C]`` clean images raw 0..255; ``y_ref [N]`` the true class of each image (or
    the model's own prediction on it) for R3; ``labels`` the candidate targets.
    """

    def __init__(self, logits_fn: Callable, x_raw: np.ndarray, y_ref: np.ndarray, labels: Sequence[int],
                 config: TaborConfig, *, preprocess: str, seed: int = 0, strategy=None):
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
        self.order = BatchOrder(n, self.batch_size, self.seed)
        k = len(self.labels)
        inits = [initial_trigger(label_rng(self.seed, lab), self.grid, self.shape, config.mask_init_max,
                                 config.tanh_clip) for lab in self.labels]
        m0 = np.stack([i[0] for i in inits])
        p0 = np.stack([i[1] for i in inits])
        with self.strategy.scope():
            self.x = tf.constant(x_raw)
            self.y = tf.constant(np.asarray(y_ref, np.int32).reshape(-1))
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
        spec = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([self.batch_size], tf.int32)]
        self._step = tf.function(self._distributed_step, input_signature=spec)

    # ----- trigger tensors ----------------------------------------------------------------------
    def _mask_values(self, m_t):
        h, w, _ = self.shape
        return trigger_vars.upsample_mask(trigger_vars.mask_from_tanh(m_t), self.config.mask_upsample, h, w)

    # ----- the compiled step --------------------------------------------------------------------
    def _distributed_step(self, idx, n_real, batch):
        return self.strategy.run(self._step_fn, args=(idx, n_real, batch))

    def _losses(self, m_t, p_t, targets, lambdas, x, y):
        """Per-label objective and its parts for gathered rows: -> (loss [n], terms [n,6], ce [n], hits [n])."""
        cfg = self.config
        h, w, c = self.shape
        mask = self._mask_values(m_t)
        pattern = trigger_vars.pattern_from_tanh(p_t)
        n = tf.shape(m_t)[0]
        b, b3 = self.batch_size, self.blocking
        pieces = [tf.reshape(stamp_all(x, mask, pattern), [-1, h, w, c])]
        if b3 > 0:
            pieces.append(tf.reshape(crop_trigger(x[None, :b3], mask[:, None]), [-1, h, w, c]))
        pieces.append(trigger_only(mask, pattern))
        logits = tf.cast(self.logits_fn(preprocess_fn(tf.concat(pieces, axis=0), self.mode)), tf.float32)
        k_cls = tf.shape(logits)[-1]
        l_att = tf.reshape(logits[: n * b], [n, b, k_cls])
        l_alone = logits[-n:]
        ce = obj.attack_loss(l_att, targets)
        shape_terms = obj.shape_terms(mask, pattern, pattern_regularizer=cfg.pattern_regularizer,
                                      pattern_scale=cfg.pattern_scale)
        if b3 > 0:
            blocking = obj.blocking_loss(tf.reshape(logits[n * b: n * (b + b3)], [n, b3, k_cls]), y[:b3])
        else:
            blocking = tf.zeros([n])
        overlay = obj.overlay_loss(l_alone, targets)
        terms = tf.concat([shape_terms, blocking[:, None], overlay[:, None]], axis=1)
        return obj.total_loss(ce, terms, lambdas), terms, ce, obj.attack_hits(l_att, targets)

    def _step_fn(self, idx, n_real, batch):
        cfg = self.config
        x = tf.gather(self.x, batch)
        y = tf.gather(self.y, batch)
        targets = tf.gather(self.targets, idx)
        lambdas = tf.gather(self.lambdas, idx)
        m_t = tf.gather(self.m_t, idx)
        p_t = tf.gather(self.p_t, idx)
        with tf.GradientTape() as tape:
            tape.watch([m_t, p_t])
            loss, terms, ce, hits = self._losses(m_t, p_t, targets, lambdas, x, y)
            total = tf.reduce_sum(loss)  # label k's variables only see label k's loss
        g_m, g_p = tape.gradient(total, [m_t, p_t])
        t = tf.gather(self.t, idx)
        adam = dict(lr=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2)
        new_m, mm, vm, t1 = adam_update(m_t, g_m, tf.gather(self.m_m, idx), tf.gather(self.v_m, idx), t, **adam)
        new_p, mp, vp, _ = adam_update(p_t, g_p, tf.gather(self.m_p, idx), tf.gather(self.v_p, idx), t, **adam)
        if cfg.tanh_clip > 0:  # a float32 tanh saturates to exactly +-1 (zero gradient) beyond ~8.7
            new_m = tf.clip_by_value(new_m, -cfg.tanh_clip, cfg.tanh_clip)
            new_p = tf.clip_by_value(new_p, -cfg.tanh_clip, cfg.tanh_clip)
        real = idx[:n_real, None]
        for var, value in ((self.m_t, new_m), (self.v_m, vm), (self.m_m, mm), (self.p_t, new_p),
                           (self.m_p, mp), (self.v_p, vp), (self.t, t1)):
            var.scatter_nd_update(real, value[:n_real])
        stats = tf.concat([ce[:, None], terms, hits[:, None]], axis=1)
        self.sums.scatter_nd_update(real, (tf.gather(self.sums, idx) + stats)[:n_real])
        return tf.reduce_sum(loss[:n_real])

    # ----- rounds -------------------------------------------------------------------------------
    def active_positions(self) -> np.ndarray:
        return np.flatnonzero(self.state.active.numpy())

    def run_round(self) -> dict:
        """``round_steps`` steps for every active label, then the augmentation update."""
        cfg = self.config
        active = self.active_positions()
        steps = min(cfg.round_steps, cfg.steps - self.steps_done)
        chunks = plan_chunks(active, self.labels_per_chunk, cfg.label_bucket)
        chunk_tensors = [(tf.constant(p), tf.constant(r, tf.int32)) for p, r in chunks]
        self.sums.assign(tf.zeros_like(self.sums))
        for _ in range(steps):
            batch = tf.constant(self.order.next())
            for padded, n_real in chunk_tensors:
                self._step(padded, n_real, batch)
        self.steps_done += steps
        self.image_steps += steps * sum(len(p) for p, _ in chunks) * self.images_per_label
        means = self.sums.numpy() / max(steps, 1)
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
        return {"step": self.steps_done, "active": [self.labels[i] for i in active],
                "success": {self.labels[i]: round(float(success[i]), 4) for i in active},
                "improved": [self.labels[i] for i in np.flatnonzero(imp)]}

    def run(self, progress: ProgressFn = None, method: str = "tabor") -> EngineResult:
        """Rounds until every label converged or ran ``config.steps`` steps."""
        k = len(self.labels)
        start = time.perf_counter()
        stopped_at = np.zeros(k)
        steps_of = np.zeros(k, np.int64)
        history = []
        while self.steps_done < self.config.steps and self.state.active.numpy().any():
            before = self.state.active.numpy()
            history.append(self.run_round())
            after = self.state.active.numpy()
            now = time.perf_counter() - start
            left = before & ~after
            stopped_at[left] = now
            steps_of[before] = self.steps_done
            emit(progress, method=method, labels_done=int(k - after.sum()), labels_total=k,
                 step=self.steps_done, max_steps=int(self.config.steps), label=None,
                 message=f"round {len(history)}: {int(after.sum())} label(s) still optimising")
        wall = time.perf_counter() - start
        still = self.state.active.numpy()
        stopped_at[still] = wall
        codes = self.state.stop_code.numpy()
        reasons = [aug.STOP_REASONS[aug.MAX_STEPS] if still[i] else aug.STOP_REASONS[int(codes[i])]
                   for i in range(k)]
        return EngineResult(
            labels=list(self.labels),
            masks=self.best_mask.numpy()[..., 0],
            patterns=self.best_pattern.numpy(),
            steps=steps_of,
            stop_reasons=reasons,
            round_success=np.maximum(self.state.best_success.numpy(), 0.0),
            reached=self.state.reached.numpy(),
            lambdas=self.state.lambdas.numpy(),
            best_terms=self.best_terms.copy(),
            seconds=stopped_at,
            image_steps=int(self.image_steps),
            wall_seconds=wall,
            history=history,
        )


def optimise_triggers(logits_fn: Callable, x_raw, y_ref, labels: Sequence[int], config: TaborConfig, *,
                      preprocess: str, seed: int = 0, strategy=None, progress: ProgressFn = None) -> EngineResult:
    """Run the all-labels engine to the end (see ``TriggerEngine``)."""
    engine = TriggerEngine(logits_fn, x_raw, y_ref, labels, config, preprocess=preprocess, seed=seed,
                           strategy=strategy)
    return engine.run(progress)
