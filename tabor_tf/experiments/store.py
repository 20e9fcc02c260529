"""Resumable records and result files shared by the experiments.

``RecordStore(folder)``: one JSON file per finished unit of work (``records/<key>.json``, written
atomically), so an interrupted experiment redone with the same command skips what is done. A record
holds the ``settings`` it was made with; ``get`` returns it only when they match (a changed command
redoes the unit instead of mixing results). ``write_outputs`` writes ``<name>.json`` and
``<name>.md`` atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from ..errors import TaborError
from ..report import atomic_write_bytes, atomic_write_json, dumps

RECORDS = "records"
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_key(key: str) -> str:
    """A file-name safe version of ``key`` (letters, digits, ``._=+-``; the rest becomes ``_``)."""
    text = _SAFE.sub("_", str(key)).strip("._")
    if not text:
        raise TaborError(f"experiment record key {key!r} has no usable characters")
    return text


class RecordStore:
    """Finished units of one experiment, one JSON file each under ``folder/records/``."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.records = self.folder / RECORDS
        self.records.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.records / f"{safe_key(key)}.json"

    def get(self, key: str, settings: Optional[dict] = None) -> Optional[dict]:
        """The record of ``key`` if it exists, is readable and was made with ``settings``; else None."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a torn or foreign file: the unit is redone
        if settings is not None and json.loads(dumps(settings)) != record.get("settings"):
            return None
        return record

    def put(self, key: str, record: dict, settings: Optional[dict] = None) -> dict:
        """Save ``record`` (with ``settings`` and ``key`` added) atomically; returns what was saved."""
        saved = dict(record, key=str(key))
        if settings is not None:
            saved["settings"] = settings
        saved = json.loads(dumps(saved))
        atomic_write_json(self.path(key), saved)
        return saved

    def all(self) -> list:
        """Every readable record, in file-name order."""
        out = []
        for path in sorted(self.records.glob("*.json")):
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return out


def write_outputs(folder, name: str, result: dict, markdown: str) -> tuple:
    """Write ``folder/<name>.json`` and ``folder/<name>.md`` atomically -> their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_json(folder / f"{name}.json", result)
    md_path = atomic_write_bytes(folder / f"{name}.md", (markdown.rstrip() + "\n").encode("utf-8"))
    return json_path, md_path


def markdown_table(header: list, rows: list) -> str:
    """A GitHub Markdown table from a header and rows of cells (cells are str()-ed)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
