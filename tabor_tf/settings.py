"""Apply user overrides to a frozen settings dataclass (the presets of both detectors)."""

from __future__ import annotations

from dataclasses import fields, replace

from .errors import TaborError


def with_overrides(config, overrides: dict, what: str):
    """``config`` with ``overrides`` applied; a ``TaborError`` names any unknown field.

    ``what`` names the settings in the message, e.g. ``"Neural Cleanse"``.
    """
    known = {f.name for f in fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TaborError(f"unknown {what} setting(s): {', '.join(unknown)}")
    return replace(config, **overrides)
