"""One scan from paths to report: the wiring that ``scan``, ``compare`` and ``audit`` share.

    prepared = prepare(model_path, data_path, preprocess="auto", max_samples=1000)
    result, report = run_scan(model_path, data_path, method="tabor", out_dir="scan-x", prepared=prepared)

Stages: ``load_victim`` -> clean data (a file / folder, or ``"synthetic"``: the embedded sign
generator) -> ``select_preprocess`` (auto: the mode with the best clean accuracy) -> the method's
config (preset + typed overrides) -> ``scan`` -> ``write_report`` (report.json, label files,
report.html). ``prepare`` is separate so a caller can show the clean accuracy before the long
part starts and run two methods on exactly the same inputs.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import DataError, TaborError
from .input_check import LOW_ACCURACY
from .output_folder import CHECKPOINT_DIR, default_out_dir, ensure_writable_dir, unique_out_dir  # noqa: F401
from .report import ReportContext, method_key, write_report
from .results import ScanResult

SYNTHETIC = "synthetic"
# make_signs seed for --data synthetic: held out from every seed the zoo trains demo victims on.
SYNTHETIC_DATA_SEED = 90_210
SYNTHETIC_CLASSES = 43
DEFAULT_MAX_SAMPLES = 1000
# fewer clean images than this cannot support a trigger search or an attack-success estimate
MIN_CLEAN_SAMPLES = 10
# below this clean accuracy (input_check's warning level) a scan gives no verdict (exit 2, or
# 'inconclusive' when forced): the model misreads the inputs, so every trigger search runs on noise
CLEAN_ACCURACY_FLOOR = LOW_ACCURACY
# the clean-data subsample does not depend on the scan seed: different seeds see the same images
DATA_SUBSAMPLE_SEED = 0
METHOD_CHOICES = ("tabor", "nc")


# ----------------------------------------------------------------------------- methods and settings


def method_module(method: str):
    """The detector package of ``method`` (``tabor`` / ``nc``): has ``scan`` and ``preset``."""
    key = method_key(method)
    if key == "tabor":
        from . import tabor

        return tabor
    import neural_cleanse_baseline

    return neural_cleanse_baseline


def config_class(method: str):
    key = method_key(method)
    if key == "tabor":
        from .tabor.presets import TaborConfig

        return TaborConfig
    from neural_cleanse_baseline.presets import NCConfig

    return NCConfig


def preset_names(method: str) -> tuple:
    if method_key(method) == "tabor":
        from .tabor.presets import PRESET_NAMES

        return tuple(PRESET_NAMES)
    from neural_cleanse_baseline.presets import PRESETS

    return tuple(PRESETS)


def default_preset(method: str, input_shape=None) -> str:
    """TABOR: ``gtsrb`` up to 64 px a side, ``imagenet`` above; Neural Cleanse: ``gtsrb``."""
    if method_key(method) == "tabor":
        from .tabor.presets import default_preset_for

        return default_preset_for(input_shape) if input_shape is not None else "gtsrb"
    return "gtsrb"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(text: str, annotation, key: str):
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return _convert(text, args[0], key)
    try:
        if annotation is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if annotation is int:
            value = float(text)
            if value != int(value):
                raise ValueError(text)
            return int(value)
        if annotation is float:
            return float(text)
    except ValueError:
        name = getattr(annotation, "__name__", str(annotation))
        raise TaborError(f"--set {key}={text}: {key} takes a {name} value") from None
    return text


def parse_overrides(pairs: Optional[Sequence[str]], method: str) -> dict:
    """``["steps=50", "early_stop=false"]`` -> ``{"steps": 50, "early_stop": False}``, typed by the
    method's config dataclass; ``TaborError`` naming the valid keys for an unknown one."""
    cls = config_class(method)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise TaborError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names or key == "preset":
            raise TaborError(
                f"--set {key}: not a setting of {method_key(method)}; valid keys: "
                + ", ".join(n for n in names if n != "preset")
            )
        out[key] = _convert(value, hints.get(key, str), key)
    return out


def make_config(method: str, preset: Optional[str] = None, overrides: Optional[dict] = None, input_shape=None):
    """The method's config: ``preset`` (default: ``default_preset``) with ``overrides`` applied."""
    name = preset or default_preset(method, input_shape)
    return method_module(method).preset(name, **(overrides or {}))


def parse_labels(text: Optional[str]) -> Optional[list]:
    """``"0,3,5-9"`` -> ``[0, 3, 5, 6, 7, 8, 9]``; ``None`` / ``""`` / ``"all"`` -> ``None`` (all labels)."""
    if text is None or str(text).strip().lower() in ("", "all"):
        return None
    out = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError(part)
                out.update(range(lo_i, hi_i + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise TaborError(f"--labels: cannot read {part!r}; use a list like 0,3,5-9") from None
    if any(v < 0 for v in out):
        raise TaborError("--labels: labels must be >= 0")
    return sorted(out)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Prepared:
    """A loaded model, its clean data and the preprocessing check: the inputs of one or more scans."""

    victim: object
    data: object  # tabor_tf.data.CleanData
    check: object  # tabor_tf.input_check.InputCheck
    data_path: str
    max_samples: Optional[int]

    def context(self, seed: int, extra: Optional[dict] = None) -> ReportContext:
        v = self.victim
        model = {
            "path": os.path.abspath(str(v.path)),
            "sha256": v.sha256,
            "format": v.format,
            "input_shape": [int(d) for d in v.input_shape],
            "num_classes": int(v.num_classes),
            "output_kind": v.output_kind,
        }
        if getattr(v, "version", None) is not None:
            model["version"] = int(v.version)
        data = {
            "path": self.data_path,
            "format": self.data.format,
            "source": str(getattr(self.data, "source", self.data_path)),
            "samples": int(len(self.data.x)),
            "labelled": self.data.y is not None,
            "max_samples": self.max_samples,
            "subsample_seed": DATA_SUBSAMPLE_SEED,
            "label_order": getattr(self.data, "label_order", None),
        }
        prep = self.check.to_dict() if hasattr(self.check, "to_dict") else {"mode": self.check.mode}
        return ReportContext(model=model, data=data, preprocess=prep, seed=int(seed), extra=dict(extra or {}))


def synthetic_data(victim, n: int, *, seed: int = SYNTHETIC_DATA_SEED, num_classes: int = SYNTHETIC_CLASSES):
    """``n`` embedded synthetic sign images (raw 0..255, labelled) sized to the victim's input.

    Needs a square RGB input and a model with ``num_classes`` classes: 43 for ``--data synthetic``
    (GTSRB-like sign classes); a zoo card of a model trained on fewer synthetic classes passes its
    own count. ``seed`` is held out from the zoo's training and test seeds.
    """
    from .data import CleanData
    from .synthetic import make_signs

    h, w, c = (int(d) for d in victim.input_shape)
    if int(victim.num_classes) != int(num_classes):
        raise DataError(
            f"--data synthetic makes {num_classes} sign classes; the model has {victim.num_classes} classes"
            " (give real clean data with --data)"
        )
    if h != w or c != 3:
        raise DataError(f"--data synthetic makes square RGB images; the model expects {h}x{w}x{c}")
    x, y = make_signs(int(n), seed=int(seed), size=h, num_classes=int(num_classes))
    return CleanData(x=x.astype(np.float32), y=y,
                     source=f"synthetic:make_signs(n={n}, seed={seed}, num_classes={num_classes})",
                     format="synthetic")


def prepare(
    model_path,
    data_path,
    *,
    preprocess: str = "auto",
    max_samples: Optional[int] = DEFAULT_MAX_SAMPLES,
    allow_unsafe: bool = False,
    model_version: Optional[int] = None,
    victim=None,
    synthetic_classes: int = SYNTHETIC_CLASSES,
    synthetic_seed: int = SYNTHETIC_DATA_SEED,
    labels: Optional[Sequence[int]] = None,
    allow_low_accuracy: bool = False,
    label_order: str = "auto",
) -> Prepared:
    """Load the model (unless ``victim`` is given) and its clean data, and check the preprocessing.

    ``max_samples``: keep a deterministic, class-stratified subsample of this many images
    (``None`` or 0: all). ``data_path == "synthetic"``: the embedded generator (``max_samples``
    images, default 1000, held-out seed ``synthetic_seed``, ``synthetic_classes`` classes).
    ``labels``: the labels the scan will look at, checked against the model before the data loads.
    Clean accuracy below ``CLEAN_ACCURACY_FLOOR`` is an error (``DataError``: a scan of misread
    inputs means nothing) unless ``allow_low_accuracy``; the scan is then inconclusive.
    ``label_order``: labels of class sub-folders, ``auto`` / ``keras`` / ``numeric`` (``tabor_tf.data``).
    """
    from .data import load_clean_data
    from .input_check import select_preprocess
    from .loading import load_victim

    if victim is None:
        victim = load_victim(model_path, allow_unsafe=allow_unsafe, version=model_version)
    check_labels(labels, int(victim.num_classes))
    limit = int(max_samples) if max_samples else None
    if str(data_path).strip().lower() == SYNTHETIC:
        data = synthetic_data(victim, limit or DEFAULT_MAX_SAMPLES, seed=synthetic_seed, num_classes=synthetic_classes)
        data_label = SYNTHETIC
    else:
        if data_path is None:
            raise DataError("no clean data given (--data PATH, or --data synthetic)")
        data = load_clean_data(data_path, image_shape=victim.input_shape, num_classes=victim.num_classes,
                               limit=limit, seed=DATA_SUBSAMPLE_SEED, min_samples=MIN_CLEAN_SAMPLES,
                               label_order=label_order)
        data_label = os.path.abspath(str(data_path))
    check = select_preprocess(victim, data, preprocess or "auto")
    if str(label_order).strip().lower() == "auto" and data.label_order == "keras" and data.y is not None:
        data, check = _better_folder_order(victim, data, check, data_path, limit, preprocess or "auto")
    if low_accuracy_reason(check) and not allow_low_accuracy:
        hint = "" if data.label_order is None else (
            f" (class folders were labelled in {data.label_order} order: see --label-order)")
        raise DataError(low_accuracy_reason(check) + hint + "; pass --allow-low-accuracy to scan anyway (the"
                        " verdict is then 'inconclusive')")
    return Prepared(victim=victim, data=data, check=check, data_path=data_label, max_samples=limit)


# --label-order auto switches from Keras's folder order to int(name) only for a clear gain
_ORDER_GAIN = 0.02


def _better_folder_order(victim, data, check, data_path, limit, preprocess):
    """``(data, check)``: class folders with unpadded numeric names were labelled in Keras's string
    order (``--label-order auto``); when labelling them by int(name) gives a clearly higher clean
    accuracy (the model was trained that way), use that order instead, and say so in a note."""
    from .data import load_clean_data
    from .input_check import select_preprocess

    try:
        numeric = load_clean_data(data_path, image_shape=victim.input_shape, num_classes=victim.num_classes,
                                  limit=limit, seed=DATA_SUBSAMPLE_SEED, min_samples=MIN_CLEAN_SAMPLES,
                                  label_order="numeric")
    except DataError:  # names that are not numbers (or two names for one number): Keras's order stays
        return data, check
    if np.array_equal(numeric.y, data.y):
        return data, check
    other = select_preprocess(victim, numeric, preprocess)
    if (other.clean_accuracy or 0.0) < (check.clean_accuracy or 0.0) + _ORDER_GAIN:
        return data, check
    note = (f"class folders labelled by int(folder name): clean accuracy {100 * other.clean_accuracy:.1f}% against"
            f" {100 * check.clean_accuracy:.1f}% in Keras's string order (--label-order keras to force it)")
    return dataclasses.replace(numeric, notes=tuple(numeric.notes) + (note,)), other


def low_accuracy_reason(check) -> Optional[str]:
    """Why the clean accuracy of ``check`` (an ``InputCheck``) makes a verdict meaningless, or None."""
    acc = check.clean_accuracy
    if acc is None or acc >= CLEAN_ACCURACY_FLOOR:
        return None
    return (f"clean accuracy {100 * acc:.1f}% with --preprocess {check.mode} is below the floor of"
            f" {100 * CLEAN_ACCURACY_FLOOR:.0f}%: the model misreads these inputs (wrong preprocessing, labels or"
            " data), so no CLEAN / INFECTED verdict can be given")


def check_labels(labels: Optional[Sequence[int]], num_classes: Optional[int] = None) -> None:
    """``TaborError`` for fewer than 3 ``--labels``, or (with ``num_classes``, once the model is
    known) labels outside ``0..num_classes-1``."""
    if labels is None:
        return
    if num_classes is not None:
        bad = [int(v) for v in labels if not 0 <= int(v) < num_classes]
        if bad:
            raise TaborError(f"--labels: {bad} out of range for a model with {num_classes} classes"
                             f" (0..{num_classes - 1})")
    if len(set(labels)) < 3:
        raise TaborError(f"--labels: the outlier test needs at least 3 labels, got {len(set(labels))}")


def scan_identity(model_path, *, method: str, data_path, seed: int, labels=None, preprocess: str = "auto",
                  max_samples=None, preset=None, overrides=None, model_version=None, seeds: int = 1,
                  label_order: str = "auto", prescreen: Optional[int] = None) -> dict:
    """What decides a scan's outcome, known before anything is loaded: a report folder belongs to
    one identity (``tabor_tf.output_folder.claim``), and only the same identity resumes in it."""
    from .loading.files import sha256_path

    path = Path(str(model_path)).expanduser()
    synthetic = str(data_path).strip().lower() == SYNTHETIC
    identity = {
        "model": os.path.abspath(str(path)),
        "model_sha256": sha256_path(path) if path.exists() else None,
        "model_version": model_version,
        "method": method_key(method),
        "data": SYNTHETIC if synthetic else os.path.abspath(str(data_path)),
        "max_samples": max_samples,
        "label_order": str(label_order),
        "preprocess": str(preprocess),
        "seed": int(seed),
        "seeds": int(seeds),
        "labels": None if labels is None else sorted(int(v) for v in labels),
        "preset": preset,
        "overrides": {k: overrides[k] for k in sorted(overrides or {})},
    }
    if prescreen is not None:  # only when given, so folders of scans without it keep their identity
        identity["prescreen"] = int(prescreen)
    return identity


# ----------------------------------------------------------------------------- the scan


def _complete(result, victim, prepared, rounds: Optional[int], seed: int, progress, deadline) -> None:
    """Trigger completion of the flagged labels (``tabor_tf.completion``), recorded in the settings."""
    from .completion import CompletionSettings, complete_flagged

    settings = CompletionSettings() if rounds is None else CompletionSettings(rounds=int(rounds))
    result.settings["completion"] = settings.to_dict()
    complete_flagged(result, victim, np.asarray(prepared.data.x, np.float32), getattr(prepared.data, "y", None),
                     prepared.check.mode, settings=settings, seed=int(seed), progress=progress, deadline=deadline)


def run_scan(
    model_path=None,
    data_path=None,
    *,
    method: str = "tabor",
    preprocess: str = "auto",
    labels: Optional[Sequence[int]] = None,
    seed: int = 0,
    preset: Optional[str] = None,
    overrides: Optional[dict] = None,
    max_samples: Optional[int] = DEFAULT_MAX_SAMPLES,
    out_dir=None,
    allow_unsafe: bool = False,
    model_version: Optional[int] = None,
    progress=None,
    checkpoint: bool = True,
    html: bool = True,
    prepared: Optional[Prepared] = None,
    extra: Optional[dict] = None,
    execution=None,
    allow_low_accuracy: bool = False,
    deadline: Optional[float] = None,
    label_selection: Optional[str] = None,
    completion_rounds: Optional[int] = None,
) -> tuple:
    """Scan one model with one method -> ``(ScanResult, report_dict)``.

    ``prepared``: inputs from ``prepare`` (then ``model_path`` / ``data_path`` / ``preprocess`` /
    ``max_samples`` are not used again). ``out_dir``: where report.json, the label files and
    report.html go (``None``: nothing is written, the report dictionary is still returned).
    ``checkpoint``: keep finished work in ``out_dir/.checkpoint/<method>`` so the same call
    resumes after an interruption. ``overrides``: config fields (typed values) over the preset.
    ``extra``: more top-level report keys. ``execution``: strategy and precision
    (``tabor_tf.distribute.Execution``; default: the one set by ``distribute.using``, else the
    default strategy in float32); both detectors run in its strategy's scope.
    ``allow_low_accuracy``: scan below the clean-accuracy floor (verdict ``inconclusive``) instead
    of raising ``DataError``. ``deadline`` (``time.monotonic()`` seconds, ``--time-budget``): the
    detector ends its search in time and says so (``ScanResult.time_limited``); never ``clean`` then.
    ``completion_rounds``: peel rounds of the trigger completion of flagged labels
    (``tabor_tf.completion``; None: its default, 0: off; never changes the verdict).
    ``label_selection``: how ``labels`` were chosen when not by the user (``tabor_tf.label_plan``),
    for the report.
    """
    key = method_key(method)
    if prepared is None:
        prepared = prepare(model_path, data_path, preprocess=preprocess, max_samples=max_samples,
                           allow_unsafe=allow_unsafe, model_version=model_version, labels=labels,
                           allow_low_accuracy=allow_low_accuracy)
    victim = prepared.victim
    config = make_config(key, preset, overrides, victim.input_shape)
    if out_dir is not None:
        ensure_writable_dir(out_dir)
    checkpoint_dir = None
    if out_dir is not None and checkpoint:
        checkpoint_dir = Path(out_dir) / CHECKPOINT_DIR / key
    from .distribute import current, images_per_step, victim_for

    execution = execution or current()
    if key == "tabor" and "max_images_per_step" not in (overrides or {}):
        fit = images_per_step(victim, execution)  # labels are chunked to the memory budget
        if fit is not None and fit < config.max_images_per_step:
            config = dataclasses.replace(config, max_images_per_step=int(fit))
    with execution.scope():  # variables and optimiser state of either detector live in it
        run_victim = victim_for(victim, execution)  # mirrored weights / float16 twin when asked
        result: ScanResult = method_module(key).scan(
            run_victim,
            prepared.data,
            preprocess=prepared.check.mode,
            labels=labels,
            config=config,
            seed=int(seed),
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            deadline=deadline,
            **({"strategy": execution.strategy} if key == "tabor" else {}),
        )
    # outside the strategy's scope, on the plain float32 model: one label at a time needs no replicas
    completion_started = time.perf_counter()
    _complete(result, victim, prepared, completion_rounds, seed, progress, deadline)
    # TABOR times its own phases; a detector that does not is one search phase (Neural Cleanse)
    phases = result.settings.setdefault("phase_seconds", {"search": round(float(result.seconds), 3)})
    phases["completion"] = round(time.perf_counter() - completion_started, 3)
    result.seconds += phases["completion"]  # the report's seconds cover the whole scan
    result.label_selection = label_selection
    reason = low_accuracy_reason(prepared.check)
    if reason:
        result.inconclusive.append(reason + " (scanned anyway: --allow-low-accuracy)")
    result.settings.update(strategy=execution.strategy_name, replicas=int(execution.replicas),
                           precision=execution.precision, memory_budget_gib=execution.budget_gib)
    context = prepared.context(seed, extra)
    if out_dir is not None:
        report = write_report(result, out_dir, context, html=html)
    else:
        from .report import build_report

        report = build_report(result, context)
    return result, report
