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

An entry lists its backdoors either explicitly (``backdoors: [{target, trigger}]``) or as
``triggers`` with one ``target`` (every trigger -> that target) or ``targets`` (zipped with the
triggers). ``clean: true`` (or no triggers) builds a clean model. ``defaults.trigger`` fields
fill in every trigger. Any ``VictimSpec`` field may appear in ``defaults`` or in an entry.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Tuple

from ..errors import TaborError
from ..preprocess import resolve_mode
from .architectures import ARCHITECTURES
from .poisoning import Backdoor
from .triggers import TriggerSpec

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

    @property
    def targets(self) -> List[int]:
        return sorted({b.target for b in self.backdoors})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["backdoors"] = [b.to_dict() for b in self.backdoors]
        return d

    def spec_hash(self, data_key: dict) -> str:
        """sha256 of this spec and the data it is trained on: a card with the same hash is current."""
        blob = json.dumps({"spec": self.to_dict(), "data": data_key}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


_SPEC_FIELDS = {f.name for f in fields(VictimSpec)}
_ENTRY_ONLY = {"triggers", "target", "targets", "clean", "trigger", "note", "description"}


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
        targets = [int(t) for t in entry["targets"]]
        if len(targets) != len(specs):
            raise TaborError(f"model {name}: {len(targets)} targets but {len(specs)} triggers")
    elif "target" in entry:
        targets = [int(entry["target"])] * len(specs)
    else:
        raise TaborError(f"model {name}: triggers need a 'target' (or 'targets', one per trigger)")
    return tuple(Backdoor(t, k) for t, k in zip(specs, targets))


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
    backdoors = _entry_backdoors(name, merged, trigger_defaults)
    kwargs = {k: v for k, v in merged.items() if k in _SPEC_FIELDS and k != "backdoors"}
    return VictimSpec(backdoors=backdoors, **kwargs)


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: synthetic data sizes and the resolved models, in file order."""

    path: str
    synthetic: SyntheticSettings
    models: Tuple[VictimSpec, ...] = field(default_factory=tuple)

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
    defaults = data.get("defaults") or {}
    models = tuple(resolve_entry(e, defaults) for e in data["models"])
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TaborError(f"{path}: model names must be unique ({', '.join(dup)} repeated)")
    return Recipe(path=path, synthetic=synth, models=models)


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
