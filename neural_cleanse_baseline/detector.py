"""``scan``: Neural Cleanse on every candidate label, then the MAD test on the mask L1 norms.

Labels run in the reference order (ascending, a suspected target first). Each label gets its own
seeded RNG (``seed``, ``label``) for the initialisation and the batch order, so a label's result
does not depend on which labels ran before it and an interrupted scan resumes exactly from
``checkpoint_dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tabor_tf.errors import DataError, TaborError
from tabor_tf.outliers import mad_test
from tabor_tf.preprocess import resolve_mode
from tabor_tf.progress import ProgressFn, emit
from tabor_tf.results import LabelResult, ScanResult

from .presets import NCConfig, preset
from .reverse import Reverser, ReverseOutcome, png8_l1

METHOD = "neural_cleanse"
# settings that change only the order of the labels or the decision, not a label's trigger
_NOT_IN_FINGERPRINT = ("suspected_target", "mad_threshold", "mad_score", "preset")


def scan_order(num_classes: int, labels: Optional[Sequence[int]] = None, suspected: Optional[int] = None) -> list:
    """Labels to scan in the reference order: ascending, ``suspected`` moved to the front."""
    chosen = range(num_classes) if labels is None else labels
    order = sorted({int(v) for v in chosen})
    bad = [v for v in order if not 0 <= v < num_classes]
    if bad:
        raise TaborError(f"label(s) {bad} out of range for a model with {num_classes} classes")
    if not order:
        raise TaborError("no labels to scan")
    if suspected is not None and int(suspected) in order:
        order.remove(int(suspected))
        order.insert(0, int(suspected))
    return order


def _clean_arrays(victim, data):
    x = getattr(data, "x", data)
    x = np.asarray(x, dtype=np.float32)
    y = getattr(data, "y", None)
    shape = tuple(int(v) for v in victim.input_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        expected = ", ".join(map(str, shape))
        raise DataError(f"clean images have shape {tuple(x.shape)}; the model expects [N, {expected}]")
    if x.shape[0] < 1:
        raise DataError("no clean images given")
    return x, (None if y is None else np.asarray(y).reshape(-1))


def _fingerprint(victim, x, mode: str, config: NCConfig, seed: int) -> str:
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
    if config.scheduler == "none":  # a faithful label's result does not depend on the scheduler's knobs
        settings = {k: v for k, v in settings.items() if not k.startswith("scheduler")}
    key = {
        "settings": settings,
        "seed": int(seed),
        "preprocess": mode,
        "data": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
        "data_shape": list(x.shape),
        "model": getattr(victim, "sha256", None) or [list(victim.input_shape), int(victim.num_classes)],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _to_label_result(out: ReverseOutcome, attack_success: float, seconds: float, score_kind: str) -> LabelResult:
    l1 = float(np.sum(np.abs(out.mask), dtype=np.float64))
    l1_png8 = png8_l1(out.mask)
    return LabelResult(
        label=out.label,
        mask=out.mask,
        pattern=out.pattern,
        score=l1_png8 if score_kind == "l1_png8" else l1,
        attack_success=float(attack_success),
        l1=l1,
        steps=out.steps,
        stop_reason=out.stop_reason,
        seconds=float(seconds),
        parts={
            "final_cost": out.final_cost,
            "reg_best": out.reg_best if np.isfinite(out.reg_best) else None,
            "reached_threshold": bool(out.reached_threshold),
            "l1_png8": l1_png8,
        },
    )


# ----- checkpoints ----------------------------------------------------------------------------
def _paths(directory: Path, label: int):
    stem = directory / f"nc_label_{label:03d}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def save_label(directory, result: LabelResult, fingerprint: str, logs=()) -> None:
    """Write one finished label (``.npz`` arrays, then the ``.json`` that marks it complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    npz_path, json_path = _paths(directory, result.label)
    tmp = npz_path.with_name(npz_path.stem + ".tmp.npz")
    np.savez(tmp, mask=result.mask, pattern=result.pattern, logs=np.asarray(list(logs), dtype=np.float64))
    os.replace(tmp, npz_path)
    tmp_json = json_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps({"fingerprint": fingerprint, "result": result.summary()}, indent=1))
    os.replace(tmp_json, json_path)


def load_label(directory, label: int, fingerprint: str, score_kind: str) -> Optional[LabelResult]:
    """A label saved by an earlier run with the same settings, or None."""
    npz_path, json_path = _paths(Path(directory), label)
    if not (npz_path.is_file() and json_path.is_file()):
        return None
    try:
        meta = json.loads(json_path.read_text())
        if meta.get("fingerprint") != fingerprint:
            return None
        s = meta["result"]
        with np.load(npz_path) as arrays:
            mask, pattern = arrays["mask"].astype(np.float32), arrays["pattern"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None
    parts = dict(s.get("parts", {}))
    return LabelResult(
        label=int(s["label"]),
        mask=mask,
        pattern=pattern,
        score=float(parts["l1_png8"]) if score_kind == "l1_png8" else float(s["l1"]),
        attack_success=float(s["attack_success"]),
        l1=float(s["l1"]),
        steps=int(s["steps"]),
        stop_reason=str(s["stop_reason"]),
        seconds=float(s["seconds"]),
        parts=parts,
    )


def _clean_accuracy(victim, x, y, mode: str) -> Optional[float]:
    if y is None:
        return None
    import tensorflow as tf

    from tabor_tf.preprocess import preprocess as preprocess_fn

    hits = 0
    for start in range(0, len(x), 256):
        logits = victim.logits(preprocess_fn(tf.constant(x[start : start + 256]), mode))
        hits += int(np.sum(np.argmax(np.asarray(logits), axis=-1) == y[start : start + 256]))
    return hits / len(x)


# ----- the budget scheduler (not part of Neural Cleanse; NCConfig.scheduler="retire") ---------
def _warm_up_and_retire(cfg: NCConfig, order: list, run_label, checkpoint_dir, notes: list) -> tuple:
    """Run every label for at most ``scheduler_warmup_steps`` steps, then retire the labels whose
    warm-up score is far above the median (``tabor_tf.tabor.scheduler.retire``, the rule of the
    TABOR engine). Returns ``(labels still to run in full, {label: retired LabelResult})``.

    A label that early-stopped within the warm-up already has its faithful result and is kept
    as it is (the first steps of a run do not depend on the step cap). A label that runs in full
    starts again from its seed, so its result equals the faithful scan's. Retired labels keep a
    less optimised, larger mask: they can only move the MAD test towards fewer flags as long as
    they stay above the median (see the TABOR scheduler's docstring).
    """
    from tabor_tf.tabor.scheduler import RetireSettings, retire

    directory = Path(checkpoint_dir) / "warmup" if checkpoint_dir is not None else None
    warm = {label: run_label(label, 0, max_steps=int(cfg.scheduler_warmup_steps), directory=directory,
                             tag=" (warm-up)") for label in order}
    labels = list(order)
    scores = np.array([warm[k].score for k in labels], np.float64)
    finished = np.array([warm[k].stop_reason == "early_stop" for k in labels])
    reached = np.array([bool(warm[k].parts.get("reached_threshold")) for k in labels])
    settings = RetireSettings(warmup_rounds=1, margin=float(cfg.scheduler_margin),
                              max_fraction=float(cfg.scheduler_max_fraction))
    out = retire(scores, scores, 0, ~finished, reached, np.zeros(len(labels), bool), 1, settings)
    kept = {}
    for i, label in enumerate(labels):
        if out[i]:
            warm[label].stop_reason = "retired"
            kept[label] = warm[label]
        elif finished[i]:
            kept[label] = warm[label]
    if out.any():
        notes.append(f"budget scheduler (not faithful): labels {[labels[i] for i in np.flatnonzero(out)]} kept their"
                     f" {cfg.scheduler_warmup_steps}-step warm-up trigger")
    return [k for k in labels if k not in kept], kept


# ----- the scan -------------------------------------------------------------------------------
MAD_MINIMUM = 3  # labels the MAD test needs: a time budget never ends the scan with fewer
TIME_BUDGET = "time_budget"  # stop reason of a label the deadline cut short
SCORING_RESERVE = 0.05  # share of the time left kept free for each label's scoring and the report


def _label_stop_at(deadline: Optional[float], done: int, now: float) -> Optional[float]:
    """``time.monotonic()`` time at which the label about to start must stop, or None (no deadline).
    The first ``MAD_MINIMUM`` labels split the time left evenly; later ones may run to the deadline."""
    if deadline is None:
        return None
    left = max(deadline - now, 0.0) * (1.0 - SCORING_RESERVE)
    return now + left / max(MAD_MINIMUM - done, 1)


def scan(
    victim,
    data,
    *,
    preprocess: str,
    labels: Optional[Sequence[int]] = None,
    config: Optional[NCConfig] = None,
    seed: int = 0,
    progress: ProgressFn = None,
    checkpoint_dir=None,
    deadline: Optional[float] = None,
) -> ScanResult:
    """Run Neural Cleanse on ``victim`` with clean ``data`` (raw 0..255) -> ``ScanResult``.

    ``preprocess``: the model's input mode (``tabor_tf.preprocess``); ``labels``: labels to scan
    (default all, at least 3 for the MAD test); ``config``: ``NCConfig`` (default preset ``gtsrb``);
    ``checkpoint_dir``: keep each finished label there and reuse it on a re-run with the same
    settings, model and data. ``deadline`` (``time.monotonic()`` seconds): the first 3 labels (the
    MAD test's minimum) share the time left before it, each cut short at its share; after them,
    start no label whose expected time (the slowest label so far) would end after the deadline,
    and cut any label still running then. Labels cut short stop with ``time_budget`` (their best
    mask so far, never checkpointed as finished); labels not reached make the result partial
    (``ScanResult.time_limited``).
    """
    cfg = config if config is not None else preset("gtsrb")
    mode = resolve_mode(preprocess)
    if mode == "auto":
        raise TaborError("Neural Cleanse needs a resolved preprocessing mode, not 'auto'")
    x, y = _clean_arrays(victim, data)
    order = scan_order(int(victim.num_classes), labels, cfg.suspected_target)
    if len(order) < 3:
        raise TaborError(f"the MAD test needs at least 3 labels; {len(order)} requested")
    started = time.time()
    reverser = Reverser(victim, x, mode, cfg)
    fingerprint = _fingerprint(victim, x, mode, cfg, seed) if checkpoint_dir is not None else ""
    results, notes = {}, []
    total = len(order)

    def run_label(label, done, max_steps=None, directory=checkpoint_dir, tag="", stop_at=None):
        result = load_label(directory, label, fingerprint, cfg.mad_score) if directory else None
        if result is not None:
            notes.append(f"label {label}{tag}: reused from {directory}")
            return result
        t0 = time.time()

        def on_step(step, stats):
            emit(progress, method=METHOD, labels_done=done, labels_total=total, step=step,
                 max_steps=cfg.steps if max_steps is None else max_steps, label=label,
                 message=f"cost {stats['cost']:.2e} attack {stats['acc']:.3f} reg {stats['reg']:.2f}")

        out = reverser.run(label, np.random.default_rng([int(seed), int(label)]), on_step, max_steps=max_steps,
                           stop_at=stop_at)
        success = reverser.attack_success(out.mask, out.pattern, label)
        result = _to_label_result(out, success, time.time() - t0, cfg.mad_score)
        if directory is not None and out.stop_reason != TIME_BUDGET:  # a cut label is redone on resume
            save_label(directory, result, fingerprint, out.logs)
        return result

    final_order = order
    if cfg.scheduler == "retire":
        final_order, retired = _warm_up_and_retire(cfg, order, run_label, checkpoint_dir, notes)
        results.update(retired)
    time_limited = None
    slowest = 0.0
    for done, label in enumerate(final_order, start=len(results)):
        if deadline is not None and len(results) >= MAD_MINIMUM and time.monotonic() + slowest > deadline:
            time_limited = (f"the time budget ended the scan after {len(results)} of {total} labels"
                            f" (the rest were not started)")
            break
        t_label = time.monotonic()
        result = run_label(label, done, stop_at=_label_stop_at(deadline, len(results), t_label))
        slowest = max(slowest, time.monotonic() - t_label)
        if not result.parts.get("reached_threshold", True):
            notes.append(
                f"label {label}: no mask reached attack success {cfg.attack_success_threshold}; "
                "the last mask is used, as the reference does"
            )
        results[label] = result
        emit(progress, method=METHOD, labels_done=done + 1, labels_total=total, step=result.steps,
             max_steps=cfg.steps, label=label,
             message=f"label {label}: L1 {result.l1:.2f}, attack {result.attack_success:.3f}, {result.stop_reason}")
    cut = [k for k in sorted(results) if results[k].stop_reason == TIME_BUDGET]
    if cut:
        time_limited = (time_limited or f"the time budget ended the scan after {len(results)} of {total} labels")
        time_limited += f"; labels {cut} were cut short before their last step"
    label_results = [results[k] for k in sorted(results)]
    mad = mad_test([r.score for r in label_results], [r.label for r in label_results], cfg.mad_threshold)
    settings = cfg.to_dict()
    settings.update({"seed": int(seed), "preprocess": mode, "labels_order": order, "num_images": int(len(x))})
    return ScanResult(
        method=METHOD,
        labels=label_results,
        mad=mad,
        seconds=time.time() - started,
        settings=settings,
        clean_accuracy=_clean_accuracy(victim, x, y, mode),
        notes=notes,
        num_classes=int(victim.num_classes),
        time_limited=time_limited,
    )
