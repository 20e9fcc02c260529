"""Mitigation by unlearning, as Neural Cleanse describes it (shared by NC and TABOR).

Fine-tune the infected model on clean data in which a fraction (default 20%) of the samples
carry a restored trigger but keep their TRUE labels, so the model unlearns the trigger -> target
shortcut. The paper uses one epoch on about 10% of the clean training data and reports the
attack success rate falling to a few percent for about one point of clean accuracy.

Pixel domains: images, masks and patterns are raw (0..255); the model sees ``preprocess(x)``.
Triggers: ``(mask [H,W] or [H,W,1] in [0,1], pattern [H,W,C] raw)``, optionally with a target
label as a third item (needed only to measure attack success).

From a scan: ``triggers_from_report(report_dir, labels)`` reads the restored triggers of a
report folder, ``patch_from_report(model, report_dir, x, y, out)`` unlearns them (the
``tabor-tf patch`` command, docs/PATCHING.md).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import DataError, ModelLoadError, TaborError
from .preprocess import preprocess as preprocess_fn
from .preprocess import resolve_mode


@dataclass(frozen=True)
class UnlearnConfig:
    """Settings of one unlearning run. ``lr`` is ours (Adam); the paper does not state one."""

    fraction_with_trigger: float = 0.2
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _mask_pattern(trigger, shape):
    h, w, c = shape
    mask = np.asarray(trigger[0], np.float32).reshape(h, w, 1)
    pattern = np.asarray(trigger[1], np.float32)
    if pattern.shape != (h, w, c):
        raise TaborError(f"trigger pattern has shape {pattern.shape}; the images are {h}x{w}x{c}")
    return mask, pattern


def _check_arrays(x_raw, y):
    x = np.asarray(x_raw, np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"unlearning needs images [N, H, W, C]; got shape {x.shape}")
    if y is None:
        raise DataError("unlearning needs the true labels of the clean images")
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(y) != len(x):
        raise DataError(f"{len(x)} images but {len(y)} labels")
    return x, y


def stamp_fraction(x_raw, triggers: Sequence, fraction: float, rng: np.random.Generator):
    """Stamp a random ``fraction`` of the images (raw) with the triggers, spread evenly over them.

    Returns ``(x_mixed [N,H,W,C] raw, stamped [N] bool)``. Labels are untouched by design.
    """
    x = np.array(x_raw, np.float32, copy=True)
    if not triggers:
        raise TaborError("unlearning needs at least one restored trigger")
    if not 0.0 <= fraction <= 1.0:
        raise TaborError(f"fraction_with_trigger must be in [0, 1], got {fraction}")
    n_stamp = int(round(fraction * len(x)))
    chosen = rng.permutation(len(x))[:n_stamp]
    stamped = np.zeros(len(x), bool)
    stamped[chosen] = True
    parts = [_mask_pattern(t, x.shape[1:]) for t in triggers]
    for k, idx in enumerate(np.array_split(chosen, len(parts))):
        mask, pattern = parts[k]
        x[idx] = x[idx] * (1.0 - mask) + mask * pattern  # tabor_tf.stamping.stamp, in numpy
    return x, stamped


def _outputs_probabilities(model, shape) -> bool:

    from .loading.victim import probe_is_probabilities

    return probe_is_probabilities(lambda x: model(x, training=False), tuple(shape))


def _predict(model, x_raw, mode: str, batch_size: int = 256) -> np.ndarray:
    out = []
    for start in range(0, len(x_raw), batch_size):
        batch = preprocess_fn(np.asarray(x_raw[start : start + batch_size], np.float32), mode)
        out.append(np.argmax(np.asarray(model(batch, training=False)), axis=-1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def evaluate_backdoor(model, x_raw, y, preprocess: str, triggers: Sequence = ()) -> dict:
    """Clean accuracy and, per trigger ``(mask, pattern, target)``, its attack success.

    Attack success = fraction of the images whose true label is not the target that the stamped
    trigger sends to the target. Returns ``{"clean_accuracy", "attack_success": [..]}``.
    """
    mode = resolve_mode(preprocess)
    x, y = _check_arrays(x_raw, y)
    result = {"clean_accuracy": float(np.mean(_predict(model, x, mode) == y)), "attack_success": []}
    for trig in triggers:
        if len(trig) < 3:
            raise TaborError("to measure attack success a trigger needs its target: (mask, pattern, target)")
        mask, pattern = _mask_pattern(trig, x.shape[1:])
        target = int(trig[2])
        keep = y != target
        if not np.any(keep):
            result["attack_success"].append(None)
            continue
        xs = x[keep] * (1.0 - mask) + mask * pattern
        result["attack_success"].append(float(np.mean(_predict(model, xs, mode) == target)))
    return result


def unlearn(
    model,
    x_raw,
    y,
    preprocess: str,
    triggers: Sequence,
    *,
    fraction_with_trigger: float = 0.2,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
):
    """Fine-tune ``model`` (a trainable Keras model, changed in place) to unlearn ``triggers``.

    ``x_raw [N,H,W,C]`` raw clean images with their true labels ``y [N]``; a ``fraction_with_trigger``
    of them get a restored trigger (spread over ``triggers``) and keep their true label. Adam at
    ``lr``, ``epochs`` passes in an order shuffled with ``seed``. Returns the model.
    """
    import keras

    cfg = UnlearnConfig(fraction_with_trigger, int(epochs), float(lr), int(batch_size), int(seed))
    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise TaborError("unlearning needs epochs >= 1, batch_size >= 1 and lr > 0")
    mode = resolve_mode(preprocess)
    x, y = _check_arrays(x_raw, y)
    rng = np.random.default_rng(cfg.seed)
    x_mixed, _ = stamp_fraction(x, triggers, cfg.fraction_with_trigger, rng)
    x_model = np.asarray(preprocess_fn(x_mixed, mode), np.float32)
    model.trainable = True
    from_logits = not _outputs_probabilities(model, x.shape[1:])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
    )
    for _ in range(cfg.epochs):
        order = rng.permutation(len(x_model))
        model.fit(x_model[order], y[order], batch_size=cfg.batch_size, epochs=1, shuffle=False, verbose=0)
    return model


def load_trainable(path, *, allow_unsafe: bool = False):
    """A fresh, trainable Keras model from a ``.keras`` / ``.h5`` file (the file is only read).

    Uses the same safety checks as ``load_victim`` (no Lambda bytecode / custom objects unless
    ``allow_unsafe``). SavedModel directories cannot be fine-tuned here.
    """
    from .loading import files
    from .loading.keras_files import load_keras_h5, load_keras_zip

    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"{path} is a SavedModel directory; patching needs a Keras .keras or .h5 file")
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    loaded = load_keras_zip(path, allow_unsafe) if files.sniff(path) == "zip" else load_keras_h5(path, allow_unsafe)
    loaded.model.trainable = True
    return loaded.model


def save_model(model, path) -> str:
    """Save the patched model atomically as ``.keras`` or ``.h5`` (chosen by the suffix)."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise TaborError(f"save the patched model as .keras or .h5, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    model.save(str(tmp))
    os.replace(tmp, path)
    return str(path)


def patch(
    model_path,
    x_raw,
    y,
    preprocess: str,
    triggers: Sequence,
    out_path,
    *,
    config: Optional[UnlearnConfig] = None,
    eval_x=None,
    eval_y=None,
    true_triggers: Sequence = (),
    allow_unsafe: bool = False,
) -> dict:
    """Load a fresh copy of ``model_path``, unlearn ``triggers`` (``(mask, pattern, target)``), save it.

    Attack success and clean accuracy before and after are measured on ``eval_x``/``eval_y``
    (default: the fine-tuning data) for the restored triggers and any ``true_triggers``.
    """
    cfg = config or UnlearnConfig()
    model = load_trainable(model_path, allow_unsafe=allow_unsafe)
    ex = x_raw if eval_x is None else eval_x
    ey = y if eval_y is None else eval_y
    measured = [t for t in list(triggers) + list(true_triggers) if len(t) >= 3]
    before = evaluate_backdoor(model, ex, ey, preprocess, measured)
    unlearn(model, x_raw, y, preprocess, triggers, fraction_with_trigger=cfg.fraction_with_trigger,
            epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)
    after = evaluate_backdoor(model, ex, ey, preprocess, measured)
    saved = save_model(model, out_path)
    return {"settings": cfg.to_dict(), "before": before, "after": after, "model_path": saved,
            "restored_triggers": len(list(triggers)), "true_triggers": len(list(true_triggers))}


# ----------------------------------------------------------------------------- from a scan report


TRIGGER_KINDS = ("minimal", "completed")  # which restored trigger to unlearn: as found, or grown whole


def check_trigger_kind(trigger: str) -> None:
    """``TaborError`` unless ``trigger`` is one of ``TRIGGER_KINDS``."""
    if trigger not in TRIGGER_KINDS:
        raise TaborError(f"trigger must be one of {', '.join(TRIGGER_KINDS)}, not {trigger!r}")


def triggers_from_report(report_path, labels: Optional[Sequence[int]] = None, trigger: str = "minimal") -> tuple:
    """The restored triggers of a scan report -> ``([(mask [H,W], pattern [H,W,C] raw, label)], report)``.

    ``report_path``: a report folder or its report.json. ``labels``: which restored triggers
    (default: the report's flagged labels, most suspicious first). ``trigger``: ``minimal`` (as
    the detector restored it) or ``completed`` (the whole trigger of ``tabor_tf.completion`` where
    the report has one, else the minimal one). ``TaborError`` for a clean report without
    ``labels`` or a label the report did not scan.
    """
    from .report import load_label_array, load_report

    path = Path(report_path)
    report_dir = path if path.is_dir() else path.parent
    report = load_report(path)
    chosen = [int(v) for v in (labels if labels else report.get("flagged_labels") or [])]
    if not chosen:
        raise TaborError(f"{report_dir}: the report flags no label; name the trigger(s) to unlearn with --label")
    scanned = {int(e["label"]) for e in report.get("labels", [])}
    missing = [v for v in chosen if v not in scanned]
    if missing:
        raise TaborError(f"label(s) {', '.join(map(str, missing))} were not scanned in {report_dir}; "
                         f"scanned: {', '.join(map(str, sorted(scanned)))}")
    check_trigger_kind(trigger)
    entries = {int(e["label"]): e for e in report.get("labels", [])}

    def prefix(v):
        files = entries[v].get("files", {})
        return "completed_" if trigger == "completed" and files.get("completed_mask_npy") else ""

    triggers = [(load_label_array(report_dir, report, v, prefix(v) + "mask"),
                 load_label_array(report_dir, report, v, prefix(v) + "pattern"), v)
                for v in dict.fromkeys(chosen)]
    return triggers, report


def patch_from_report(
    model_path,
    report_path,
    x_raw,
    y,
    out_path,
    *,
    labels: Optional[Sequence[int]] = None,
    preprocess: Optional[str] = None,
    config: Optional[UnlearnConfig] = None,
    eval_x=None,
    eval_y=None,
    true_triggers: Sequence = (),
    allow_unsafe: bool = False,
    trigger: str = "minimal",
) -> dict:
    """Unlearn the restored triggers of ``labels`` (default: the flagged ones) of a scan report
    from ``model_path`` and save the patched copy to ``out_path`` (``patch`` does the work).

    ``preprocess``: default the mode the scan used (``report["preprocess"]["mode"]``). Returns
    ``patch``'s dictionary plus ``labels``, ``report`` (its path), ``preprocess`` and ``warnings``
    (e.g. the model file is not the one the report scanned). The input model is only read.
    """
    from .loading.files import sha256_path

    triggers, report = triggers_from_report(report_path, labels, trigger)
    mode = preprocess or (report.get("preprocess") or {}).get("mode")
    if not mode:
        raise TaborError("the report does not say how the scan preprocessed the images; give --preprocess")
    warnings = []
    scanned_sha = (report.get("model") or {}).get("sha256")
    if Path(model_path).exists() and scanned_sha and sha256_path(model_path) != scanned_sha:
        warnings.append(f"{model_path} is not the model file the report scanned (sha256 differs); "
                        "its restored triggers may not fit this model")
    result = patch(model_path, x_raw, y, mode, triggers, out_path, config=config, eval_x=eval_x, eval_y=eval_y,
                   true_triggers=true_triggers, allow_unsafe=allow_unsafe)
    result.update(labels=[int(t[2]) for t in triggers], report=str(report_path), preprocess=resolve_mode(mode),
                  warnings=warnings, trigger=trigger)
    return result
