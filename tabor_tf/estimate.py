"""How long a TABOR scan will take, said before it starts.

The engine's throughput is the model's own forward+backward throughput at the same batch (ratio
1.02 measured by ``benchmarks/speed.py``), so the estimate is the scan's work in image-steps
divided by a short probe of that throughput:

* search, at most: ``K x steps x (batch + blocking batch + 1)`` image-steps (every label to the
  step budget; converged and screened-out labels stop earlier, so this is an upper bound);
* scoring: ``detector.scoring_image_steps`` doubled for safety, as ``detector.scoring_reserve``
  keeps it free (``4 x K x eval_images``);
* a two-stage scan's screen scores every label once more.

``probe_images_per_second`` times a forward+backward of the model alone on random inputs (it
changes nothing); on a 1000-class 224x224 model it is what tells a user, in seconds, that the
full budget needs hours on this machine (use ``--time-budget``, ``--labels`` or a GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .tabor.detector import scoring_image_steps
from .terminal import human_duration


@dataclass(frozen=True)
class ScanEstimate:
    labels: int
    steps: int
    search_image_steps: int  # upper bound: every label to the step budget
    scoring_image_steps: int
    images_per_second: float  # probed forward+backward throughput of the model alone
    probe_batch: int

    @property
    def seconds(self) -> float:
        return (self.search_image_steps + self.scoring_image_steps) / max(self.images_per_second, 1e-9)

    def line(self) -> str:
        """One line for the terminal."""
        total = self.search_image_steps + self.scoring_image_steps
        return (f"at most ~{human_duration(self.seconds)} ({self.labels} labels x {self.steps} steps: {total:,} image-steps at"
                f" ~{self.images_per_second:,.0f} images/s forward+backward; converged and screened-out labels stop"
                " earlier)")

    def to_dict(self) -> dict:
        return {"labels": self.labels, "steps": self.steps, "search_image_steps": self.search_image_steps,
                "scoring_image_steps": self.scoring_image_steps, "images_per_second": round(self.images_per_second, 1),
                "probe_batch": self.probe_batch, "seconds": round(self.seconds, 1)}


def tabor_image_steps(num_labels: int, config, num_images: int) -> tuple:
    """``(search, scoring)`` image-steps of a TABOR scan of ``num_labels`` labels (see module doc)."""
    batch = min(int(config.batch_size), int(num_images))
    per_label = batch + min(int(config.blocking_batch_size), batch) + 1
    search = int(num_labels) * int(config.steps) * per_label
    eval_n = min(int(config.eval_images), int(num_images))
    passes = 2 if getattr(config, "scheduler", "none") == "two-stage" else 1
    return search, int(passes * 2 * scoring_image_steps(int(num_labels), eval_n))


def probe_images_per_second(victim, mode: str, batch: int = 64, repeats: int = 2) -> float:
    """Forward+backward images/s of the model alone on ``batch`` random raw images (after one
    untimed call that traces it)."""
    import tensorflow as tf

    from .preprocess import preprocess as preprocess_fn

    shape = [int(d) for d in victim.input_shape]
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, [int(batch), *shape]).astype(np.float32))

    @tf.function
    def step(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = tf.reduce_sum(victim.logits(preprocess_fn(v, mode)))
        return tape.gradient(out, v)

    step(x).numpy()
    started = time.perf_counter()
    for _ in range(int(repeats)):
        step(x).numpy()
    return int(batch) * int(repeats) / max(time.perf_counter() - started, 1e-9)


def estimate_tabor_scan(victim, mode: str, num_labels: int, config, num_images: int,
                        probe_batch: int = 64) -> ScanEstimate:
    """Probe the model and estimate a TABOR scan of ``num_labels`` labels on ``num_images`` images."""
    search, scoring = tabor_image_steps(num_labels, config, num_images)
    ips = probe_images_per_second(victim, mode, batch=probe_batch)
    return ScanEstimate(int(num_labels), int(config.steps), search, scoring, ips, int(probe_batch))


@dataclass(frozen=True)
class BudgetPlan:
    """What a ``--time-budget`` TABOR scan can afford: how many labels to search (the most
    suspicious by the pre-screen when fewer than all) and on how many images to score them."""

    labels: int  # labels to search (<= the candidates)
    candidates: int  # labels the scan was asked for
    eval_images: int  # clean images the metric uses
    steps_each: int  # steps every searched label gets, at least, in the plan
    fits: bool  # False: even the smallest plan (3 labels, 32 images) needs more than the budget

    @property
    def prescreened(self) -> bool:
        return self.labels < self.candidates


PLANNED_STEPS = 50  # steps a label gets at least in a budget plan: the presets' min_rounds x round_steps
MIN_PLANNED_LABELS = 10  # below this many searched labels the MAD test has little to compare with
EVAL_IMAGES_FALLBACK = (64, 32)  # fewer scoring images tried, in order, before fewer than 10 labels


def plan_for_budget(seconds_left: float, images_per_second: float, num_labels: int, config,
                    num_images: int) -> BudgetPlan:
    """Fit a TABOR scan into ``seconds_left``: every searched label gets ``PLANNED_STEPS`` steps
    (the step budget when smaller) and its share of the scoring (as ``detector.scoring_reserve`` keeps it: twice the
    scoring pass), with 10% slack. All labels when they fit; else the scoring images shrink
    (64, then 32) before the label count drops below 10; never below 3 labels (the outlier
    test's minimum; ``fits`` is then False and the deadline cuts the search)."""
    batch = min(int(config.batch_size), int(num_images))
    per_step = batch + min(int(config.blocking_batch_size), batch) + 1
    steps = min(int(config.steps), PLANNED_STEPS)
    usable = 0.9 * max(float(seconds_left) - 1.0, 0.0) * max(float(images_per_second), 1e-9)  # image-steps
    eval0 = min(int(config.eval_images), int(num_images))
    choices = [eval0] + [e for e in EVAL_IMAGES_FALLBACK if e < eval0]
    want = min(int(num_labels), MIN_PLANNED_LABELS)
    for eval_n in choices:
        fit = int(usable // (steps * per_step + 2 * scoring_image_steps(1, eval_n)))
        if fit >= want:
            break
    labels = max(min(fit, int(num_labels)), min(3, int(num_labels)))
    return BudgetPlan(labels=labels, candidates=int(num_labels), eval_images=int(eval_n), steps_each=steps,
                      fits=fit >= 3 or fit >= int(num_labels))
