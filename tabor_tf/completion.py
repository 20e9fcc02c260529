"""Trigger completion: from the *minimal* restored trigger of a flagged label to the whole trigger.

Both detectors minimise the mask, so what they restore is the smallest part of the real trigger
that still flips the model: a few pixels of a 6x6 square are enough, and the restored mask covers
20-30% of the true one (F1 ~0.3 on the evaluation zoo). Completion *peels*: it forbids the pixels
found so far and searches the same label again; while the real trigger has unused pixels left,
the next search finds another small subset of them. Before peeling, the restored trigger is
*pruned*: the smallest trigger inside its own support, searched with the mask's L1 as the only
term, replaces it when it works at half the cost or less (TABOR's R4 asks the trigger alone, on
a black image, to be classified as the target; on MNIST-like inputs, black canvases, that grows
every restored trigger into a drawing of the class around the real trigger). It stops when the cheapest trigger left is
no longer small (the model's natural features of the label, not the backdoor) or no longer
works. The completed trigger is the union of the accepted rounds. The verdict never depends on
it: it runs after the decision, only for flagged labels (docs/TABOR_CHOICES.md, "Trigger
completion").

Shapes: images ``x_raw`` ``[N, H, W, C]`` raw 0..255; masks ``[H, W]`` in [0, 1]; patterns
``[H, W, C]`` raw 0..255.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .errors import TaborError
from .stamping import stamp


@dataclass(frozen=True)
class CompletionSettings:
    """``rounds``: peel rounds at most after the first trigger; ``steps``: Adam steps per round;
    ``batch_size`` images per step; ``lr`` Adam's learning rate (tanh space); ``attack_threshold``:
    attack success a round's trigger must reach on held-out images; ``max_growth``: a round is
    accepted when its mask L1 is at most this many times the first trigger's (used only when the
    natural level is unknown); ``natural_fraction``: with ``natural_l1`` (the median mask L1 of the
    scan's labels: what the model's natural features cost), a round is accepted when its mask L1
    is at most this fraction of it; ``support_level``:
    mask values at least this fraction of the mask's maximum are the pixels a round forbids next;
    ``search_threshold``: batch attack success that counts as working during the search (above
    ``attack_threshold``, so the kept mask is not on the edge); ``init_cost``: the L1 weight's
    first value (raised / lowered by the search's attack success, as in NC); ``prune_ratio``: before
    peeling, the smallest trigger *inside* the restored one's support is searched (no other
    term than the mask's L1: what R4 or the augmentation added to it without need falls away);
    it replaces the restored trigger when it works and its mask L1 is at most this fraction of
    the restored one's (0: no pruning)."""

    rounds: int = 6
    steps: int = 150
    batch_size: int = 32
    lr: float = 0.2
    attack_threshold: float = 0.8
    search_threshold: float = 0.97
    max_growth: float = 2.0
    natural_fraction: float = 0.25
    support_level: float = 0.3
    init_cost: float = 1e-3
    eval_images: int = 200
    prune_ratio: float = 0.5

    def __post_init__(self):
        if int(self.rounds) < 0 or int(self.steps) < 1 or int(self.batch_size) < 1:
            raise TaborError("completion: rounds >= 0, steps >= 1 and batch_size >= 1 are required")
        if not 0 < float(self.attack_threshold) <= 1 or not 0 < float(self.support_level) <= 1:
            raise TaborError("completion: attack_threshold and support_level must lie in (0, 1]")
        if not float(self.max_growth) > 0 or not float(self.lr) > 0 or not float(self.natural_fraction) > 0:
            raise TaborError("completion: max_growth, natural_fraction and lr must be positive")
        if not 0 <= float(self.prune_ratio) <= 1:
            raise TaborError(f"completion: prune_ratio must lie in [0, 1], got {self.prune_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    """The completed trigger of one label and how it was reached."""

    label: int
    mask: np.ndarray  # [H, W] in [0, 1]: the pixel-wise maximum of the accepted rounds' masks
    pattern: np.ndarray  # [H, W, C] raw 0..255: each pixel from the round whose mask is largest there
    rounds: list = field(default_factory=list)  # per round: {"l1", "attack_success", "accepted", "steps"}
    stop: str = ""  # why peeling ended
    prune: Optional[dict] = None  # {"l1_before", "l1", "attack_success", "accepted", "steps"}; None: not tried

    def summary(self) -> dict:
        out = {"label": int(self.label), "l1": float(np.sum(self.mask, dtype=np.float64)),
               "rounds": self.rounds, "accepted_rounds": sum(1 for r in self.rounds if r["accepted"]),
               "stop": self.stop}
        if self.prune is not None:
            out["prune"] = self.prune
        return out


def support(mask, level: float) -> np.ndarray:
    """Pixels ``[H, W]`` bool of ``mask`` at or above ``level`` times its maximum (none if it is 0)."""
    m = np.asarray(mask, np.float64)
    peak = float(m.max()) if m.size else 0.0
    return m >= level * peak if peak > 0 else np.zeros(m.shape, bool)


class _Peeler:
    """One compiled search of a single label's trigger with some pixels forbidden (mask fixed at 0)."""

    def __init__(self, victim, x_raw: np.ndarray, mode: str, settings: CompletionSettings):
        import tensorflow as tf

        from .preprocess import preprocess as preprocess_fn
        from .tabor.engine import adam_update
        from .trigger_vars import mask_from_tanh, pattern_from_tanh

        h, w, c = x_raw.shape[1:]
        self.settings = settings
        self.x = tf.constant(np.asarray(x_raw, np.float32))
        self.m_t = tf.Variable(tf.zeros([h, w, 1]))
        self.p_t = tf.Variable(tf.zeros([h, w, c]))
        self.allowed = tf.Variable(tf.ones([h, w, 1]))
        self.cost = tf.Variable(0.0)
        self.target = tf.Variable(0, dtype=tf.int32)
        # Adam's state, reset by every search (a Keras optimizer made per search would not reach the
        # compiled step, which keeps the first one's moments: each search must start afresh)
        self.moments = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in (self.m_t, self.p_t)]
        self.adam_t = tf.Variable([0.0])
        self._mask = lambda: mask_from_tanh(self.m_t) * self.allowed
        self._pattern = lambda: pattern_from_tanh(self.p_t)

        def step(idx):
            xb = tf.gather(self.x, idx)
            with tf.GradientTape() as tape:
                mask, pattern = self._mask(), self._pattern()
                logits = victim.logits(preprocess_fn(stamp(xb, mask, pattern), mode))
                labels = tf.fill([tf.shape(idx)[0]], self.target)
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
                l1 = tf.reduce_sum(mask)
                loss = ce + self.cost * l1
            g_m, g_p = tape.gradient(loss, [self.m_t, self.p_t])
            for var, grad, (m, v) in zip((self.m_t, self.p_t), (g_m, g_p), self.moments):
                new_var, new_m, new_v, _ = adam_update(var[None], grad[None], m[None], v[None], self.adam_t,
                                                       lr=float(settings.lr), beta_1=0.5, beta_2=0.9)
                var.assign(new_var[0])
                m.assign(new_m[0])
                v.assign(new_v[0])
            self.adam_t.assign_add([1.0])
            hits = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
            return hits, l1

        def predict(xb):
            return tf.argmax(victim.logits(preprocess_fn(xb, mode)), -1, output_type=tf.int32)

        self._step = tf.function(step, input_signature=[tf.TensorSpec([None], tf.int32)])
        self._predict = tf.function(predict, input_signature=[tf.TensorSpec([None, h, w, c], tf.float32)])

    def attack_success(self, x_eval: np.ndarray, label: int, mask, pattern) -> float:
        """Fraction of ``x_eval`` that the fixed trigger ``mask [H,W]`` / ``pattern [H,W,C]`` sends to ``label``."""
        import tensorflow as tf

        hits = 0
        for start in range(0, len(x_eval), 256):
            xb = x_eval[start:start + 256]
            stamped = stamp(xb, mask[..., None], pattern)
            hits += int(np.sum(self._predict(tf.constant(stamped, tf.float32)).numpy() == int(label)))
        return hits / max(len(x_eval), 1)

    def search(self, label: int, forbidden: np.ndarray, pattern0: np.ndarray, rng: np.random.Generator,
               mask0: Optional[np.ndarray] = None):
        """``(mask [H,W], pattern [H,W,C], steps)``: the smallest mask seen that sent a whole window of
        batches to ``label`` (the last mask when none did). ``mask0 [H,W]``: the starting mask
        (default uniform in [0, 0.1]); mask and pattern start within [-4, 4] in tanh space, where
        the gradient is not yet vanishing (a near-binary restored mask would otherwise be frozen)."""
        import tensorflow as tf

        from .trigger_vars import mask_to_tanh, pattern_to_tanh

        s = self.settings
        h, w = forbidden.shape
        self.target.assign(int(label))
        self.allowed.assign((1.0 - forbidden.astype(np.float32))[..., None])
        start = rng.uniform(0.0, 0.1, size=(h, w, 1)) if mask0 is None else np.asarray(mask0).reshape(h, w, 1)
        self.m_t.assign(np.clip(mask_to_tanh(np.clip(start, 0.0, 1.0)), -4, 4))
        self.p_t.assign(np.clip(pattern_to_tanh(np.clip(pattern0, 1.0, 254.0)), -4, 4))
        self.cost.assign(0.0)
        for slot in (v for pair in self.moments for v in pair):
            slot.assign(tf.zeros_like(slot))
        self.adam_t.assign([0.0])
        n, bs = int(self.x.shape[0]), min(int(s.batch_size), int(self.x.shape[0]))
        best, best_l1, window = None, np.inf, []
        for step in range(int(s.steps)):
            idx = rng.choice(n, size=bs, replace=False).astype(np.int32)
            hits, l1 = self._step(tf.constant(idx))
            window.append(float(hits))
            if len(window) == 5:
                ok = float(np.mean(window)) >= s.search_threshold
                cost = float(self.cost.numpy())
                if ok and float(l1) < best_l1:
                    best_l1 = float(l1)
                    best = (self._mask().numpy()[..., 0], self._pattern().numpy())
                self.cost.assign((s.init_cost if cost == 0 else cost * 1.5) if ok else cost / 1.5 ** 1.5)
                window = []
        if best is None:
            best = (self._mask().numpy()[..., 0], self._pattern().numpy())
        return best[0].astype(np.float32), best[1].astype(np.float32), int(s.steps)


def complete_trigger(victim, x_raw: np.ndarray, mode: str, label: int, mask, pattern, *,
                     settings: Optional[CompletionSettings] = None, seed: int = 0, y=None,
                     natural_l1: Optional[float] = None, peeler: Optional[_Peeler] = None,
                     deadline: Optional[float] = None) -> Completion:
    """Peel the trigger of ``label`` starting from its restored ``mask`` / ``pattern``.

    ``x_raw``: clean images (raw 0..255) for the search and the held-out attack test; images whose
    ``y`` (true or predicted class, optional) is ``label`` are left out. ``mode``: the model's
    preprocessing (``tabor_tf.preprocess``). ``natural_l1``: the median mask L1 of the scan's
    labels; a round must stay under ``natural_fraction`` of it (else under ``max_growth`` times
    the first trigger's L1).
    """
    s = settings or CompletionSettings()
    x_eval, x_fit, rng = _split(x_raw, y, label, seed, s)
    mask0 = np.asarray(mask, np.float32).reshape(x_fit.shape[1:3])
    pattern0 = np.asarray(pattern, np.float32).reshape(x_fit.shape[1:])
    peeler = peeler or _Peeler(victim, x_fit, mode, s)
    pruned = None
    if float(s.prune_ratio) > 0:
        mask0, pattern0, pruned = _prune(peeler, x_eval, label, mask0, pattern0, _prune_rng(seed, label), s)
    l1_first = float(np.sum(mask0, dtype=np.float64))
    limit = s.max_growth * l1_first if natural_l1 is None else s.natural_fraction * float(natural_l1)
    best_mask, best_pattern = mask0.copy(), pattern0.copy()
    forbidden = support(mask0, s.support_level)
    rounds, stop = [], f"{s.rounds} rounds done"
    for _ in range(int(s.rounds)):
        if deadline is not None and time.monotonic() >= deadline:
            stop = "the time budget ran out"
            break
        if forbidden.all():
            stop = "no pixel left"
            break
        m, p, steps = peeler.search(label, forbidden, best_pattern, rng)
        l1 = float(np.sum(m, dtype=np.float64))
        peeler_mask_success = peeler.attack_success(x_eval, label, m, p)
        accepted = peeler_mask_success >= s.attack_threshold and l1 <= limit
        rounds.append({"l1": l1, "attack_success": peeler_mask_success, "accepted": bool(accepted), "steps": steps})
        if not accepted:
            stop = ("the next trigger does not work" if peeler_mask_success < s.attack_threshold else
                    f"the next trigger (L1 {l1:.1f}) is over the limit {limit:.1f}: natural features")
            break
        take = m > best_mask
        best_pattern[take] = p[take]
        best_mask = np.maximum(best_mask, m)
        forbidden |= support(m, s.support_level)
    return Completion(label=int(label), mask=best_mask, pattern=best_pattern, rounds=rounds, stop=stop,
                      prune=pruned)


def _split(x_raw: np.ndarray, y, label: int, seed: int, s: CompletionSettings) -> tuple:
    """Clean images of labels other than ``label`` -> ``(x_eval, x_fit, rng)``: the held-out images
    a trigger's attack success is measured on, the images the searches fit on, and the rng the
    split drew from (peeling draws its batches from it next)."""
    x_raw = np.asarray(x_raw, np.float32)
    if y is not None:
        x_raw = x_raw[np.asarray(y) != int(label)]
    if len(x_raw) < 4:
        raise TaborError(f"completion of label {label} needs at least 4 clean images of other labels")
    rng = np.random.default_rng([int(seed), int(label), 0xC0DE])
    order = rng.permutation(len(x_raw))
    n_eval = min(int(s.eval_images), len(x_raw) // 2)
    return x_raw[order[:n_eval]], x_raw[order[n_eval:]], rng


def _prune_rng(seed: int, label: int) -> np.random.Generator:
    """The pruning search's own draws (peeling's stay as they were without pruning)."""
    return np.random.default_rng([int(seed), int(label), 0x9A0E])


def prune_trigger(victim, x_raw: np.ndarray, mode: str, label: int, mask, pattern, *,
                  settings: Optional[CompletionSettings] = None, seed: int = 0, y=None) -> tuple:
    """Only the pruning step of ``complete_trigger``, on the same images and draws ->
    ``(mask [H,W], pattern [H,W,C], record)`` (see ``_prune``)."""
    s = settings or CompletionSettings()
    x_eval, x_fit, _ = _split(x_raw, y, label, seed, s)
    mask0 = np.asarray(mask, np.float32).reshape(x_fit.shape[1:3])
    pattern0 = np.asarray(pattern, np.float32).reshape(x_fit.shape[1:])
    return _prune(_Peeler(victim, x_fit, mode, s), x_eval, label, mask0, pattern0, _prune_rng(seed, label), s)


def _prune(peeler: _Peeler, x_eval: np.ndarray, label: int, mask0: np.ndarray, pattern0: np.ndarray,
           rng: np.random.Generator, s: CompletionSettings) -> tuple:
    """The smallest working trigger inside ``mask0``'s support, started from ``mask0`` itself ->
    ``(mask [H,W], pattern [H,W,C], record)``: the pruned trigger when it works on ``x_eval`` and
    costs at most ``s.prune_ratio`` of ``mask0``'s L1, else ``mask0`` / ``pattern0`` unchanged."""
    l1_before = float(np.sum(mask0, dtype=np.float64))
    inside = support(mask0, s.support_level)
    if not inside.any():
        return mask0, pattern0, None
    m, p, steps = peeler.search(label, ~inside, pattern0, rng, mask0=mask0)
    l1 = float(np.sum(m, dtype=np.float64))
    success = peeler.attack_success(x_eval, label, m, p)
    accepted = bool(success >= s.attack_threshold and l1 <= float(s.prune_ratio) * l1_before)
    record = {"l1_before": l1_before, "l1": l1, "attack_success": success, "accepted": accepted, "steps": steps}
    if not accepted:
        return mask0, pattern0, record
    return m.astype(np.float32), p.astype(np.float32), record


def complete_flagged(result, victim, x_raw: np.ndarray, y, mode: str, *, settings: Optional[CompletionSettings] = None,
                     seed: int = 0, progress=None, deadline: Optional[float] = None) -> list:
    """Complete the trigger of every flagged label of ``result`` (a ``ScanResult``) in place:
    ``LabelResult.completed_mask`` / ``completed_pattern`` and ``parts["completion"]``. ``y``:
    true labels of ``x_raw`` or None (the model's own predictions are used). Labels left when
    ``deadline`` (``time.monotonic()`` seconds) has passed are skipped. Returns the labels done."""
    from .progress import emit

    s = settings or CompletionSettings()
    flagged = [int(v) for v in result.flagged_labels]
    if not flagged or int(s.rounds) == 0:
        return []
    if deadline is not None and result.time_limited:
        result.notes.append("trigger completion skipped: the time budget already cut the scan short")
        return []
    if y is None:
        y = victim.predict_raw(x_raw, mode)
    done = []
    natural_l1 = float(np.median([r.l1 for r in result.labels]))
    for i, label in enumerate(flagged):
        if deadline is not None and time.monotonic() >= deadline:
            result.notes.append(f"trigger completion skipped for labels {flagged[i:]}: the time budget ran out")
            break
        lr = result.by_label(label)
        t0 = time.monotonic()
        out = complete_trigger(victim, x_raw, mode, label, lr.mask, lr.pattern, settings=s, seed=seed, y=y,
                               natural_l1=natural_l1, deadline=deadline)
        lr.completed_mask, lr.completed_pattern = out.mask, out.pattern
        lr.parts["completion"] = dict(out.summary(), seconds=time.monotonic() - t0)
        done.append(label)
        emit(progress, method=result.method, labels_done=len(result.labels), labels_total=len(result.labels),
             step=len(out.rounds), max_steps=int(s.rounds), label=label,
             message=f"label {label}: trigger completed in {len(out.rounds)} rounds, L1 {lr.l1:.1f} ->"
                     f" {float(np.sum(out.mask)):.1f} ({out.stop})")
    return done
