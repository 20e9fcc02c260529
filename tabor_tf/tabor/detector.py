"""``scan``: TABOR on every candidate label at once, the quality metric A, the MAD test on A.

Flow: clean data -> reference labels (true labels, or the model's own predictions when the data
has none) -> ``engine`` (all labels' triggers, hyperparameter augmentation) -> ``explain``
(acc_att, acc_crop, acc_exp on ``eval_images`` clean images) -> ``quality`` (A and its parts)
-> ``mad_test`` on A (low side) -> ``ScanResult(method="tabor")``.

With ``checkpoint_dir`` the finished triggers are saved (``tabor_triggers.npz`` + a fingerprint
of model, data, settings and seed); a later scan with the same fingerprint reuses them and only
recomputes the metric and the decision. While the engine runs, its whole state is saved there
too (``tabor_engine_state.npz``, every ``checkpoint_seconds``), so a killed scan re-run with the
same command continues the trigger search where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np

from tabor_tf import prescreen
from tabor_tf.errors import DataError, TaborError
from tabor_tf.outliers import MadResult, family_threshold, mad_test
from tabor_tf.preprocess import resolve_mode
from tabor_tf.progress import ProgressFn, emit
from tabor_tf.results import LabelResult, ScanResult

from . import confirm, quality
from .engine import TIME_BUDGET, EngineResult, TriggerEngine
from .two_stage import TwoStageSettings, screen_keep
from .explain import TriggerEvaluator
from .presets import TERM_NAMES, TaborConfig, default_preset_for, for_clean_data, preset

METHOD = "tabor"
CHECKPOINT_FILE = "tabor_triggers.npz"
STATE_FILE = "tabor_engine_state.npz"  # the engine's state while it runs (removed once the triggers are saved)
# settings that change only the metric or the decision, not the optimised triggers
_NOT_IN_FINGERPRINT = ("preset", "eval_images", "footprint_threshold", "explain_fraction", "explain_reference",
                       "mad_threshold", "family_alpha", "mad_side", "mad_floor", "accuracy_floor", "confirm_seeds",
                       "max_images_per_step", "label_bucket", "checkpoint_seconds",
                       "overlay_on_black_background")  # its effect is the resolved l6 (presets.for_clean_data)


def _clean_arrays(victim, data):
    x = getattr(data, "x", data)
    y = getattr(data, "y", None)
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError("clean images must be a numeric array [N, H, W, C]") from None
    shape = tuple(int(v) for v in victim.input_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise DataError(f"clean images have shape {tuple(x.shape)}; the model expects [N, {', '.join(map(str, shape))}]")
    if x.shape[0] < 1:
        raise DataError("no clean images given")
    if not np.all(np.isfinite(x)):
        raise DataError("clean images contain NaN or infinite values")
    if y is not None:
        y = np.asarray(y).reshape(-1).astype(np.int64)
        if len(y) != len(x):
            raise DataError(f"{len(y)} labels for {len(x)} clean images")
        if len(y) and (y.min() < 0 or y.max() >= int(victim.num_classes)):
            raise DataError(f"clean labels must be in 0..{int(victim.num_classes) - 1}")
    return x, y


def scan_labels(num_classes: int, labels: Optional[Sequence[int]]) -> list:
    chosen = sorted({int(v) for v in (range(num_classes) if labels is None else labels)})
    bad = [v for v in chosen if not 0 <= v < num_classes]
    if bad:
        raise TaborError(f"label(s) {bad} out of range for a model with {num_classes} classes")
    if len(chosen) < 3:
        raise TaborError(f"TABOR's outlier test needs at least 3 candidate labels, got {len(chosen)}")
    return chosen


def _fingerprint(victim, x, mode: str, config: TaborConfig, seed: int, labels: list) -> str:
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
    key = {
        "settings": settings, "seed": int(seed), "preprocess": mode, "labels": labels,
        "data": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
        "model": getattr(victim, "sha256", None) or [list(victim.input_shape), int(victim.num_classes)],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def save_triggers(directory, result: EngineResult, fingerprint: str) -> Path:
    """Write the engine's result atomically to ``directory/tabor_triggers.npz``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    meta = {"fingerprint": fingerprint, "stop_reasons": result.stop_reasons, "labels": result.labels,
            "image_steps": result.image_steps, "wall_seconds": result.wall_seconds}
    with open(tmp, "wb") as fh:
        np.savez(fh, masks=result.masks, patterns=result.patterns, steps=result.steps,
                 round_success=result.round_success, reached=result.reached, lambdas=result.lambdas,
                 best_terms=result.best_terms, seconds=result.seconds, meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    return path


def load_triggers(directory, fingerprint: str) -> Optional[EngineResult]:
    """The saved engine result when its fingerprint matches, else None."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint") != fingerprint:
                return None
            return EngineResult(labels=meta["labels"], masks=z["masks"], patterns=z["patterns"], steps=z["steps"],
                                stop_reasons=meta["stop_reasons"], round_success=z["round_success"],
                                reached=z["reached"], lambdas=z["lambdas"], best_terms=z["best_terms"],
                                seconds=z["seconds"], image_steps=int(meta["image_steps"]),
                                wall_seconds=float(meta["wall_seconds"]))
    except (OSError, ValueError, KeyError):
        return None


def reference_labels(victim, x: np.ndarray, y: Optional[np.ndarray], mode: str) -> tuple:
    """``(y_ref, clean_accuracy, source)``: the data's labels, or the model's predictions when none."""
    pred = _predict(victim, x, mode)
    if y is None:
        return pred, None, "model predictions"
    return y, float(np.mean(pred == y)), "labels"


def _predict(victim, x: np.ndarray, mode: str, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    from tabor_tf.preprocess import preprocess as preprocess_fn

    fn = tf.function(lambda v: tf.argmax(victim.logits(preprocess_fn(v, mode)), axis=-1),
                     input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32)])
    return np.concatenate([fn(tf.constant(x[s:s + batch])).numpy() for s in range(0, len(x), batch)]).astype(np.int64)


def eval_subset(n: int, size: int, seed: int) -> np.ndarray:
    """Indices of the clean images the metric is computed on (all when ``n <= size``)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([int(seed), 0xE7A1]).choice(n, size=size, replace=False))


def score_triggers(victim, x, y_ref, result: EngineResult, config: TaborConfig, mode: str, seed: int) -> list:
    """Quality parts (``quality.quality_parts``) of every label's trigger, plus the raw accuracies."""
    sel = eval_subset(len(x), int(config.eval_images), seed)
    evaluator = TriggerEvaluator(victim.logits, mode, config.explain_fraction, config.explain_reference)
    acc = evaluator.evaluate(x[sel], y_ref[sel], result.masks, result.patterns, result.labels,
                             max_images=config.max_images_per_step)
    out = []
    for i in range(len(result.labels)):
        parts = quality.quality_parts(result.masks[i], acc["acc_att"][i], acc["acc_crop"][i], acc["acc_exp"][i],
                                      len(sel), config.footprint_threshold, config.accuracy_floor)
        parts.update(acc_att=float(acc["acc_att"][i]), acc_crop=float(acc["acc_crop"][i]),
                     acc_exp=float(acc["acc_exp"][i]), explanation_pixels=int(acc["vote"][i].sum()))
        out.append(parts)
    return out


def decision_threshold(config: TaborConfig, num_labels: int) -> float:
    """The anomaly index a label must exceed: ``mad_threshold``, raised with the label count when
    ``family_alpha`` > 0 (``outliers.family_threshold``)."""
    return family_threshold(num_labels, config.family_alpha, floor=config.mad_threshold)


LOW_SIDE_MIN_LABELS = 20  # below this the lower half holds too few scores for its own MAD (TABOR_CHOICES)


def resolve_mad_side(setting: str, num_labels: int) -> str:
    """``both`` or ``low`` for a ``mad_side`` setting: ``auto`` is ``low`` from ``LOW_SIDE_MIN_LABELS``
    labels up, ``both`` below."""
    if setting != "auto":
        return setting
    return "low" if num_labels >= LOW_SIDE_MIN_LABELS else "both"


def mad_side(config: TaborConfig, num_labels: int) -> str:
    """``both`` or ``low``: which deviations the MAD is taken over (``resolve_mad_side``)."""
    return resolve_mad_side(config.mad_side, num_labels)


def mad_floor(config: TaborConfig, side: str) -> float:
    """The smallest MAD the index divides by: ``config.mad_floor`` for the two-sided MAD of few
    labels, where ten scores that happen to agree closely make the least-bad natural feature an
    outlier (docs/TABOR_CHOICES.md, "A floor under the MAD of few labels"); none for the low side."""
    return float(config.mad_floor) if side == "both" else 0.0


def outlier_test(config: TaborConfig, a_values, labels) -> MadResult:
    """TABOR's decision on the labels' A (first starts): the MAD test with the threshold, side and
    floor these settings give for ``len(labels)`` labels."""
    side = mad_side(config, len(labels))
    return mad_test(a_values, labels, threshold=decision_threshold(config, len(labels)), side=side,
                    min_mad=mad_floor(config, side))


def scoring_image_steps(num_labels: int, eval_images: int) -> float:
    """Work of one ``score_triggers`` pass in engine image-steps: per label and evaluation image
    about two (attack, crop, saliency forward + backward, important-features pass)."""
    return 2.0 * num_labels * eval_images


def scoring_reserve(num_labels: int, eval_images: int):
    """``images_per_second -> seconds`` to keep free for ``score_triggers`` after a deadline-bound
    search: ``scoring_image_steps`` doubled for safety, plus a second."""
    def reserve(images_per_second: float) -> float:
        return 2.0 * scoring_image_steps(num_labels, eval_images) / max(images_per_second, 1.0) + 1.0

    return reserve


def two_stage_screen(victim, x, y_ref, config: TaborConfig, mode: str, seed: int, num_labels: int):
    """The screen of a two-stage scan (``two_stage.py``) as the engine calls it, or None when this
    scan runs one stage (another scheduler, or a two-sided MAD: fewer than 20 labels)."""
    side = mad_side(config, num_labels)
    if config.scheduler != "two-stage" or side != "low":
        return None
    settings = TwoStageSettings.from_config(config)

    def screen(engine) -> np.ndarray:
        masks, patterns = engine.kept_triggers()
        kept = SimpleNamespace(labels=engine.labels, masks=masks, patterns=patterns)
        a = [p["A"] for p in score_triggers(victim, x, y_ref, kept, config, mode, seed)]
        protected = None
        if settings.protect > 0:
            order = prescreen.ranking(prescreen.clean_logits(victim, x, mode), y_ref, engine.labels)
            top = set(order[:settings.protect])
            protected = np.array([lab in top for lab in engine.labels])
        return screen_keep(a, ~engine.state.active.numpy(), engine.state.reached.numpy(), settings, side=side,
                           protected=protected)

    return screen


def _confirm(victim, x, y_ref, config: TaborConfig, mode: str, seed: int, mad, strategy, result: EngineResult,
             deadline: Optional[float], notes: list) -> tuple:
    """``config.confirm_seeds`` fresh starts of the flagged labels (``confirm.py``) -> ``(mad with
    the labels that repeat, {label: [indices]} or None)``; skipped, with a note, when the search
    was cut by the deadline or the confirmation would not fit before it."""
    if int(config.confirm_seeds) <= 0 or not mad.flagged_labels:
        return mad, None
    n = len(mad.flagged_labels)
    if result.time_limited:
        notes.append("flags not confirmed from fresh starts: the time budget cut the search")
        return mad, None
    if deadline is not None:
        per_label = int(config.steps) * (int(config.batch_size) + int(config.blocking_batch_size) + 1)
        need = int(config.confirm_seeds) * n * (per_label + scoring_image_steps(1, int(config.eval_images)))
        if time.monotonic() + 2.0 * need / max(result.images_per_second, 1.0) > deadline:
            notes.append("flags not confirmed from fresh starts: no time left in the budget")
            return mad, None

    def score(res):
        return [p["A"] for p in score_triggers(victim, x, y_ref, res, config, mode, seed)]

    repeats = confirm.run_confirmation(victim, x, y_ref, config, mode, seed, mad, strategy=strategy, score=score)
    confirmed, indices = confirm.decide(mad, repeats)
    dropped = [lab for lab in mad.flagged_labels if lab not in confirmed.flagged_labels]
    seeds = ", ".join(map(str, confirm.confirm_seeds(seed, int(config.confirm_seeds))))
    def story(lab) -> str:
        return (f"{lab}: {-mad.label_indices[lab]:.2f}, then {', '.join(f'{v:.2f}' for v in indices[lab])},"
                f" mean {confirm.averaged_index(mad, lab, indices[lab]):.2f}")

    if dropped:
        notes.append(f"label(s) {', '.join(map(str, dropped))} not flagged: the anomaly index averaged over fresh"
                     f" starts (seeds {seeds}) is not above the threshold {mad.threshold:.2f} ("
                     + "; ".join(story(lab) for lab in dropped) + ")")
    if confirmed.flagged_labels:
        notes.append(f"flags confirmed from fresh starts (seeds {seeds}): "
                     + "; ".join(story(lab) for lab in confirmed.flagged_labels))
    return confirmed, indices


def scan(victim, data, *, preprocess: str, labels: Optional[Sequence[int]] = None,
         config: Optional[TaborConfig] = None, seed: int = 0, progress: ProgressFn = None,
         checkpoint_dir=None, strategy=None, deadline: Optional[float] = None) -> ScanResult:
    """Scan ``victim`` with TABOR on the clean ``data`` (``CleanData`` or an array ``[N,H,W,C]`` raw).

    ``preprocess``: the mode that maps raw pixels to the model's input (not ``auto``).
    ``labels``: candidate targets (default all). ``config``: a ``TaborConfig`` (default: the
    ``gtsrb`` preset for inputs up to 64 px, ``imagenet`` above). ``strategy``: a
    ``tf.distribute`` strategy whose scope holds the variables (default: the current one).
    ``deadline`` (``time.monotonic()`` seconds): end the trigger search in time to score the
    triggers by then; labels cut short stop with ``time_budget`` and the result says so
    (``ScanResult.time_limited``); the engine state is kept so the same scan resumes.
    """
    started = time.perf_counter()
    mode = resolve_mode(preprocess)
    if mode == "auto":
        raise TaborError("scan needs a concrete preprocessing mode; resolve 'auto' first (input_check)")
    x, y = _clean_arrays(victim, data)
    config, overlay_note = for_clean_data(config or preset(default_preset_for(victim.input_shape)), x)
    chosen = scan_labels(int(victim.num_classes), labels)
    y_ref, clean_acc, y_source = reference_labels(victim, x, y, mode)
    notes = [overlay_note] if overlay_note else []
    phases = {"preparation": time.perf_counter() - started}
    fingerprint = _fingerprint(victim, x, mode, config, seed, chosen)
    result = load_triggers(checkpoint_dir, fingerprint) if checkpoint_dir else None
    if result is not None:
        notes.append(f"triggers of {len(chosen)} labels reused from {Path(checkpoint_dir) / CHECKPOINT_FILE}")
    else:
        engine = TriggerEngine(victim.logits, x, y_ref, chosen, config, preprocess=mode, seed=seed, strategy=strategy)
        state_path = Path(checkpoint_dir) / STATE_FILE if checkpoint_dir else None
        reserve = scoring_reserve(len(chosen), int(min(len(x), config.eval_images)))
        screen = two_stage_screen(victim, x, y_ref, config, mode, seed, len(chosen))
        result = engine.run(progress, method=METHOD, checkpoint_path=state_path, fingerprint=fingerprint,
                            deadline=deadline, reserve=reserve, screen=screen)
        if result.resumed_at_step:
            notes.append(f"trigger search resumed at step {result.resumed_at_step} from {state_path}")
        if checkpoint_dir and not result.time_limited:  # a cut search stays resumable, never reused as done
            save_triggers(checkpoint_dir, result, fingerprint)
            state_path.unlink(missing_ok=True)
    phases["search"] = time.perf_counter() - started - sum(phases.values())
    scores = score_triggers(victim, x, y_ref, result, config, mode, seed)
    a_values = [p["A"] for p in scores]
    mad = outlier_test(config, a_values, chosen)
    if mad.floor > 0 and mad.mad <= mad.floor:
        raw = mad_test(a_values, chosen, threshold=mad.threshold, side=mad.side).mad
        notes.append(f"the labels' scores agree closely (MAD of A {raw:.2f}): the anomaly index divides by the"
                     f" floor {mad.floor:g} instead, so a label must beat the median A by"
                     f" {mad.floor * mad.threshold:.2f} to be flagged (mad_floor)")
    phases["scoring"] = time.perf_counter() - started - sum(phases.values())
    mad, confirmation = _confirm(victim, x, y_ref, config, mode, seed, mad, strategy, result, deadline, notes)
    phases["confirmation"] = time.perf_counter() - started - sum(phases.values())
    label_results = []
    for i, lab in enumerate(chosen):
        parts = dict(scores[i])
        parts["lambdas"] = {n: float(v) for n, v in zip(TERM_NAMES, result.lambdas[i])}
        parts["terms"] = {n: float(v) for n, v in zip(TERM_NAMES, result.best_terms[i])}
        parts["round_success"] = float(result.round_success[i])
        parts["reached_threshold"] = bool(result.reached[i])
        if confirmation and lab in confirmation:
            parts["confirm_indices"] = confirmation[lab]
        mask = np.asarray(result.masks[i], np.float32)
        label_results.append(LabelResult(
            label=lab, mask=mask, pattern=np.asarray(result.patterns[i], np.float32), score=float(parts["A"]),
            attack_success=float(parts["acc_att"]), l1=float(np.sum(np.abs(mask), dtype=np.float64)),
            steps=int(result.steps[i]), stop_reason=result.stop_reasons[i], seconds=float(result.seconds[i]),
            parts=parts))
        emit(progress, method=METHOD, labels_done=i + 1, labels_total=len(chosen), step=int(result.steps[i]),
             max_steps=int(config.steps), label=lab, message=f"label {lab} scored: A={parts['A']:.3f}")
    settings = dict(config.to_dict(), seed=int(seed), labels=chosen, preprocess=mode, reference_labels=y_source,
                    eval_images_used=int(min(len(x), config.eval_images)), image_steps=int(result.image_steps),
                    optimise_seconds=float(result.wall_seconds),
                    images_per_second=float(result.images_per_second),
                    phase_seconds={k: round(float(v), 3) for k, v in phases.items()})
    time_limited = None
    if result.time_limited:
        cut = sum(r == TIME_BUDGET for r in result.stop_reasons)
        time_limited = (f"the time budget ended the trigger search at step {int(np.max(result.steps))} of"
                        f" {int(config.steps)} with {cut} of {len(chosen)} labels still optimising")
    return ScanResult(method=METHOD, labels=label_results, mad=mad, seconds=time.perf_counter() - started,
                      settings=settings, clean_accuracy=clean_acc, notes=notes, time_limited=time_limited,
                      num_classes=int(victim.num_classes))
