"""report.json and the per-label trigger files of one scan (schema: ``docs/REPORT_SCHEMA.md``).

Layout of a report folder ``DIR``::

    DIR/report.json                      the machine-readable report (this module)
    DIR/report.html                      the analyst's page (``tabor_tf.html_report``)
    DIR/labels/label_007_mask.png        mask [H,W] as 8-bit grey (0 = no trigger, 255 = full)
    DIR/labels/label_007_pattern.png     pattern [H,W,C] raw pixels as 8-bit RGB / grey
    DIR/labels/label_007_fusion.png      M * Delta (the trigger on black), 8-bit
    DIR/labels/label_007_{mask,pattern,fusion}.npy   the same as float32 arrays (exact values)
    DIR/labels/label_007_completed_{mask,pattern,fusion}.{png,npy}   flagged labels: the whole
                                         trigger grown from the minimal one (``tabor_tf.completion``)

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a
reader never sees half a report, and report.json is written last: when it exists, the image
files it names exist too.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from . import __version__
from .errors import TaborError
from .results import LabelResult, ScanResult, _jsonable

SCHEMA_VERSION = 1
REPORT_NAME = "report.json"
LABELS_DIR = "labels"
FILE_KINDS = ("mask", "pattern", "fusion", "completed_mask", "completed_pattern", "completed_fusion")


@dataclass(frozen=True)
class ReportContext:
    """What a scan ran on, besides its result: goes into report.json as is.

    ``model``: path, sha256, format, input_shape, num_classes, output_kind.
    ``data``: path, format, samples, labelled.
    ``preprocess``: mode, clean_accuracy, accuracies_by_mode, warnings.
    ``extra``: further top-level keys (later schema additions), merged in last.
    """

    model: dict
    data: dict
    preprocess: dict
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "model": dict(self.model),
            "data": dict(self.data),
            "preprocess": dict(self.preprocess),
            "seed": int(self.seed),
            "extra": dict(self.extra),
        }


# ----------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the mode of a plain ``open(path, "w")``: 0666 less the process umask (0644 under
    umask 022). The temporary file is created with ``O_CREAT | O_EXCL`` and mode 0666 so the kernel
    applies the umask (and any default ACL); ``mkstemp`` would leave every report 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def strict_json(obj):
    """``obj`` with numpy scalars / arrays converted and non-finite floats replaced by ``None``."""
    obj = _jsonable(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj) -> str:
    """Strict JSON text (no NaN / Infinity), UTF-8 symbols kept, stable key order, indent 2."""
    return json.dumps(strict_json(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path, obj) -> Path:
    return atomic_write_bytes(path, dumps(obj).encode("utf-8"))


# ----------------------------------------------------------------------------- images


def to_uint8_image(array: np.ndarray, *, is_mask: bool = False) -> np.ndarray:
    """Float image -> uint8 for a PNG: a mask ``[H,W]`` in [0,1] x 255, raw pixels clipped to 0..255."""
    a = np.asarray(array, dtype=np.float64)
    if is_mask:
        a = a * 255.0
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def png_bytes(image_u8: np.ndarray) -> bytes:
    """PNG of an RGB (``[H,W,3]``) or grey (``[H,W]`` / ``[H,W,1]``) uint8 image."""
    img = np.asarray(image_u8)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise TaborError("could not encode a PNG image")
    return buf.tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    bio = io.BytesIO()
    np.save(bio, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return bio.getvalue()


def label_arrays(result: LabelResult) -> dict:
    """``{"mask": [H,W], "pattern": [H,W,C], "fusion": [H,W,C]}`` float32 of one label, plus the
    ``completed_*`` three when the trigger was completed (``tabor_tf.completion``)."""
    arrays = {}
    for prefix, mask, pattern in (("", result.mask, result.pattern),
                                  ("completed_", result.completed_mask, result.completed_pattern)):
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=np.float32)
        if mask.ndim == 3:
            mask = mask[..., 0]
        pattern = np.asarray(pattern, dtype=np.float32)
        arrays.update({prefix + "mask": mask, prefix + "pattern": pattern, prefix + "fusion": mask[..., None] * pattern})
    return arrays


def label_stem(label: int) -> str:
    return f"label_{int(label):03d}"


def remove_stale_label_files(out_dir, files: dict) -> list:
    """Delete label files of an earlier scan in ``out_dir/labels`` that ``files`` (this scan's
    ``{label: {kind: rel_path}}``) does not name; only names this module writes are touched."""
    import re

    keep = {Path(rel).name for paths in files.values() for rel in paths.values()}
    pattern = re.compile(r"label_\d{3,}_(%s)\.(png|npy)" % "|".join(FILE_KINDS))
    removed = []
    folder = Path(out_dir) / LABELS_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            if pattern.fullmatch(path.name) and path.name not in keep:
                path.unlink()
                removed.append(path.name)
    return removed


def write_label_files(result: LabelResult, out_dir) -> dict:
    """Write one label's PNG and .npy files; return ``{"mask_png": rel_path, ...}`` (posix, relative)."""
    out_dir = Path(out_dir)
    paths = {}
    for kind, arr in label_arrays(result).items():
        rel_png = f"{LABELS_DIR}/{label_stem(result.label)}_{kind}.png"
        rel_npy = f"{LABELS_DIR}/{label_stem(result.label)}_{kind}.npy"
        atomic_write_bytes(out_dir / rel_png, png_bytes(to_uint8_image(arr, is_mask=kind.endswith("mask"))))
        atomic_write_bytes(out_dir / rel_npy, npy_bytes(arr))
        paths[f"{kind}_png"] = rel_png
        paths[f"{kind}_npy"] = rel_npy
    return paths


# ----------------------------------------------------------------------------- the report


def method_key(method: str) -> str:
    """Canonical method name: ``tabor`` or ``neural_cleanse`` (accepts ``nc``, ``neural-cleanse``)."""
    key = str(method).strip().lower().replace("-", "_")
    if key in ("nc", "neural_cleanse", "neuralcleanse"):
        return "neural_cleanse"
    if key == "tabor":
        return "tabor"
    raise TaborError(f"unknown method {method!r}; choose tabor or nc")


def detection_limit_text(report: dict) -> Optional[str]:
    """The blind spot a clean verdict leaves, in words, from ``report["detection_limit"]`` (None for
    other verdicts, and for reports written before the field existed)."""
    limit = report.get("detection_limit")
    if report.get("verdict") != "clean" or not limit:
        return None
    return (f"a trigger whose smallest working part needs a mask of about {limit['natural_l1_median']:.0f} px"
            f" ({100 * limit['natural_fraction']:.0f}% of the image) or more costs what this model's natural"
            " features cost and is not an outlier: this verdict does not rule it out (docs/TABOR_CHOICES.md,"
            " \"Large triggers\")")


def build_report(scan: ScanResult, context: ReportContext, label_files: Optional[dict] = None,
                 calibration=None) -> dict:
    """The report.json dictionary (see docs/REPORT_SCHEMA.md). ``label_files``: label -> file paths.
    ``calibration``: a ``tabor_tf.calibration.Calibration`` for ``trojan_probability`` (default:
    the shipped ``tabor_tf/assets/calibration.json``)."""
    from .calibration import report_block

    label_files = label_files or {}
    labels = []
    for r in scan.labels:
        entry = r.summary()
        entry["mad_index"] = scan.mad.label_indices.get(int(r.label))
        # the same number with the banner's sign: (median - score) / MAD, positive = more suspicious
        entry["anomaly_index"] = None if entry["mad_index"] is None else -float(entry["mad_index"])
        entry["flagged"] = int(r.label) in scan.flagged_labels
        entry["files"] = dict(label_files.get(int(r.label), {}))
        labels.append(entry)
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "method": method_key(scan.method),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": dict(context.model),
        "data": dict(context.data),
        "preprocess": dict(context.preprocess),
        "seed": int(context.seed),
        "settings": dict(scan.settings),
        "verdict": scan.verdict,
        "inconclusive_reasons": list(scan.inconclusive_reasons),
        "time_limited": scan.time_limited,
        "coverage": {
            "labels_scanned": len(scan.labels),
            "num_classes": None if scan.num_classes is None else int(scan.num_classes),
            "partial": bool(scan.partial),
            "label_selection": scan.label_selection,
        },
        "flagged_labels": [int(v) for v in scan.flagged_labels],
        "anomaly_index": float(scan.mad.anomaly_index),
        "first_start_anomaly_index": (None if scan.mad.first_anomaly_index is None
                                      else float(scan.mad.first_anomaly_index)),
        "mad": {
            "median": float(scan.mad.median),
            "mad": float(scan.mad.mad),
            "threshold": float(scan.mad.threshold),
            "side": scan.mad.side,
            "floor": float(scan.mad.floor),
            "score": "a" if method_key(scan.method) == "tabor" else "l1",
        },
        "trojan_probability": report_block(scan.method, scan.mad.anomaly_index, calibration,
                                           model=dict(context.model)),
        "detection_limit": scan.detection_limit,
        "seconds": float(scan.seconds),
        "notes": list(scan.notes),
        "labels": labels,
    }
    if scan.clean_accuracy is not None and report["preprocess"].get("clean_accuracy") is None:
        report["preprocess"]["clean_accuracy"] = float(scan.clean_accuracy)
    for key, value in context.extra.items():
        report[key] = value
    return strict_json(report)


def write_report(scan: ScanResult, out_dir, context: ReportContext, *, html: bool = True,
                 calibration=None) -> dict:
    """Write the label files, then report.json (atomically, last), then report.html.

    Returns the report dictionary; its ``labels[i].files`` paths are relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {int(r.label): write_label_files(r, out_dir) for r in scan.labels}
        remove_stale_label_files(out_dir, files)
        report = build_report(scan, context, files, calibration)
        atomic_write_json(out_dir / REPORT_NAME, report)
    except PermissionError as exc:
        raise TaborError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise TaborError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from exc
    if html:
        from .html_report import write_report_html

        write_report_html(out_dir, report)
    return report


def load_report(path) -> dict:
    """Read a report.json (or the report.json inside a folder) and check its schema version."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TaborError(f"no report at {path}") from exc
    except (OSError, ValueError) as exc:
        raise TaborError(f"cannot read report {path}: {exc}") from exc
    version = report.get("schema_version") if isinstance(report, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TaborError(f"{path} has report schema version {version!r}; this tool reads up to {SCHEMA_VERSION}")
    return report


def load_label_array(report_dir, report: dict, label: int, kind: str = "mask") -> np.ndarray:
    """The float32 ``kind`` array (mask / pattern / fusion) of ``label`` from a report folder."""
    for entry in report.get("labels", []):
        if int(entry["label"]) == int(label):
            rel = entry.get("files", {}).get(f"{kind}_npy")
            if not rel:
                raise TaborError(f"report has no {kind} file for label {label}")
            return np.load(Path(report_dir) / rel, allow_pickle=False)
    raise TaborError(f"label {label} was not scanned in this report")
