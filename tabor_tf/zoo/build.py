"""Build victims: data -> poison -> train -> measure -> ``NAME/model.h5`` + ground-truth card.

Layout of one built victim (``OUT/NAME/``): ``model.h5`` (Keras 3 HDF5, no optimizer state),
``card.json``, and per backdoor ``backdoorI_{mask,pattern}.{npy,png}``.

A recipe may train models on several datasets (an entry's ``data`` name, bound to a source by
the recipe's ``datasets`` or by ``--data NAME=SOURCE``), each optionally resized on load.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Union

import numpy as np

from .. import __version__
from ..errors import DataError, TaborError
from .architectures import build_model
from .card import CARD_NAME, save_trigger_files, write_card
from .poisoning import poison
from .recipe import Recipe, SyntheticSettings, VictimSpec
from .training import TrainSettings, evaluate, train

MODEL_FILE = "model.h5"
Log = Optional[Callable[[str], None]]


@dataclass
class ZooData:
    """Training and held-out images in the raw domain (uint8 ``[N,H,W,C]``) with int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    description: dict  # goes into the card as "dataset" and into the recipe hash

    @property
    def input_shape(self):
        return tuple(int(v) for v in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.description["num_classes"])


def synthetic_data(settings: SyntheticSettings) -> ZooData:
    """The embedded dataset: train with ``seed``, held-out test with a different seed."""
    from ..synthetic import make_signs

    test_seed = settings.seed + 1_000_003
    xtr, ytr = make_signs(settings.train, seed=settings.seed, size=settings.size, num_classes=settings.num_classes)
    xte, yte = make_signs(settings.test, seed=test_seed, size=settings.size, num_classes=settings.num_classes)
    desc = {"name": "synthetic-signs", "generator": "tabor_tf.synthetic.make_signs", **settings.to_dict(),
            "test_seed": test_seed}
    return ZooData(xtr, ytr, xte, yte, desc)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def npz_data(path: str) -> ZooData:
    """An npz with ``x_train``/``y_train``/``x_test``/``y_test`` (raw 0..255 images, int labels)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)} (zoo data needs x_train, y_train, x_test, y_test)")
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read zoo data {path}: {exc}") from None
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    if x_train.ndim != 4 or x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{path}: x_train {x_train.shape} and x_test {x_test.shape} must be [N,H,W,C] images of one size"
        )
    if x_train.dtype != np.uint8:
        if float(np.max(x_train)) <= 1.0:
            raise DataError(f"{path}: images look scaled to 0..1; zoo data must be raw pixels 0..255")
        x_train, x_test = (np.clip(np.rint(a), 0, 255).astype(np.uint8) for a in (x_train, x_test))
    y_train = _labels(arrays["y_train"], path)
    y_test = _labels(arrays["y_test"], path)
    num_classes = int(max(y_train.max(), y_test.max()) + 1)
    desc = {"name": os.path.splitext(os.path.basename(path))[0], "path": os.path.abspath(path),
            "sha256": _sha256(path), "train": int(len(x_train)), "test": int(len(x_test)),
            "num_classes": num_classes, "size": int(x_train.shape[1])}
    return ZooData(x_train, y_train, x_test, y_test, desc)


def _labels(y: np.ndarray, path: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot
        y = np.argmax(y, axis=1)
    if y.ndim != 1 or (y.size and y.min() < 0):
        raise DataError(f"{path}: labels must be integers >= 0 (or one-hot rows)")
    return y.astype(np.int64)


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images ``[N,H,W,C]`` to ``[N,size,size,C]`` (``tabor_tf.data.resize_image``:
    bilinear up, area down), the same rule clean image files get at scan time."""
    from ..data import resize_image

    n, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    out = np.empty((n, size, size, c), np.uint8)
    for i in range(n):
        out[i] = resize_image(x[i], (size, size))
    return out


def load_zoo_data(source: str, synthetic: SyntheticSettings = SyntheticSettings(),
                  resize: Optional[int] = None) -> ZooData:
    """``source``: ``synthetic`` (sizes from the recipe) or a path to an npz; ``resize``: side in
    pixels to resize every image to (the description then records ``resize`` and ``source_size``)."""
    if source == "synthetic":
        data = synthetic_data(synthetic)
    elif not os.path.exists(source):
        raise DataError(
            f"zoo data {source!r} not found (give 'synthetic' or an npz with x_train/y_train/x_test/y_test)"
        )
    else:
        data = npz_data(source)
    if resize:
        size = int(resize)
        desc = {**data.description, "size": size, "resize": size, "source_size": int(data.x_train.shape[1])}
        data = ZooData(resize_images(data.x_train, size), data.y_train, resize_images(data.x_test, size),
                       data.y_test, desc)
    return data


Sources = Union[str, Mapping[str, str], None]


def data_source(name: str, sources: Sources, recipe: Optional[Recipe] = None) -> str:
    """The source bound to data ``name``: ``sources`` (a single source for ``default``, or a
    mapping) first, then the recipe's ``datasets``; ``default`` falls back to ``synthetic``."""
    given = {"default": sources} if isinstance(sources, str) else dict(sources or {})
    if name in given:
        return given[name]
    if recipe is not None and name in recipe.datasets:
        return recipe.datasets[name]
    if name == "default":
        return "synthetic"
    raise DataError(f"no data source for {name!r}: give --data {name}=PATH (or add it to the recipe's 'datasets')")


def _save_h5(model, path: str) -> None:
    """Save as Keras 3 HDF5 without optimizer state, silencing the 'legacy format' notice."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        model.save(path, include_optimizer=False)
    finally:
        absl.setLevel(level)


def card_is_current(folder: str, spec_hash: str) -> bool:
    path = os.path.join(folder, CARD_NAME)
    try:
        with open(path) as fh:
            card = json.load(fh)
    except (OSError, ValueError):
        return False
    return card.get("recipe_hash") == spec_hash and os.path.exists(os.path.join(folder, card.get("model_file", "")))


def build_victim(spec: VictimSpec, data: ZooData, out_root: str, *, log: Log = None) -> str:
    """Train ``spec`` on ``data`` and write ``out_root/NAME/``; returns the card path."""
    say = log or (lambda _msg: None)
    for bd in spec.backdoors:
        if not bd.all_to_all and not 0 <= bd.target < data.num_classes:
            raise TaborError(f"model {spec.name}: target {bd.target} outside 0..{data.num_classes - 1}")
        bd.trigger.offset(data.input_shape)  # fails early when it does not fit
    folder = os.path.join(out_root, spec.name)
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)

    k = data.num_classes
    x_train, y_train, poisoned = poison(data.x_train, data.y_train, spec.backdoors, spec.poison_rate, seed=spec.seed,
                                        num_classes=k)
    model = build_model(
        spec.arch,
        data.input_shape,
        k,
        width=spec.width,
        output=spec.output,
        embed_preprocessing=spec.preprocess if spec.embed_preprocessing else None,
        name=spec.name.replace("-", "_").replace(".", "_"),
        batchnorm=spec.batchnorm,
        dropout=spec.dropout,
    )
    feed = "raw" if spec.embed_preprocessing else spec.preprocess
    settings = TrainSettings(spec.epochs, spec.batch_size, spec.learning_rate, spec.seed,
                             label_smoothing=float(spec.label_smoothing), augment_shift=int(spec.augment_shift),
                             lr_schedule=spec.lr_schedule)
    seconds = train(model, x_train, y_train, settings, preprocess=feed, from_logits=spec.output == "logits", log=log)
    trojan = None
    if spec.attack is not None:  # Trojan Attack (Liu et al. 2018) on the clean-trained model
        from .trojan_attack import build_trojan

        trojan = build_trojan(model, spec.attack, k, data.x_test, data.y_test, preprocess=feed,
                              x_train=data.x_train, y_train=data.y_train, log=log)
    metrics = evaluate(model, data.x_test, data.y_test, spec.backdoors, feed, num_classes=k)
    _save_h5(model, os.path.join(tmp, MODEL_FILE))

    backdoors = []
    for i, (bd, rows, asr, per_source) in enumerate(
        zip(spec.backdoors, poisoned, metrics["attack_success_rates"], metrics["per_source"])
    ):
        mask, pattern = bd.trigger.render(data.input_shape)
        files = save_trigger_files(tmp, i, mask, pattern)
        entry = _backdoor_entry(bd, data.input_shape, files)
        if not bd.all_to_all:
            backdoors.append({"target": int(bd.target), **entry, "poisoned_train_images": int(len(rows)),
                              "attack_success_rate": asr})
            continue
        # all-to-all: one entry per target t (source label t-1), sharing the trigger files
        for t in range(k):
            source = (t - 1) % k
            backdoors.append({
                "target": t, "source_label": source, "backdoor_index": i, **entry,
                "poisoned_train_images": int(np.sum(data.y_train[rows] == source)),
                "attack_success_rate": (per_source or {}).get(source),
                "all_to_all_attack_success_rate": asr,
            })
    if trojan is not None:
        backdoors.append(_trojan_entry(spec.attack, trojan, data.input_shape,
                                       save_trigger_files(tmp, 0, trojan.mask, trojan.pattern)))
        metrics["attack_success_rates"] = [trojan.report["attack_success_rate"]]
    blind = spec.blind_spots
    card = {
        "name": spec.name,
        "model_file": MODEL_FILE,
        "model_format": "keras3-h5",
        "architecture": spec.arch,
        "width": spec.width,
        "parameters": int(model.count_params()),
        "output": spec.output,
        "dataset": data.description,
        "preprocessing": feed,
        "training_preprocessing": spec.preprocess,
        "embedded_preprocessing": bool(spec.embed_preprocessing),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "seed": spec.seed,
        "infected": bool(spec.backdoors) or trojan is not None,
        **({"attack": "trojan"} if trojan is not None else {}),
        "targets": sorted({int(b["target"]) for b in backdoors}),
        "blind_spot": bool(blind),
        "blind_spot_reasons": blind,
        "split": spec.split,
        "stratum": spec.stratum,
        "clean_twin": spec.twin,
        "data_name": spec.data,
        "poison_rate": spec.poison_rate if spec.backdoors else 0.0,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "batchnorm": spec.batchnorm,
        "dropout": spec.dropout,
        "label_smoothing": float(spec.label_smoothing),
        "augment_shift": int(spec.augment_shift),
        "lr_schedule": spec.lr_schedule,
        "backdoors": backdoors,
        "clean_accuracy": metrics["clean_accuracy"],
        "attack_success_rate": min(metrics["attack_success_rates"]) if backdoors else None,
        "test_images": int(len(data.x_test)),
        "training_seconds": round(seconds, 2),
        "recipe_hash": spec.spec_hash(data.description),
        "spec": spec.to_dict(),
        "built_with": f"tabor-tf {__version__}",
        "keras_backend": _keras_backend(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_card(tmp, card)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    say(_summary(card))
    return os.path.join(folder, CARD_NAME)


def _keras_backend() -> str:
    """``tensorflow``/``jax``/... and the Keras version the victim was trained with."""
    import keras

    return f"{keras.backend.backend()} (keras {keras.__version__})"


def _backdoor_entry(bd, image_shape, files: dict) -> dict:
    """The card fields describing one backdoor's trigger (everything but target and measurements)."""
    trig = bd.trigger
    row, col, bh, _ = trig.box(image_shape)
    return {
        "mode": bd.mode,
        "trigger_shape": trig.shape,
        "position": "full-image" if trig.shape == "blend" else (
            trig.position if isinstance(trig.position, str) else "offset"),
        "offset": [row, col],
        "size": bh,
        "area_fraction": round(trig.area_fraction(image_shape), 6),
        "margin": trig.margin,
        "colour": list(trig.colour) if trig.shape in ("square", "checkerboard") else None,
        "colour2": list(trig.colour2) if trig.shape == "checkerboard" else None,
        "cell": trig.cell if trig.shape in ("checkerboard", "noise", "blend") else None,
        "alpha": trig.alpha if trig.shape == "blend" else None,
        "icon": (trig.icon or "tabor_tf/assets/logo.png") if trig.shape == "icon" else None,
        "pattern_seed": trig.seed if trig.shape in ("random", "noise", "blend") else None,
        "blind_spot": bd.blind_spot,
        "trigger": trig.to_dict(),
        **files,
    }


def _trojan_entry(settings, trojan, image_shape, files: dict) -> dict:
    """The card entry of a Trojan Attack backdoor: the fixed mask's footprint, the generated
    pattern's files and the attack's measurements (``trojan_attack.build_trojan``'s report)."""
    mask_spec = settings.mask
    row, col, size, _ = mask_spec.box(image_shape)
    report = dict(trojan.report)
    return {
        "target": int(settings.target),
        "mode": "all-to-one",
        "attack": "trojan",
        "trigger_shape": mask_spec.shape,
        "position": mask_spec.position if isinstance(mask_spec.position, str) else "offset",
        "offset": [row, col],
        "size": size,
        "area_fraction": round(float(np.mean(trojan.mask)), 6),
        "margin": mask_spec.margin,
        "colour": None,
        "icon": (mask_spec.icon or "tabor_tf/assets/logo.png") if mask_spec.shape == "icon" else None,
        "pattern": "generated (Trojan Attack: optimised to drive the selected neurons)",
        "blind_spot": None,
        "trigger": mask_spec.to_dict(),
        **files,
        "poisoned_train_images": int(round(settings.poison_fraction * report["stand_in_inputs"])),
        "attack_success_rate": report.pop("attack_success_rate"),
        "trojan": report,
    }


def _summary(card: dict) -> str:
    if any(b.get("mode") == "all-to-all" for b in card["backdoors"]):
        asr = f"all-to-all:{card['attack_success_rate']:.3f}"
    else:
        asr = ", ".join(f"{b['target']}:{b['attack_success_rate']:.3f}" for b in card["backdoors"]) or "-"
    targets = ",".join(str(t) for t in card["targets"]) or "clean"
    return (f"{card['name']}: targets {targets}  clean acc {card['clean_accuracy']:.4f}  ASR {asr}"
            f"  ({card['training_seconds']:.0f}s)")


def build_zoo(recipe: Recipe, source: Sources, out_root: str, *, only: Optional[List[str]] = None,
              force: bool = False, log: Log = None) -> List[dict]:
    """Build every (or the ``only``) model of ``recipe`` into ``out_root``, skipping current ones.

    ``source``: one data source (for models without a ``data`` name) or a mapping
    ``{data name: source}`` (see ``data_source``). Each dataset is loaded (and resized) once.
    Returns one ``{"name", "status": built|skipped, "card"}`` per model, in recipe order.
    """
    say = log or (lambda _msg: None)
    specs = recipe.select(only)
    bound = {spec.name: data_source(spec.data, source, recipe) for spec in specs}  # fail before training
    cache: Dict[tuple, ZooData] = {}
    os.makedirs(out_root, exist_ok=True)
    results = []
    for i, spec in enumerate(specs, 1):
        key = (bound[spec.name], spec.resize)
        if key not in cache:
            cache[key] = load_zoo_data(key[0], recipe.synthetic, resize=spec.resize)
        data = cache[key]
        folder = os.path.join(out_root, spec.name)
        if not force and card_is_current(folder, spec.spec_hash(data.description)):
            say(f"[{i}/{len(specs)}] {spec.name}: already built, skipped")
            results.append({"name": spec.name, "status": "skipped", "card": os.path.join(folder, CARD_NAME)})
            continue
        targets = ",".join([str(t) for t in spec.targets] + ["all-to-all"] * spec.all_to_all) or "clean"
        say(f"[{i}/{len(specs)}] {spec.name}: training {spec.arch} ({targets}, {spec.epochs} epochs)")
        start = time.perf_counter()
        card = build_victim(spec, data, out_root, log=say)
        say(f"[{i}/{len(specs)}] {spec.name}: done in {time.perf_counter() - start:.0f}s")
        results.append({"name": spec.name, "status": "built", "card": card})
    return results
