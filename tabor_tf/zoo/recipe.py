"""Zoo recipes: one JSON file describing many victim models (documented in ``models/README.md``).

    {
      "schema": "tabor-tf/zoo-recipe", "schema_version": 1,
      "synthetic": {"train": 20000, "test": 4000, "num_classes": 43, "size": 32, "seed": 0},
      "defaults": {"arch": "gtsrb6", "epochs": 10, "poison_rate": 0.1, "target": 33,
                   "trigger": {"size": 4, "margin": 1}},
      "models": [
        {"name": "square-br", "triggers": [{"shape": "square", "position": "bottom-right"}]},
        {"name": "two-targets", "targets": [3, 7], "triggers": [{...}, {...}]},
        {"name": "clean", "clean": true}
      ]
    }

An entry lists its backdoors either explicitly (``backdoors: [{target, trigger}]``, or
``{mode: "all-to-all", trigger}``) or as ``triggers`` with one ``target`` (every trigger -> that
target; ``"all-to-all"`` for y -> y+1 mod K) or ``targets`` (zipped with the triggers).
``clean: true`` (or no triggers) builds a clean model. ``defaults.trigger`` fields fill in every
trigger. Any ``VictimSpec`` field may appear in ``defaults`` or in an entry.

Several datasets: an entry's ``data`` names a data source (``default`` unless given); the
recipe's ``datasets`` object maps names to sources (``synthetic`` or an npz path, relative to the
working directory), and ``tabor-tf zoo build --data NAME=SOURCE`` overrides them. ``resize``
resizes that data's images to ``resize`` x ``resize`` on load. A top-level ``split`` (``dev`` /
``test``) is copied into every entry and its card.

Trojan Attack victims (Liu et al. 2018, ``trojan_attack.py``): an entry with ``"attack": {"kind":
"trojan", "target": T, "mask": {"shape": "square"|"icon", "size": S, "position": ...}, ...}``
(any ``TrojanSettings`` field; ``target`` may come from the entry's ``target``) is trained clean,
then trojaned; it takes no triggers. Entries without ``attack`` keep their hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Tuple

from ..errors import TaborError
from ..preprocess import resolve_mode
from .architectures import ARCHITECTURES
from .poisoning import Backdoor
from .triggers import TriggerSpec
from .trojan_attack import TrojanSettings

RECIPE_SCHEMA = "tabor-tf/zoo-recipe"
RECIPE_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SyntheticSettings:
    """Sizes of the embedded synthetic dataset (``tabor_tf.synthetic.make_signs``)."""

    train: int = 20000
    test: int = 4000
    num_classes: int = 43
    size: int = 32
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VictimSpec:
    """Everything that determines one victim model (a resolved recipe entry)."""

    name: str
    arch: str = "gtsrb6"
    backdoors: Tuple[Backdoor, ...] = ()
    poison_rate: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    preprocess: str = "unit"
    embed_preprocessing: bool = False
    width: float = 1.0
    output: str = "probabilities"
    # added later: left out of to_dict / the hash while at their defaults
    data: str = "default"
    resize: Optional[int] = None
    batchnorm: Optional[bool] = None
    dropout: Optional[float] = None
    label_smoothing: float = 0.0
    augment_shift: int = 0
    lr_schedule: str = "constant"
    attack: Optional[TrojanSettings] = None  # a Trojan Attack applied after clean training
    # bookkeeping only: never part of the hash
    split: Optional[str] = None
    twin: Optional[str] = None
    stratum: Optional[str] = None

    def __post_init__(self):
        if not _NAME.match(self.name or ""):
            raise TaborError(f"model name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if self.arch not in ARCHITECTURES:
            raise TaborError(f"model {self.name}: unknown arch {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        mode = resolve_mode(self.preprocess)
        if mode == "auto":
            raise TaborError(f"model {self.name}: training needs a fixed preprocess mode, not 'auto'")
        object.__setattr__(self, "preprocess", mode)
        if self.embed_preprocessing and mode not in ("unit", "symmetric"):
            raise TaborError(f"model {self.name}: embed_preprocessing works with preprocess unit or symmetric")
        if self.backdoors and not 0.0 < float(self.poison_rate) < 1.0:
            raise TaborError(f"model {self.name}: poison_rate must be in (0, 1), got {self.poison_rate}")
        if int(self.epochs) < 1:
            raise TaborError(f"model {self.name}: epochs must be >= 1")
        if not _NAME.match(str(self.data)):
            raise TaborError(f"model {self.name}: data name {self.data!r} must be letters, digits, '.', '_' or '-'")
        if self.resize is not None and not 8 <= int(self.resize) <= 1024:
            raise TaborError(f"model {self.name}: resize must be a side in pixels (8..1024), got {self.resize}")
        if self.dropout is not None and not 0.0 <= float(self.dropout) < 1.0:
            raise TaborError(f"model {self.name}: dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise TaborError(f"model {self.name}: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if int(self.augment_shift) < 0:
            raise TaborError(f"model {self.name}: augment_shift must be >= 0 pixels")
        if self.lr_schedule not in ("constant", "cosine"):
            raise TaborError(f"model {self.name}: lr_schedule must be 'constant' or 'cosine', not {self.lr_schedule!r}")
        if self.batchnorm is not None and not isinstance(self.batchnorm, bool):
            raise TaborError(f"model {self.name}: batchnorm must be true, false or null")
        if isinstance(self.attack, dict):
            object.__setattr__(self, "attack", TrojanSettings.from_dict(self.attack))
        if self.attack is not None and not isinstance(self.attack, TrojanSettings):
            raise TaborError(f"model {self.name}: attack must be a trojan attack object")
        if self.attack is not None and self.backdoors:
            raise TaborError(f"model {self.name}: a trojan attack victim is trained clean (no triggers/backdoors)")
        if self.arch in ("vgg16", "resnet50") and (self.batchnorm is not None or self.dropout is not None):
            raise TaborError(f"model {self.name}: {self.arch} does not take batchnorm / dropout")

    @property
    def targets(self) -> List[int]:
        """Sorted distinct targets of the all-to-one backdoors (all-to-all ones have none) and of
        the trojan attack."""
        extra = {self.attack.target} if self.attack is not None else set()
        return sorted({b.target for b in self.backdoors if not b.all_to_all} | extra)

    @property
    def all_to_all(self) -> bool:
        return any(b.all_to_all for b in self.backdoors)

    @property
    def blind_spots(self) -> List[str]:
        """Reasons the detectors are not expected to find some backdoor (empty: none)."""
        return [b.blind_spot for b in self.backdoors if b.blind_spot]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["backdoors"] = [b.to_dict() for b in self.backdoors]
        d["attack"] = self.attack.to_dict() if self.attack is not None else None
        for key, default in _LATER_DEFAULTS.items():
            if (d[key] is None) if default is None else (d[key] == default):
                del d[key]
        return d

    def spec_hash(self, data_key: dict) -> str:
        """sha256 of this spec and the data it is trained on: a card with the same hash is current.

        The data's location (``path``) is left out: the same file (same ``sha256``) elsewhere, on
        another machine, builds the same model."""
        spec = {k: v for k, v in self.to_dict().items() if k not in _BOOKKEEPING}
        data = {k: v for k, v in data_key.items() if k != "path"}
        blob = json.dumps({"spec": spec, "data": data}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


_LATER_DEFAULTS = {"data": "default", "resize": None, "batchnorm": None, "dropout": None, "label_smoothing": 0.0,
                   "augment_shift": 0, "lr_schedule": "constant", "attack": None, "split": None, "twin": None,
                   "stratum": None}
_BOOKKEEPING = ("split", "twin", "stratum")
_SPEC_FIELDS = {f.name for f in fields(VictimSpec)}
_ENTRY_ONLY = {"triggers", "target", "targets", "clean", "trigger", "note", "description"}


def _target(name: str, value) -> dict:
    """A recipe target value -> ``Backdoor`` keyword arguments (an int, or ``"all-to-all"``)."""
    if isinstance(value, str) and value.strip().lower() == "all-to-all":
        return {"mode": "all-to-all"}
    try:
        return {"target": int(value)}
    except (TypeError, ValueError):
        raise TaborError(f"model {name}: a target is a label (int) or \"all-to-all\", not {value!r}") from None


def _entry_backdoors(name: str, entry: dict, trigger_defaults: dict) -> Tuple[Backdoor, ...]:
    if entry.get("clean"):
        return ()
    if entry.get("backdoors"):
        out = []
        for bd in entry["backdoors"]:
            if not isinstance(bd, dict):
                raise TaborError(f"model {name}: each backdoor must be an object with target and trigger")
            bd = dict(bd)
            bd["trigger"] = {**trigger_defaults, **bd.get("trigger", {})}
            out.append(Backdoor.from_dict(bd))
        return tuple(out)
    triggers = entry.get("triggers") or []
    if isinstance(triggers, dict):
        triggers = [triggers]
    specs = [TriggerSpec.from_dict({**trigger_defaults, **t}) for t in triggers]
    if not specs:
        return ()
    if "targets" in entry and entry["targets"] is not None:
        targets = [_target(name, t) for t in entry["targets"]]
        if len(targets) != len(specs):
            raise TaborError(f"model {name}: {len(targets)} targets but {len(specs)} triggers")
    elif "target" in entry:
        targets = [_target(name, entry["target"])] * len(specs)
    else:
        raise TaborError(f"model {name}: triggers need a 'target' (or 'targets', one per trigger)")
    return tuple(Backdoor(t, **k) for t, k in zip(specs, targets))


def resolve_entry(entry: dict, defaults: Optional[dict] = None) -> VictimSpec:
    """Merge a recipe entry with the recipe's defaults into a ``VictimSpec``."""
    defaults = dict(defaults or {})
    trigger_defaults = dict(defaults.pop("trigger", {}) or {})
    merged = {**defaults, **entry}
    name = merged.get("name")
    if not name:
        raise TaborError(f"every recipe model needs a 'name' (entry {entry!r})")
    unknown = set(merged) - _SPEC_FIELDS - _ENTRY_ONLY
    if unknown:
        raise TaborError(f"model {name}: unknown recipe field(s) {', '.join(sorted(unknown))}")
    if merged.get("attack") is not None:
        if merged.get("triggers") or merged.get("backdoors"):
            raise TaborError(f"model {name}: an 'attack' entry is trained clean; give no triggers/backdoors")
        merged["attack"] = TrojanSettings.from_dict(merged["attack"], default_target=merged.get("target"))
        backdoors = ()
    else:
        backdoors = _entry_backdoors(name, merged, trigger_defaults)
    kwargs = {k: v for k, v in merged.items() if k in _SPEC_FIELDS and k != "backdoors"}
    return VictimSpec(backdoors=backdoors, **kwargs)


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: synthetic data sizes and the resolved models, in file order."""

    path: str
    synthetic: SyntheticSettings
    models: Tuple[VictimSpec, ...] = field(default_factory=tuple)
    datasets: Dict[str, str] = field(default_factory=dict)
    split: Optional[str] = None

    def select(self, names: Optional[List[str]]) -> List[VictimSpec]:
        if not names:
            return list(self.models)
        known = {m.name: m for m in self.models}
        missing = [n for n in names if n not in known]
        if missing:
            raise TaborError(f"no model named {', '.join(missing)} in {self.path} (it has {', '.join(known)})")
        return [known[n] for n in names]


def parse_recipe(data: dict, path: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise TaborError(f"{path}: a zoo recipe is a JSON object with a 'models' list")
    if data.get("schema", RECIPE_SCHEMA) != RECIPE_SCHEMA:
        raise TaborError(f"{path}: not a zoo recipe (schema {data.get('schema')!r})")
    synth = SyntheticSettings(**(data.get("synthetic") or {}))
    defaults = dict(data.get("defaults") or {})
    split = data.get("split")
    if split is not None:
        defaults.setdefault("split", str(split))
    datasets = data.get("datasets") or {}
    if not isinstance(datasets, dict) or not all(isinstance(v, str) for v in datasets.values()):
        raise TaborError(f"{path}: 'datasets' maps data names to sources ('synthetic' or an npz path)")
    models = tuple(resolve_entry(e, defaults) for e in data["models"])
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TaborError(f"{path}: model names must be unique ({', '.join(dup)} repeated)")
    return Recipe(path=path, synthetic=synth, models=models, datasets=dict(datasets),
                  split=None if split is None else str(split))


def load_recipe(path: str) -> Recipe:
    """Read and validate a recipe file."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as exc:
        raise TaborError(f"cannot read zoo recipe {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TaborError(f"zoo recipe {path} is not valid JSON: {exc}") from None
    try:
        return parse_recipe(data, path)
    except TypeError as exc:  # bad field types inside dataclass constructors
        raise TaborError(f"{path}: {exc}") from None
