"""Trigger completion: from the *minimal* restored trigger of a flagged label to the whole trigger.

Both detectors minimise the mask, so what they restore is the smallest part of the real trigger
that still flips the model: a few pixels of a 6x6 square are enough, and the restored mask covers
20-30% of the true one (F1 ~0.3 on the evaluation zoo). Completion *peels*: it forbids the pixels
found so far and searches the same label again; while the real trigger has unused pixels left,
the next search finds another small subset of them. Before peeling, the restored trigger is
*pruned*: the smallest trigger inside its own support, searched with the mask's L1 as the only
term, replaces it when it works at half the cost or less (TABOR's R4 asks the trigger alone, on
a black image, to be classified as the target; on MNIST-like inputs, black canvases, that grows
every restored trigger into a drawing of the class around the real trigger). It stops when the
cheapest trigger left is no longer small (the model's natural features of the label, not the
backdoor) or no longer works. The completed trigger is the union of the accepted rounds,
*tidied*: only its main connected pieces are kept when they still work, since each round's
cheapest trigger also holds stray pixels away from the real one. The verdict never depends on
it: it runs after the decision, only for flagged labels (docs/TABOR_CHOICES.md, "Trigger
completion" and "Tidying the completed trigger").

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
    the restored one's (0: no pruning); ``tidy_share``: after peeling, the completed trigger keeps
    only the 8-connected pieces of its support (``support_level``) whose mask mass is at least this
    share of the largest piece's, and any other piece that works alone, when what is left still
    works (stray pixels of the rounds fall away; 0: no tidying)."""

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
    tidy_share: float = 0.5

    def __post_init__(self):
        if int(self.rounds) < 0 or int(self.steps) < 1 or int(self.batch_size) < 1:
            raise TaborError("completion: rounds >= 0, steps >= 1 and batch_size >= 1 are required")
        if not 0 < float(self.attack_threshold) <= 1 or not 0 < float(self.support_level) <= 1:
            raise TaborError("completion: attack_threshold and support_level must lie in (0, 1]")
        if not float(self.max_growth) > 0 or not float(self.lr) > 0 or not float(self.natural_fraction) > 0:
            raise TaborError("completion: max_growth, natural_fraction and lr must be positive")
        if not 0 <= float(self.prune_ratio) <= 1:
            raise TaborError(f"completion: prune_ratio must lie in [0, 1], got {self.prune_ratio}")
        if not 0 <= float(self.tidy_share) <= 1:
            raise TaborError(f"completion: tidy_share must lie in [0, 1], got {self.tidy_share}")

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
    tidy: Optional[dict] = None  # {"l1_before", "l1", "pieces", "kept_pieces", "kept_alone", "attack_success",
    # "accepted"}; None: off

    def summary(self) -> dict:
        out = {"label": int(self.label), "l1": float(np.sum(self.mask, dtype=np.float64)),
               "rounds": self.rounds, "accepted_rounds": sum(1 for r in self.rounds if r["accepted"]),
               "stop": self.stop}
        if self.prune is not None:
            out["prune"] = self.prune
        if self.tidy is not None:
            out["tidy"] = self.tidy
        return out


def support(mask, level: float) -> np.ndarray:
    """Pixels ``[H, W]`` bool of ``mask`` at or above ``level`` times its maximum (none if it is 0)."""
    m = np.asarray(mask, np.float64)
    peak = float(m.max()) if m.size else 0.0
    return m >= level * peak if peak > 0 else np.zeros(m.shape, bool)


def _pieces(mask, level: float) -> tuple:
    """The 8-connected pieces of ``mask``'s support (``support(mask, level)``) -> ``(ids [H, W] int,
    0 outside; mass [n]: each piece's mask sum)``."""
    from scipy import ndimage

    m = np.asarray(mask, np.float64)
    ids, n = ndimage.label(support(m, level), structure=np.ones((3, 3), bool))
    return ids, np.asarray(ndimage.sum(m, ids, index=np.arange(1, n + 1)) if n else [], np.float64).reshape(-1)


def main_pieces(mask, level: float, share: float) -> tuple:
    """The 8-connected pieces of ``mask``'s support (``support(mask, level)``) whose mask mass is at
    least ``share`` times the largest piece's -> ``(keep [H, W] bool, pieces, kept pieces)``."""
    ids, mass = _pieces(mask, level)
    kept = _main_ids(mass, share)
    return np.isin(ids, kept), int(len(mass)), len(kept)


def _main_ids(mass: np.ndarray, share: float) -> list:
    """Ids (1-based, as ``_pieces`` numbers them) of the pieces whose mass is at least ``share``
    times the largest piece's."""
    return [k + 1 for k in range(len(mass)) if mass[k] >= float(share) * float(mass.max())]


class _Peeler:
    """Compiled searches of single-label triggers with some pixels forbidden (mask fixed at 0).

    ``x_fits``: one array of images ``[N, H, W, C]`` (raw 0..255) per *slot*; ``search_many`` runs
    one search per slot in lockstep, all in one forward+backward per step (the flagged labels of a
    scan are completed together: one label's 32 images use a CPU poorly). Each slot has its own
    mask, pattern, L1 weight, Adam state and batch draws, so a slot's search does not depend on
    the others' (up to the float rounding of a larger batch). ``search`` is the one-slot form.
    """

    def __init__(self, victim, x_fits, mode: str, settings: CompletionSettings):
        import tensorflow as tf

        from .preprocess import preprocess as preprocess_fn
        from .stamping import stamp_all
        from .tabor.engine import adam_update
        from .trigger_vars import mask_from_tanh, pattern_from_tanh

        if isinstance(x_fits, np.ndarray):
            x_fits = [x_fits]
        sizes = [len(x) for x in x_fits]
        h, w, c = x_fits[0].shape[1:]
        k = len(x_fits)
        self.settings = settings
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.x = tf.constant(np.concatenate([np.asarray(x, np.float32) for x in x_fits]))
        self.m_t = tf.Variable(tf.zeros([k, h, w, 1]))
        self.p_t = tf.Variable(tf.zeros([k, h, w, c]))
        self.allowed = tf.Variable(tf.ones([k, h, w, 1]))
        self.cost = tf.Variable(tf.zeros([k]))
        self.target = tf.Variable(tf.zeros([k], tf.int32))
        # Adam's state, reset by every search (a Keras optimizer made per search would not reach the
        # compiled step, which keeps the first one's moments: each search must start afresh)
        self.moments = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in (self.m_t, self.p_t)]
        self.adam_t = tf.Variable(tf.zeros([k]))
        self._masks = lambda: mask_from_tanh(self.m_t) * self.allowed
        self._patterns = lambda: pattern_from_tanh(self.p_t)

        def step(slots, idx):
            """``slots [A]`` searching now, ``idx [A, B]`` their images (rows of ``self.x``)."""
            xb = tf.gather(self.x, idx)  # [A, B, H, W, C]
            m_t, p_t = tf.gather(self.m_t, slots), tf.gather(self.p_t, slots)
            with tf.GradientTape() as tape:
                tape.watch([m_t, p_t])
                mask = mask_from_tanh(m_t) * tf.gather(self.allowed, slots)
                pattern = pattern_from_tanh(p_t)
                stamped = stamp_all(xb, mask, pattern)  # [A, B, H, W, C]
                logits = victim.logits(preprocess_fn(tf.reshape(stamped, tf.concat([[-1], tf.shape(xb)[2:]], 0)),
                                                     mode))
                logits = tf.reshape(logits, [tf.shape(idx)[0], tf.shape(idx)[1], -1])
                labels = tf.broadcast_to(tf.gather(self.target, slots)[:, None], tf.shape(idx))
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), 1)
                l1 = tf.reduce_sum(mask, axis=[1, 2, 3])
                loss = tf.reduce_sum(ce + tf.gather(self.cost, slots) * l1)  # slots are independent
            grads = tape.gradient(loss, [m_t, p_t])
            t = tf.gather(self.adam_t, slots)
            for var, rows, grad, (m, v) in zip((self.m_t, self.p_t), (m_t, p_t), grads, self.moments):
                new_var, new_m, new_v, _ = adam_update(rows, grad, tf.gather(m, slots), tf.gather(v, slots), t,
                                                       lr=float(settings.lr), beta_1=0.5, beta_2=0.9)
                var.scatter_nd_update(slots[:, None], new_var)
                m.scatter_nd_update(slots[:, None], new_m)
                v.scatter_nd_update(slots[:, None], new_v)
            self.adam_t.scatter_nd_update(slots[:, None], t + 1.0)
            hits = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32), 1)
            return hits, l1

        def predict(xb):
            return tf.argmax(victim.logits(preprocess_fn(xb, mode)), -1, output_type=tf.int32)

        self._step = tf.function(step, input_signature=[tf.TensorSpec([None], tf.int32),
                                                        tf.TensorSpec([None, None], tf.int32)])
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
        batches to ``label`` (the last mask when none did), searched in slot 0. ``mask0 [H,W]``: the
        starting mask (default uniform in [0, 0.1]); mask and pattern start within [-4, 4] in tanh
        space, where the gradient is not yet vanishing (a near-binary restored mask would otherwise
        be frozen)."""
        return self.search_many([_Job(0, label, forbidden, pattern0, rng, mask0)])[0]

    def search_many(self, jobs) -> list:
        """One search per ``_Job`` (distinct slots), in lockstep -> ``[(mask, pattern, steps)]`` in order."""
        import tensorflow as tf

        from .trigger_vars import mask_to_tanh, pattern_to_tanh

        s = self.settings
        h, w = jobs[0].forbidden.shape
        slots = np.asarray([j.slot for j in jobs], np.int32)
        for j in jobs:
            start = j.rng.uniform(0.0, 0.1, size=(h, w, 1)) if j.mask0 is None else np.asarray(j.mask0).reshape(h, w, 1)
            self.target[j.slot].assign(int(j.label))
            self.allowed[j.slot].assign((1.0 - j.forbidden.astype(np.float32))[..., None])
            self.m_t[j.slot].assign(np.clip(mask_to_tanh(np.clip(start, 0.0, 1.0)), -4, 4))
            self.p_t[j.slot].assign(np.clip(pattern_to_tanh(np.clip(j.pattern0, 1.0, 254.0)), -4, 4))
            self.cost[j.slot].assign(0.0)
            for slot_vars in (v for pair in self.moments for v in pair):
                slot_vars[j.slot].assign(tf.zeros_like(slot_vars[j.slot]))
            self.adam_t[j.slot].assign(0.0)
        bs = min([int(s.batch_size)] + [self.sizes[j.slot] for j in jobs])
        best = [None] * len(jobs)
        best_l1 = np.full(len(jobs), np.inf)
        window = np.zeros((len(jobs), 5))
        for step in range(int(s.steps)):
            idx = np.stack([j.rng.choice(self.sizes[j.slot], size=bs, replace=False) + self.offsets[j.slot]
                            for j in jobs]).astype(np.int32)
            hits, l1 = self._step(tf.constant(slots), tf.constant(idx))
            window[:, step % 5] = hits.numpy()
            if step % 5 == 4:
                l1 = l1.numpy()
                cost = self.cost.numpy()[slots]
                ok = window.mean(axis=1) >= s.search_threshold
                better = np.flatnonzero(ok & (l1 < best_l1))
                if len(better):
                    masks, patterns = self._masks().numpy(), self._patterns().numpy()
                    for i in better:
                        best_l1[i] = float(l1[i])
                        best[i] = (masks[slots[i], ..., 0], patterns[slots[i]])
                new_cost = np.where(ok, np.where(cost == 0, s.init_cost, cost * 1.5), cost / 1.5 ** 1.5)
                self.cost.scatter_nd_update(slots[:, None], new_cost.astype(np.float32))
        if any(b is None for b in best):
            masks, patterns = self._masks().numpy(), self._patterns().numpy()
            best = [b if b is not None else (masks[slots[i], ..., 0], patterns[slots[i]]) for i, b in enumerate(best)]
        return [(m.astype(np.float32), p.astype(np.float32), int(s.steps)) for m, p in best]


@dataclass
class _Job:
    """One search of ``_Peeler.search_many``: its slot, label, forbidden pixels ``[H,W]`` bool,
    starting pattern ``[H,W,C]``, batch draws and optional starting mask ``[H,W]``."""

    slot: int
    label: int
    forbidden: np.ndarray
    pattern0: np.ndarray
    rng: np.random.Generator
    mask0: Optional[np.ndarray] = None


def complete_trigger(victim, x_raw: np.ndarray, mode: str, label: int, mask, pattern, *,
                     settings: Optional[CompletionSettings] = None, seed: int = 0, y=None,
                     natural_l1: Optional[float] = None, deadline: Optional[float] = None) -> Completion:
    """Peel the trigger of ``label`` starting from its restored ``mask`` / ``pattern``.

    ``x_raw``: clean images (raw 0..255) for the search and the held-out attack test; images whose
    ``y`` (true or predicted class, optional) is ``label`` are left out. ``mode``: the model's
    preprocessing (``tabor_tf.preprocess``). ``natural_l1``: the median mask L1 of the scan's
    labels; a round must stay under ``natural_fraction`` of it (else under ``max_growth`` times
    the first trigger's L1).
    """
    return complete_triggers(victim, x_raw, mode, [label], [mask], [pattern], settings=settings, seed=seed, y=y,
                             natural_l1=natural_l1, deadline=deadline)[0]


def complete_triggers(victim, x_raw: np.ndarray, mode: str, labels, masks, patterns, *,
                      settings: Optional[CompletionSettings] = None, seed: int = 0, y=None,
                      natural_l1: Optional[float] = None, deadline: Optional[float] = None,
                      on_round=None) -> list:
    """``complete_trigger`` for several labels at once -> one ``Completion`` per label, in order.

    Their searches run in lockstep (one ``_Peeler`` slot per label: the prunes together, then each
    round of the labels still peeling together); each label keeps its own images, draws and
    stopping rule, so its result is what it would be alone, up to float rounding. Tidying
    (``_tidy``) follows peeling, unless ``deadline`` has passed. ``on_round(r, peeling)``, if given,
    is called after the prune (``r`` 0) and after each peel round ``r`` with the labels still
    peeling."""
    s = settings or CompletionSettings()
    labels = [int(v) for v in labels]
    if not labels:
        return []
    report = on_round or (lambda _r, _peeling: None)
    splits = [_split(x_raw, y, label, seed, s) for label in labels]
    shape = splits[0][1].shape[1:]
    masks0 = [np.asarray(m, np.float32).reshape(shape[:2]) for m in masks]
    patterns0 = [np.asarray(p, np.float32).reshape(shape) for p in patterns]
    peeler = _Peeler(victim, [x_fit for _, x_fit, _ in splits], mode, s)
    pruned = [None] * len(labels)
    if float(s.prune_ratio) > 0:
        out = _prune_many(peeler, [x_eval for x_eval, _, _ in splits], labels, masks0, patterns0,
                          [_prune_rng(seed, label) for label in labels], s)
        masks0, patterns0, pruned = (list(v) for v in zip(*out))
        report(0, list(labels))
    limits = [s.max_growth * float(np.sum(m, dtype=np.float64)) if natural_l1 is None
              else s.natural_fraction * float(natural_l1) for m in masks0]
    best_masks = [m.copy() for m in masks0]
    best_patterns = [p.copy() for p in patterns0]
    forbidden = [support(m, s.support_level) for m in masks0]
    rounds = [[] for _ in labels]
    stops = [f"{s.rounds} rounds done"] * len(labels)
    peeling = list(range(len(labels)))
    for r in range(1, int(s.rounds) + 1):
        if deadline is not None and time.monotonic() >= deadline:
            for i in peeling:
                stops[i] = "the time budget ran out"
            break
        for i in [i for i in peeling if forbidden[i].all()]:
            stops[i] = "no pixel left"
            peeling.remove(i)
        if not peeling:
            break
        found = peeler.search_many([_Job(i, labels[i], forbidden[i], best_patterns[i], splits[i][2]) for i in peeling])
        for i, (m, p, steps) in zip(list(peeling), found):
            l1 = float(np.sum(m, dtype=np.float64))
            success = peeler.attack_success(splits[i][0], labels[i], m, p)
            accepted = success >= s.attack_threshold and l1 <= limits[i]
            rounds[i].append({"l1": l1, "attack_success": success, "accepted": bool(accepted), "steps": steps})
            if not accepted:
                stops[i] = ("the next trigger does not work" if success < s.attack_threshold else
                            f"the next trigger (L1 {l1:.1f}) is over the limit {limits[i]:.1f}: natural features")
                peeling.remove(i)
                continue
            take = m > best_masks[i]
            best_patterns[i][take] = p[take]
            best_masks[i] = np.maximum(best_masks[i], m)
            forbidden[i] |= support(m, s.support_level)
        report(r, [labels[i] for i in peeling])
        if not peeling:
            break
    tidied = [None] * len(labels)
    if float(s.tidy_share) > 0 and (deadline is None or time.monotonic() < deadline):
        for i in range(len(labels)):
            best_masks[i], tidied[i] = _tidy(peeler, splits[i][0], labels[i], best_masks[i], best_patterns[i], s)
    return [Completion(label=label, mask=best_masks[i], pattern=best_patterns[i], rounds=rounds[i], stop=stops[i],
                       prune=pruned[i], tidy=tidied[i]) for i, label in enumerate(labels)]


TIDY_ALONE_TESTS = 8  # tidying tries at most this many of the dropped pieces alone (largest first)


def _tidy(peeler: "_Peeler", x_eval: np.ndarray, label: int, mask: np.ndarray, pattern: np.ndarray,
          s: CompletionSettings) -> tuple:
    """The completed trigger without its stray pixels -> ``(mask [H, W], record)``.

    Kept: the main pieces of its support (``main_pieces``: level ``s.support_level``, mass at least
    ``s.tidy_share`` of the largest piece's), and every other piece that works alone on the held-out
    ``x_eval`` (a second trigger of the same target is a piece of its own; at most
    ``TIDY_ALONE_TESTS`` are tried). The tidied trigger replaces ``mask`` when it works, else
    ``mask`` stays. Each round, and the prune, keep the cheapest trigger that works, so a round's
    pixels away from the real trigger are the search's noise, not the backdoor
    (docs/TABOR_CHOICES.md, "Tidying the completed trigger")."""
    ids, mass = _pieces(mask, s.support_level)
    record = {"l1_before": float(np.sum(mask, dtype=np.float64)), "pieces": int(len(mass))}
    if not len(mass):
        record.update(l1=record["l1_before"], kept_pieces=0, kept_alone=0, attack_success=0.0, accepted=False)
        return mask, record
    main = _main_ids(mass, s.tidy_share)
    others = sorted((k + 1 for k in range(len(mass)) if k + 1 not in main), key=lambda k: -mass[k - 1])
    alone = [k for k in others[:TIDY_ALONE_TESTS]
             if peeler.attack_success(x_eval, label, np.where(ids == k, mask, 0.0).astype(np.float32), pattern)
             >= s.attack_threshold]
    tidy = np.where(np.isin(ids, main + alone), mask, 0.0).astype(np.float32)
    success = peeler.attack_success(x_eval, label, tidy, pattern)
    accepted = bool(success >= s.attack_threshold)
    record.update(l1=float(np.sum(tidy, dtype=np.float64)), kept_pieces=len(main) + len(alone), kept_alone=len(alone),
                  attack_success=float(success), accepted=accepted)
    return (tidy if accepted else mask), record


def _tidy_text(record: Optional[dict]) -> str:
    """``"; tidied: 2 of 9 pieces kept"`` when tidying dropped pieces, else ``""``."""
    if not record or not record["accepted"] or record["kept_pieces"] == record["pieces"]:
        return ""
    return f"; tidied: {record['kept_pieces']} of {record['pieces']} pieces kept"


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
    ``(mask [H,W], pattern [H,W,C], record)`` (see ``_prune_many``)."""
    s = settings or CompletionSettings()
    x_eval, x_fit, _ = _split(x_raw, y, label, seed, s)
    mask0 = np.asarray(mask, np.float32).reshape(x_fit.shape[1:3])
    pattern0 = np.asarray(pattern, np.float32).reshape(x_fit.shape[1:])
    return _prune_many(_Peeler(victim, x_fit, mode, s), [x_eval], [int(label)], [mask0], [pattern0],
                       [_prune_rng(seed, label)], s)[0]


def _prune_many(peeler: _Peeler, x_evals, labels, masks0, patterns0, rngs, s: CompletionSettings) -> list:
    """For each label (slot ``i`` of ``peeler``), the smallest working trigger inside ``masks0[i]``'s
    support, started from that mask itself -> ``[(mask [H,W], pattern [H,W,C], record)]``: the pruned
    trigger when it works on ``x_evals[i]`` and costs at most ``s.prune_ratio`` of the first mask's
    L1, else the first trigger unchanged (record ``None``: nothing to prune). The searches run in
    lockstep."""
    out = [(m, p, None) for m, p in zip(masks0, patterns0)]
    inside = [support(m, s.support_level) for m in masks0]
    jobs = [_Job(i, labels[i], ~inside[i], patterns0[i], rngs[i], masks0[i]) for i in range(len(labels))
            if inside[i].any()]
    if not jobs:
        return out
    for job, (m, p, steps) in zip(jobs, peeler.search_many(jobs)):
        i = job.slot
        l1_before = float(np.sum(masks0[i], dtype=np.float64))
        l1 = float(np.sum(m, dtype=np.float64))
        success = peeler.attack_success(x_evals[i], labels[i], m, p)
        accepted = bool(success >= s.attack_threshold and l1 <= float(s.prune_ratio) * l1_before)
        record = {"l1_before": l1_before, "l1": l1, "attack_success": success, "accepted": accepted, "steps": steps}
        out[i] = (m.astype(np.float32), p.astype(np.float32), record) if accepted else (masks0[i], patterns0[i], record)
    return out


def complete_flagged(result, victim, x_raw: np.ndarray, y, mode: str, *, settings: Optional[CompletionSettings] = None,
                     seed: int = 0, progress=None, deadline: Optional[float] = None) -> list:
    """Complete the trigger of every flagged label of ``result`` (a ``ScanResult``) in place:
    ``LabelResult.completed_mask`` / ``completed_pattern`` and ``parts["completion"]``. ``y``:
    true labels of ``x_raw`` or None (the model's own predictions are used). The labels are
    completed together (``complete_triggers``); none is when ``deadline`` (``time.monotonic()``
    seconds) has already passed, and peeling stops at the first round boundary after it. Returns
    the labels done."""
    from .progress import emit

    s = settings or CompletionSettings()
    flagged = [int(v) for v in result.flagged_labels]
    if not flagged or int(s.rounds) == 0:
        return []
    if deadline is not None and result.time_limited:
        result.notes.append("trigger completion skipped: the time budget already cut the scan short")
        return []
    if deadline is not None and time.monotonic() >= deadline:
        result.notes.append(f"trigger completion skipped for labels {flagged}: the time budget ran out")
        return []
    if y is None:
        y = victim.predict_raw(x_raw, mode)
    natural_l1 = float(np.median([r.l1 for r in result.labels]))
    rows = [result.by_label(label) for label in flagged]

    def on_round(r, peeling):
        emit(progress, method=result.method, labels_done=len(result.labels), labels_total=len(result.labels),
             step=r, max_steps=int(s.rounds),
             message=f"trigger completion: {'pruned' if r == 0 else f'round {r} done'}; still peeling {peeling or 'none'}")

    t0 = time.monotonic()
    outs = complete_triggers(victim, x_raw, mode, flagged, [r.mask for r in rows], [r.pattern for r in rows],
                             settings=s, seed=seed, y=y, natural_l1=natural_l1, deadline=deadline, on_round=on_round)
    seconds = (time.monotonic() - t0) / len(flagged)  # the labels ran together: each is charged its share
    for lr, out in zip(rows, outs):
        lr.completed_mask, lr.completed_pattern = out.mask, out.pattern
        lr.parts["completion"] = dict(out.summary(), seconds=seconds)
        emit(progress, method=result.method, labels_done=len(result.labels), labels_total=len(result.labels),
             step=len(out.rounds), max_steps=int(s.rounds), label=out.label,
             message=f"label {out.label}: trigger completed in {len(out.rounds)} rounds, L1 {lr.l1:.1f} ->"
                     f" {float(np.sum(out.mask)):.1f} ({out.stop}{_tidy_text(out.tidy)})")
    if deadline is not None and any(out.stop == "the time budget ran out" for out in outs):
        result.notes.append(f"trigger completion cut short for labels "
                            f"{[o.label for o in outs if o.stop == 'the time budget ran out']}: the time budget ran out")
    return flagged
