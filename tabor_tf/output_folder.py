"""Report folders: where a scan writes, and the rule that it never overwrites another scan's work.

A report folder holds ``report.json``, ``report.html``, ``labels/``, and while a scan runs
``.checkpoint/`` with ``scan.json``: the identity of the scan that owns the folder (model hash,
method, seed, labels, data, preprocessing, preset and overrides). ``claim`` decides, before any
model is loaded, whether a scan may use a folder:

* missing, empty, or holding none of the files a scan writes: yes;
* an interrupted scan (checkpoint, no ``report.json``, or a report cut short by ``--time-budget``)
  with the same identity: yes, it resumes;
* anything else (a finished report, another scan's checkpoint, stale label files): refused with
  exit 2 and the reason, unless ``overwrite``; then the old scan files (and only those) are removed
  first, so no stale per-label file survives beside the new ones.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from .errors import TaborError

CHECKPOINT_DIR = ".checkpoint"
IDENTITY_NAME = "scan.json"
# what a scan (or scan --seeds) writes into its folder; nothing else there is ever removed
SCAN_FILES = ("report.json", "report.html", "labels", "stability.json", CHECKPOINT_DIR)
SEED_PREFIX = "seed-"


def ensure_writable_dir(path) -> Path:
    """Create ``path`` (and parents) and check a file can be written there, before a long scan."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TaborError(f"cannot write to the output folder {path}: {exc.strerror or exc}") from None
    return path


def scan_files(folder) -> list:
    """The scan files present in ``folder`` (names from ``SCAN_FILES`` and ``seed-*`` sub-folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [name for name in SCAN_FILES if (folder / name).exists()
             and (name != CHECKPOINT_DIR or holds_work(folder / name))]
    found += sorted(p.name for p in folder.glob(f"{SEED_PREFIX}*") if (p / "report.json").exists()
                    or (p / CHECKPOINT_DIR).is_dir())
    return found


def holds_work(checkpoint_dir) -> bool:
    """A checkpoint folder holds work when it has any file besides the identity (``scan.json``)."""
    return any(p.is_file() and p.name != IDENTITY_NAME for p in Path(checkpoint_dir).rglob("*"))


def read_identity(folder) -> Optional[dict]:
    """The identity stored by the scan that owns ``folder`` (None: none, or unreadable)."""
    try:
        return json.loads((Path(folder) / CHECKPOINT_DIR / IDENTITY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_identity(folder, identity: dict) -> None:
    from .report import atomic_write_json

    atomic_write_json(Path(folder) / CHECKPOINT_DIR / IDENTITY_NAME, identity)


def is_resumable(folder, identity: Optional[dict]) -> bool:
    """``folder`` holds an interrupted scan (checkpoint, no report.json) of exactly ``identity``."""
    folder = Path(folder)
    if not (folder / CHECKPOINT_DIR).is_dir() or identity is None:
        return False
    if (folder / "report.json").exists() and not _time_limited_report(folder):
        return False
    return read_identity(folder) == _normalised(identity)


def _read_report(folder: Path) -> dict:
    """The report.json in ``folder`` as a dictionary (``{}`` when unreadable)."""
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _time_limited_report(folder: Path) -> bool:
    """The report in ``folder`` was cut short by ``--time-budget`` (its search can go on)."""
    return bool(_read_report(folder).get("time_limited"))


def _normalised(identity: dict) -> dict:
    """``identity`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(identity, default=str))


def _describe_report(folder: Path) -> str:
    report = _read_report(folder)
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    if not report:
        return "a finished report"
    return (f"a finished {report.get('method', '?')} report of {Path(str(model.get('path', '?'))).name}"
            f" (verdict {report.get('verdict', '?')})")


def clear_scan_files(folder) -> list:
    """Remove the scan files of ``folder`` (``scan_files``); other files are left alone."""
    folder = Path(folder)
    removed = scan_files(folder)
    for name in removed:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def claim(folder, identity: dict, *, overwrite: bool = False) -> str:
    """Make ``folder`` ready for the scan ``identity``: ``"new"``, ``"resume"`` or ``"overwrite"``.

    ``TaborError`` (exit 2) when the folder holds another scan's files and ``overwrite`` is not set.
    Writes the identity into the folder's checkpoint area so a rerun of the same command resumes.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TaborError(f"--out {folder}: exists and is not a folder")
    present = scan_files(folder)
    if not present:
        state = "new"
    elif is_resumable(folder, identity):
        return "resume"
    elif overwrite:
        clear_scan_files(folder)
        state = "overwrite"
    else:
        if (folder / "report.json").exists():
            what = _describe_report(folder)
        elif (folder / CHECKPOINT_DIR).is_dir():
            what = "an interrupted scan with other settings (model, method, seed, labels, data or preset differ)"
        else:
            what = "files of an earlier scan (" + ", ".join(present) + ")"
        raise TaborError(f"--out {folder} already holds {what}; choose another folder or pass --overwrite"
                         " to replace it (only the scan's own files are removed)")
    ensure_writable_dir(folder)
    write_identity(folder, identity)
    return state


def first_missing_ancestor(folder) -> Optional[Path]:
    """The outermost folder of ``folder``'s path (itself included) that does not exist yet, or None."""
    folder = Path(folder)
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def release_unused(folder, created: Optional[Path]) -> None:
    """Undo a ``claim`` of ``folder`` whose scan stopped before it did any work (a model or data
    that could not be loaded): its identity file goes, then the checkpoint folder if it is empty,
    then ``folder`` and its parents up to ``created`` (from ``first_missing_ancestor`` before the
    claim) where they are empty. A folder that held anything is left as it was."""
    folder = Path(folder)
    checkpoint = folder / CHECKPOINT_DIR
    if checkpoint.is_dir() and holds_work(checkpoint):
        return
    (checkpoint / IDENTITY_NAME).unlink(missing_ok=True)
    last = checkpoint if created is None else Path(created)  # what the claim created, outermost
    for candidate in (checkpoint, folder, *folder.parents):
        if not _remove_if_empty(candidate) or candidate == last:
            break


def _remove_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def unique_out_dir(base, *, resume_interrupted: bool = True, identity: Optional[dict] = None) -> Path:
    """``base``, or ``base-2``, ``base-3``... : the first that does not exist. With
    ``resume_interrupted``, a folder holding an interrupted scan (a checkpoint, no report.json)
    is reused so running the same command again resumes it; with ``identity``, only an
    interrupted scan of that same identity is reused."""
    base = Path(base)
    n = 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if not candidate.exists():
            return candidate
        if resume_interrupted:
            if identity is not None and is_resumable(candidate, identity):
                return candidate
            if identity is None and (candidate / CHECKPOINT_DIR).is_dir() and not (candidate / "report.json").exists():
                return candidate
        n += 1


def default_out_dir(model_path, method: str, parent=".", identity: Optional[dict] = None) -> Path:
    """``scan-<model stem>-<method>`` in ``parent`` (never an existing finished report folder)."""
    from .report import method_key

    stem = Path(str(model_path).rstrip("/")).name
    for suffix in (".keras", ".h5", ".hdf5"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    short = "nc" if method_key(method) == "neural_cleanse" else "tabor"
    return unique_out_dir(Path(parent) / f"scan-{stem or 'model'}-{short}", identity=identity)
