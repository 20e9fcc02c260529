"""Audit many models in one job: discover them, scan each (``run_scan``), summarise, gate.

    items = discover("models/signs", data="clean.npz", versions="all")
    summary = run_audit(items, "audit-out", AuditSettings(method="nc"))
    exit_status(summary)   # 2 if any model could not be scanned, else 1 if any infected, 3 if any
                           # inconclusive, else 0

PATH kinds: a TF Serving model base path (``NAME/<version>/`` SavedModels: every version or the
latest), a folder of model files (``.h5`` / ``.hdf5`` / ``.keras`` / SavedModel folders / zoo-style
sub-folders ``NAME/model.h5``), a
manifest (``.json``: a list of objects, or ``.csv`` with a header) with columns ``model``, ``data``,
``preprocess``, ``labels`` (and optional ``id``; relative paths are relative to the manifest), or
a single model file / SavedModel.

Layout of ``OUT``: ``OUT/<model-id>/report.json`` (+ html, label files; with ``seeds > 1``:
``OUT/<model-id>/seed-<s>/`` and ``stability.json``), ``OUT/audit.json`` and ``OUT/audit.md``
(rewritten after every model, atomically). A model whose report already carries the same model
sha256 and settings hash (``report["audit"]``) is not scanned again. One model failing (bad file,
bad data, detector error) is recorded with its error and the audit goes on.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import TaborError

AUDIT_SCHEMA_VERSION = 1
SUMMARY_JSON, SUMMARY_MD = "audit.json", "audit.md"
MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")
STATUS_SCANNED, STATUS_REUSED, STATUS_ERROR = "scanned", "reused", "error"


@dataclass(frozen=True)
class AuditSettings:
    """Scan settings shared by every model of an audit (a manifest row may set data / preprocess / labels)."""

    method: str = "tabor"
    preprocess: str = "auto"
    seed: int = 0
    seeds: int = 1
    preset: Optional[str] = None
    overrides: tuple = ()  # sorted (key, value) pairs, typed
    max_samples: Optional[int] = 1000
    allow_unsafe: bool = False
    html: bool = True
    allow_low_accuracy: bool = False  # scan below the clean-accuracy floor (verdict inconclusive)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overrides"] = {k: v for k, v in self.overrides}
        return d


@dataclass(frozen=True)
class AuditItem:
    """One model to audit. ``version``: TF Serving version (``path`` is then the base path)."""

    model_id: str
    path: str
    data: Optional[str]
    version: Optional[int] = None
    preprocess: Optional[str] = None
    labels: Optional[str] = None

    def model_dir(self) -> Path:
        return Path(self.path) / str(self.version) if self.version is not None else Path(self.path)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditLog:
    """Where progress lines go (``say(text)``); ``scanned`` / ``reused`` count this run's models."""

    say: Callable[[str], None] = lambda text: None
    scanned: list = field(default_factory=list)
    reused: list = field(default_factory=list)


# ----------------------------------------------------------------------------- discovery


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def _unique(ids: list) -> list:
    seen, out = {}, []
    for i in ids:
        n = seen.get(i, 0) + 1
        seen[i] = n
        out.append(i if n == 1 else f"{i}-{n}")
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in MODEL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_saved_model(path: Path) -> bool:
    from .loading.files import is_saved_model_dir

    return path.is_dir() and is_saved_model_dir(path)


def discover(path, *, data: Optional[str] = None, versions: str = "all") -> list:
    """PATH -> ``[AuditItem]`` (see the module doc). ``TaborError`` if PATH holds no model at all."""
    from .loading import list_serving_versions

    path = Path(path).expanduser()
    if versions not in ("all", "latest"):
        raise TaborError(f"--versions must be 'all' or 'latest', got {versions!r}")
    if not path.exists():
        raise TaborError(f"audit path not found: {path}")
    if path.is_file() and path.suffix.lower() in (".json", ".csv"):
        return read_manifest(path, default_data=data)
    if path.is_file() or _is_saved_model(path):
        name = _stem(path)
        if name.lower() in ("model", "saved_model") and path.parent.name:  # zoo layout NAME/model.h5
            name = path.parent.name
        return [AuditItem(_safe_id(name), str(path), data)]
    found = list_serving_versions(path)
    if found:
        chosen = found[-1:] if versions == "latest" else found
        name = _safe_id(path.name)
        return [AuditItem(f"{name}-v{v}", str(path), data, version=v) for v in chosen]
    entries = []
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix.lower() in MODEL_SUFFIXES:
            entries.append(child)
        elif child.is_dir() and (_is_saved_model(child) or list_serving_versions(child)):
            entries.append(child)
        elif child.is_dir() and zoo_model_file(child) is not None:
            entries.append(child)
    if not entries:
        raise TaborError(f"{path}: no models found (expected .h5 / .hdf5 / .keras files, SavedModel folders, "
                         "a TF Serving base path NAME/<version>/, or a .json / .csv manifest)")
    items = []
    ids = _unique([_safe_id(_stem(p)) for p in entries])
    for mid, p in zip(ids, entries):
        sub = list_serving_versions(p) if p.is_dir() and not _is_saved_model(p) else []
        if sub:
            chosen = sub[-1:] if versions == "latest" else sub
            items.extend(AuditItem(f"{mid}-v{v}", str(p), data, version=v) for v in chosen)
        elif p.is_dir() and not _is_saved_model(p):
            items.append(AuditItem(mid, str(zoo_model_file(p)), data))
        else:
            items.append(AuditItem(mid, str(p), data))
    return items


def zoo_model_file(folder: Path) -> Optional[Path]:
    """The model of a zoo-style folder (``NAME/model.h5`` + ``card.json``): the card's ``model_file``,
    else the folder's only model file; ``None`` if there is none or several."""
    card = folder / "card.json"
    if card.is_file():
        try:
            name = json.loads(card.read_text(encoding="utf-8")).get("model_file")
        except (OSError, ValueError, AttributeError):
            name = None
        if name and (folder / name).exists():
            return folder / name
    files = [c for c in folder.iterdir() if c.is_file() and c.suffix.lower() in MODEL_SUFFIXES]
    return files[0] if len(files) == 1 else None


def _resolve(value: Optional[str], base: Path) -> Optional[str]:
    if value is None or not str(value).strip():
        return None
    value = str(value).strip()
    if value.lower() == "synthetic":
        return "synthetic"
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def read_manifest(path, *, default_data: Optional[str] = None) -> list:
    """A JSON list of objects or a CSV with a header: ``model`` (required), ``data``, ``preprocess``,
    ``labels``, ``id``, ``version``. Relative paths are relative to the manifest's folder."""
    path = Path(path)
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaborError(f"cannot read the manifest {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaborError(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(rows, dict) and isinstance(rows.get("models"), list):
            rows = rows["models"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TaborError(f"{path.name}: a JSON manifest is a list of objects with a 'model' key")
    else:
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()}
                for r in csv.DictReader(text.splitlines())]
    if not rows:
        raise TaborError(f"{path.name}: the manifest lists no models")
    items, ids = [], []
    for i, row in enumerate(rows, 1):
        model = row.get("model")
        if not model:
            raise TaborError(f"{path.name}: entry {i} has no 'model'")
        mpath = Path(_resolve(model, base))
        version = row.get("version")
        version = int(version) if version not in (None, "") else None
        mid = row.get("id") or (_stem(mpath) + (f"-v{version}" if version is not None else ""))
        ids.append(_safe_id(str(mid)))
        labels = row.get("labels")
        if isinstance(labels, list):
            labels = ",".join(str(int(k)) for k in labels)
        items.append(AuditItem("", str(mpath), _resolve(row.get("data"), base) or default_data, version=version,
                               preprocess=(row.get("preprocess") or None), labels=(str(labels) if labels else None)))
    return [AuditItem(mid, it.path, it.data, it.version, it.preprocess, it.labels)
            for mid, it in zip(_unique(ids), items)]


# ----------------------------------------------------------------------------- hashing


def _file_digest(path: Path) -> Optional[str]:
    from .loading import sha256_path

    try:
        return sha256_path(path)
    except OSError:
        return None


def settings_hash(settings: AuditSettings, item: AuditItem, data_sha256: Optional[str]) -> str:
    """sha256 of everything besides the model file that decides the report: settings, the item's
    data / preprocess / labels, the data's content hash, the tool version."""
    from . import __version__

    payload = {
        "settings": settings.to_dict(),
        "data": item.data,
        "data_sha256": data_sha256,
        "preprocess": item.preprocess or settings.preprocess,
        "labels": item.labels,
        "tool_version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- one model


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, TaborError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def _entry(item: AuditItem) -> dict:
    return {"id": item.model_id, "model": item.path, "version": item.version, "data": item.data,
            "status": None, "verdict": None, "flagged_labels": [], "anomaly_index": None, "seconds": None,
            "trojan_probability": None, "error": None}


def _reusable(report_path: Path, model_sha: str, s_hash: str) -> Optional[dict]:
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mark = report.get("audit") or {}
    if mark.get("model_sha256") == model_sha and mark.get("settings_hash") == s_hash:
        return report
    return None


def _no_progress(item, seed=None):
    return contextlib.nullcontext(None)


def audit_one(item: AuditItem, out_dir: Path, settings: AuditSettings, log: AuditLog,
              progress_for: Optional[Callable] = None) -> dict:
    """Scan (or reuse) one model -> its summary entry. Never raises for a bad model (only Ctrl-C).
    ``progress_for(item, seed)``: a progress callback / context manager for one scan (seed ``None``
    unless ``settings.seeds > 1``)."""
    progress_for = progress_for or _no_progress
    from .scanning import parse_labels, run_scan
    from .stability import run_scan_with_seeds

    entry = _entry(item)
    model_dir = out_dir / item.model_id
    started = time.perf_counter()
    try:
        if not item.model_dir().exists():
            raise TaborError(f"model not found: {item.model_dir()}")
        if item.data is None:
            raise TaborError("no clean data for this model (--data, or a 'data' column in the manifest)")
        model_sha = _file_digest(item.model_dir())
        data_path = Path(item.data)
        data_sha = _file_digest(data_path) if item.data != "synthetic" and data_path.exists() else None
        s_hash = settings_hash(settings, item, data_sha)
        entry.update(model_sha256=model_sha, settings_hash=s_hash)
        report_path = model_dir / ("stability.json" if settings.seeds > 1 else "report.json")
        cached = _reusable(report_path, model_sha, s_hash)
        if cached is not None:
            entry.update(_verdict_fields(cached, settings.seeds), status=STATUS_REUSED)
            log.reused.append(item.model_id)
            log.say(f"{item.model_id}: unchanged since the last audit (sha256 {model_sha[:12]}), report reused")
            return entry
        log.say(f"{item.model_id}: scanning {item.model_dir()}")
        mark = {"audit": {"model_sha256": model_sha, "settings_hash": s_hash, "model_id": item.model_id}}
        kwargs = dict(
            method=settings.method, preprocess=item.preprocess or settings.preprocess,
            labels=parse_labels(item.labels), preset=settings.preset, overrides=dict(settings.overrides),
            max_samples=settings.max_samples, allow_unsafe=settings.allow_unsafe, model_version=item.version,
            html=settings.html, extra=mark, allow_low_accuracy=settings.allow_low_accuracy,
        )
        if settings.seeds > 1:
            summary = run_scan_with_seeds(settings.seeds, settings.seed, model_dir, model_path=item.path,
                                          data_path=item.data, progress_for_seed=lambda s: progress_for(item, s),
                                          **kwargs)
            summary.update(mark)
            from .report import atomic_write_json

            atomic_write_json(report_path, summary)
            entry.update(_verdict_fields(summary, settings.seeds))
        else:
            with progress_for(item, None) as bar:
                _, report = run_scan(item.path, item.data, seed=settings.seed, out_dir=model_dir, progress=bar,
                                     **kwargs)
            entry.update(_verdict_fields(report, 1))
        entry["status"] = STATUS_SCANNED
        log.scanned.append(item.model_id)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad model must not stop the audit
        entry.update(status=STATUS_ERROR, error=_error_text(exc))
        if not isinstance(exc, TaborError):
            entry["traceback"] = traceback.format_exc(limit=8)
        log.say(f"{item.model_id}: could not be scanned: {entry['error']}")
    if entry["status"] != STATUS_REUSED:
        entry["seconds"] = round(time.perf_counter() - started, 3)
    return entry


def _verdict_fields(report: dict, seeds: int) -> dict:
    """The audit entry's fields from a scan's report.json (or, with seeds, its stability.json); the
    trojan probability is the one each report already carries (the highest over the seeds)."""
    from .calibration import probability_validated

    if seeds > 1:
        per = report["per_seed"]
        anomalies = [r.get("anomaly_index") for r in per if r.get("anomaly_index") is not None]
        probabilities = [r["trojan_probability"] for r in per if r.get("trojan_probability") is not None]
        if "verdict" in report:  # the seeds' verdict (stability.seeds_verdict): pooled, or the majority
            verdict, flagged = report["verdict"], list(report["flagged_labels"])
            pooled = report["pooled"] if report.get("decided_by") == "pooled" else None
            anomaly = pooled["anomaly_index"] if pooled else (max(anomalies) if anomalies else None)
        else:  # a summary written before session 16: the majority verdict and the consensus
            verdict, anomaly = report["majority_verdict"], max(anomalies) if anomalies else None
            flagged = list(report.get("consensus_flagged") or ())
            if verdict != "infected" or not flagged:
                flagged = list(report["majority_flagged"])  # no label flagged by most seeds: the commonest set
        return {"verdict": verdict, "flagged_labels": flagged, "anomaly_index": anomaly,
                "trojan_probability": max(probabilities) if probabilities else None,
                "probability_validated": all(r.get("probability_validated", False) for r in per),
                "seconds": sum(r.get("seconds") or 0.0 for r in per),
                "stability": {k: report.get(k) for k in ("seeds", "verdict_agreement", "flagged_agreement",
                                                         "unanimous", "decided_by")},
                "per_seed": per}
    return {"verdict": report["verdict"], "flagged_labels": [int(k) for k in report.get("flagged_labels") or ()],
            "anomaly_index": report.get("anomaly_index"), "seconds": report.get("seconds"),
            "trojan_probability": (report.get("trojan_probability") or {}).get("probability"),
            "probability_validated": probability_validated(report),
            "report": "report.json"}


# ----------------------------------------------------------------------------- the audit


def exit_status(summary: dict) -> int:
    """2 if any model could not be scanned (an unscannable model fails the pipeline, even when
    another one is infected), else 1 if any model is infected, else 3 if any verdict is
    inconclusive (a partial or forced low-accuracy scan), else 0."""
    entries = summary["models"]
    if any(e["status"] == STATUS_ERROR for e in entries):
        return 2
    if any(e["verdict"] == "infected" for e in entries):
        return 1
    if any(e["verdict"] == "inconclusive" for e in entries):
        return 3
    return 0


def build_summary(entries: list, settings: AuditSettings, source: str, seconds: float) -> dict:
    from . import __version__

    infected = [e["id"] for e in entries if e["verdict"] == "infected"]
    errors = [e["id"] for e in entries if e["status"] == STATUS_ERROR]
    summary = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "tool_version": __version__,
        "source": source,
        "settings": settings.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 3),
        "counts": {"models": len(entries), "clean": sum(e["verdict"] == "clean" for e in entries),
                   "infected": len(infected), "errors": len(errors),
                   "inconclusive": sum(e["verdict"] == "inconclusive" for e in entries),
                   "reused": sum(e["status"] == STATUS_REUSED for e in entries)},
        "infected": infected,
        "errors": errors,
        "calibration": _calibration_info(settings.method),
        "models": entries,
    }
    pending = [e["id"] for e in entries if e["status"] == "pending"]
    summary["complete"] = not pending
    summary["exit_status"] = exit_status(summary) if not pending else None  # None: audit still running
    return summary


def _calibration_info(method: str) -> Optional[dict]:
    from .calibration import DEFAULT_PATH, load_default
    from .report import method_key

    try:
        cal = load_default(method_key(method))
    except (OSError, KeyError, ValueError, TypeError):
        return None
    reasons = cal.provisional_reasons()
    return {"file": str(DEFAULT_PATH.name), "a": cal.a, "b": cal.b, "provisional": bool(reasons),
            "provisional_reasons": reasons, "domain": cal.domain,
            "heldout_cross_entropy": cal.heldout_cross_entropy, "heldout_auc": cal.heldout_auc}


def markdown(summary: dict) -> str:
    """audit.md: one table row per model (verdict, flagged labels, anomaly index, time, error)."""
    s = summary["settings"]
    c = summary["counts"]
    lines = [
        "# tabor-tf audit",
        "",
        f"Source: `{summary['source']}`  ",
        f"Method: {s['method']}, seed {s['seed']}" + (f" x {s['seeds']} seeds" if s["seeds"] > 1 else "")
        + f", preset {s['preset'] or 'default'}  ",
        f"Models: {c['models']} ({c['clean']} clean, {c['infected']} infected, {c['errors']} not scanned, "
        f"{c['reused']} reused from an earlier audit)  ",
        f"Exit status: {summary['exit_status']}" if summary.get("complete", True)
        else "Exit status: (audit still running or interrupted; pending models are listed below)",
        "",
        "| model | verdict | flagged labels | anomaly index | trojan probability | time (s) | status | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in summary["models"]:
        verdict = (e["verdict"] or "-").upper() if e["verdict"] == "infected" else (e["verdict"] or "-")
        if "stability" in e:
            verdict += f" ({100 * e['stability']['verdict_agreement']:.0f}% of seeds)"
        flagged = ", ".join(str(k) for k in e["flagged_labels"]) or "-"
        ai = "-" if e["anomaly_index"] is None else f"{e['anomaly_index']:.2f}"
        secs = "-" if e["seconds"] is None else f"{e['seconds']:.1f}"
        err = (e["error"] or "").replace("|", "\\|")
        prob = "-" if e.get("trojan_probability") is None else (
            f"{e['trojan_probability']:.2f}" + ("" if e.get("probability_validated") else " (provisional)"))
        lines.append(f"| {e['id']} | {verdict} | {flagged} | {ai} | {prob} | {secs} | {e['status']} | {err} |")
    if any(e.get("trojan_probability") is not None and not e.get("probability_validated") for e in summary["models"]):
        lines += ["", "(provisional): the calibration behind that probability was not validated on models like "
                  "this one (not fitted on a zoo, a useless held-out AUC, or other input sizes / class counts); "
                  "each report.json says why under trojan_probability.calibration.provisional_reasons."]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, summary: dict) -> None:
    from .report import atomic_write_bytes, atomic_write_json

    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    atomic_write_bytes(out_dir / SUMMARY_MD, markdown(summary).encode("utf-8"))


def run_audit(items: list, out_dir, settings: AuditSettings, *, source: str = "", log: Optional[AuditLog] = None,
              progress_for: Optional[Callable] = None) -> dict:
    """Audit ``items`` into ``out_dir`` -> the summary dict (also written as audit.json / audit.md
    after every model). ``progress_for(item, seed)``: a progress callback (context manager) for one
    scan; seed is ``None`` unless ``settings.seeds > 1``."""
    from .scanning import ensure_writable_dir

    out_dir = ensure_writable_dir(out_dir)
    log = log or AuditLog()
    started = time.perf_counter()
    entries = []
    for item in items:
        entries.append(audit_one(item, out_dir, settings, log, progress_for))
        done = entries + [dict(_entry(i), status="pending") for i in items[len(entries):]]
        write_summary(out_dir, build_summary(done, settings, source, time.perf_counter() - started))
    summary = build_summary(entries, settings, source, time.perf_counter() - started)
    write_summary(out_dir, summary)
    return summary
