"""Ground-truth cards: what was planted in a victim model, and how well it works.

A card is ``card.json`` next to the model file; each backdoor's trigger mask and pattern are
saved beside it as ``.npy`` (exact arrays) and ``.png`` (to look at). Paths inside the card are
relative to the card's folder. The schema is documented in ``models/README.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

import cv2
import numpy as np

from ..errors import TaborError

CARD_SCHEMA = "tabor-tf/victim-card"
CARD_VERSION = 1
CARD_NAME = "card.json"


def save_trigger_files(folder: str, index: int, mask: np.ndarray, pattern: np.ndarray) -> dict:
    """Write backdoor ``index``'s mask ``[H,W]`` 0..1 and pattern ``[H,W,C]`` 0..255 as npy + png.

    Returns the card fields naming the four files (relative to ``folder``).
    """
    stem = f"backdoor{index}"
    files = {
        "mask_file": f"{stem}_mask.npy",
        "pattern_file": f"{stem}_pattern.npy",
        "mask_png": f"{stem}_mask.png",
        "pattern_png": f"{stem}_pattern.png",
    }
    np.save(os.path.join(folder, files["mask_file"]), mask.astype(np.float32))
    np.save(os.path.join(folder, files["pattern_file"]), pattern.astype(np.float32))
    cv2.imwrite(os.path.join(folder, files["mask_png"]), np.rint(mask * 255).astype(np.uint8))
    rgb = np.clip(np.rint(pattern), 0, 255).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    bgra = np.concatenate([rgb[..., ::-1], np.rint(mask * 255).astype(np.uint8)[..., None]], axis=-1)
    cv2.imwrite(os.path.join(folder, files["pattern_png"]), bgra)
    return files


def write_card(folder: str, card: dict) -> str:
    """Write ``card`` (a dict following the schema) as ``folder/card.json`` atomically."""
    card = {"schema": CARD_SCHEMA, "schema_version": CARD_VERSION, **card}
    path = os.path.join(folder, CARD_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(card, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path


@dataclass
class VictimCard:
    """A loaded card: ``data`` is the JSON dict; masks ``[H,W]`` float32 and patterns
    ``[H,W,C]`` float32 (raw 0..255) are loaded per backdoor, in the card's order."""

    path: str
    data: dict
    masks: List[np.ndarray] = field(default_factory=list)
    patterns: List[np.ndarray] = field(default_factory=list)

    def __getitem__(self, key):
        return self.data[key]

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    @property
    def model_path(self) -> str:
        return os.path.join(self.folder, self.data["model_file"])

    @property
    def targets(self) -> List[int]:
        """Distinct target labels, sorted (empty for a clean model; every label for all-to-all)."""
        return sorted({int(b["target"]) for b in self.data["backdoors"]})

    @property
    def blind_spot(self) -> bool:
        """True when some backdoor is one the detectors are not expected to find (blend, all-to-all)."""
        return bool(self.data.get("blind_spot"))

    @property
    def preprocess(self) -> str:
        return self.data["preprocessing"]

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])


def load_card(path: str) -> VictimCard:
    """Read a card (``card.json`` or the folder holding it) and load its trigger arrays."""
    if os.path.isdir(path):
        path = os.path.join(path, CARD_NAME)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise TaborError(f"cannot read victim card {path}: {exc}") from None
    if data.get("schema") != CARD_SCHEMA:
        raise TaborError(f"{path} is not a tabor-tf victim card (schema {data.get('schema')!r})")
    if int(data.get("schema_version", 0)) > CARD_VERSION:
        raise TaborError(
            f"{path} has card schema version {data['schema_version']}; this tabor-tf reads <= {CARD_VERSION}"
        )
    card = VictimCard(path=path, data=data)
    for bd in data.get("backdoors", []):
        card.masks.append(np.load(os.path.join(card.folder, bd["mask_file"])).astype(np.float32))
        card.patterns.append(np.load(os.path.join(card.folder, bd["pattern_file"])).astype(np.float32))
    return card


def true_mask(card, target: Optional[int] = None) -> Optional[np.ndarray]:
    """Union ``[H,W]`` float32 of the card's trigger masks (only those of ``target`` if given).

    ``card``: a ``VictimCard`` or a path. Returns ``None`` when no backdoor matches (clean model).
    """
    if not isinstance(card, VictimCard):
        card = load_card(card)
    chosen = [
        m for m, bd in zip(card.masks, card.data["backdoors"]) if target is None or int(bd["target"]) == int(target)
    ]
    if not chosen:
        return None
    return np.max(np.stack(chosen), axis=0).astype(np.float32)
