"""Read Keras model files (``.keras`` zip, Keras 3 ``.h5``, Keras 2 ``.h5``/``.hdf5``) into a Keras 3 model.

The saved config is checked by ``model_safety`` before any deserialisation. Keras 2 files are read
with Keras 3's own legacy-HDF5 reader (never ``tf_keras.models.load_model``, which runs Lambda
bytecode); when that reader cannot rebuild an old config (Keras 2.2's list-style Sequential,
``batch_input_shape`` on the first layer, initializer settings Keras 3 no longer accepts), the
config is normalised here and the weights are read from the ``model_weights`` groups.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError, UnsafeModelError
from . import model_safety
from .files import (
    MAX_CONFIG_BYTES,
    check_declared_bytes,
    check_zip,
    first_line,
    h5_declared_bytes,
    read_h5_text_attr,
)

UNSAFE_HINT = (
    "tabor-tf never runs code stored in a model file; if you trust this file, pass"
    " --allow-unsafe-deserialization (allow_unsafe=True)"
)


@dataclass
class KerasFile:
    """A model rebuilt from a Keras file, with what we learnt about the file."""

    model: object  # keras.Model
    format: str  # "keras", "keras3-h5", "keras2-h5"
    detail: str  # e.g. "saved by Keras 2.2.4 (tensorflow backend)"
    config: object  # the saved model config (JSON-decoded)
    notes: list = field(default_factory=list)


def check_config(config, path: Path, allow_unsafe: bool) -> list[str]:
    """Refuse Lambda layers / custom objects unless allowed; refuse layers Keras 3 cannot rebuild."""
    notes = []
    unsafe = model_safety.find_unsafe_layers(config)
    if unsafe and not allow_unsafe:
        raise UnsafeModelError(f"{path.name}: {model_safety.describe_unsafe(unsafe)}. {UNSAFE_HINT}")
    unsupported = model_safety.find_unsupported_layers(config)
    if unsupported:
        raise ModelLoadError(
            f"{path.name}: {model_safety.describe_unsafe(unsupported)}, which Keras 3 cannot rebuild;"
            " save the model as a SavedModel with tf.keras (model.save('dir')) and scan that directory"
        )
    if unsafe:
        notes.append(f"unsafe deserialisation allowed for: {model_safety.describe_unsafe(unsafe)}")
    return notes


def load_keras_zip(path: Path, allow_unsafe: bool) -> KerasFile:
    import h5py

    archive = check_zip(path)
    with archive:
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ModelLoadError(f"{path} is a zip file without config.json: not a Keras 3 .keras model")
        info = archive.getinfo("config.json")
        if info.file_size > MAX_CONFIG_BYTES:
            raise ModelLoadError(f"{path}: config.json declares {info.file_size} bytes; refusing to read it")
        try:
            config = model_safety.parse_json_config(archive.read("config.json"))
            meta = model_safety.parse_json_config(archive.read("metadata.json")) if (
                "metadata.json" in names) else {}
        except (ValueError, OSError, KeyError) as exc:
            raise ModelLoadError(f"{path}: unreadable config.json ({first_line(exc)})") from None
        if "model.weights.h5" in names:
            winfo = archive.getinfo("model.weights.h5")
            try:
                with archive.open(winfo) as fh, h5py.File(fh, "r") as weights:
                    check_declared_bytes(h5_declared_bytes(weights), winfo.file_size, f"{path} (model.weights.h5)")
            except ModelLoadError:
                raise
            except Exception as exc:  # noqa: BLE001 - any reader failure is a corrupt file
                raise ModelLoadError(f"{path}: unreadable model.weights.h5 ({first_line(exc)})") from None
    notes = check_config(config, path, allow_unsafe)
    from keras.src.saving import saving_lib

    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = saving_lib.load_model(fh, compile=False, safe_mode=not allow_unsafe)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for broken files
        raise ModelLoadError(f"cannot rebuild the model in {path.name}: {first_line(exc)}") from None
    version = meta.get("keras_version", "3") if isinstance(meta, dict) else "3"
    return KerasFile(model, "keras", f"Keras 3 .keras archive (saved by Keras {version})", config, notes)


def load_keras_h5(path: Path, allow_unsafe: bool) -> KerasFile:
    import h5py

    size = os.path.getsize(path)
    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError for truncated/corrupt files
        raise ModelLoadError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {first_line(exc)}") from None
    with h5:
        try:
            text = read_h5_text_attr(h5, "model_config", size, str(path))
            version = read_h5_text_attr(h5, "keras_version", size, str(path)) or "unknown"
            backend = read_h5_text_attr(h5, "backend", size, str(path)) or "unknown"
            if text is None:
                if "layer_names" in h5.attrs or "model_weights" not in h5:
                    raise ModelLoadError(
                        f"{path} holds only weights (no model_config): save the whole model"
                        " (model.save), not model.save_weights"
                    )
                raise ModelLoadError(f"{path} has no model_config attribute: not a Keras model file")
            check_declared_bytes(h5_declared_bytes(h5), size, str(path))
            try:
                config = model_safety.parse_json_config(text)
            except ValueError as exc:
                raise ModelLoadError(f"{path}: model_config is not valid JSON ({first_line(exc)})") from None
            notes = check_config(config, path, allow_unsafe)
            model, how = _rebuild_h5(h5, config, allow_unsafe, path)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt groups/attributes
            raise ModelLoadError(f"{path}: unreadable HDF5 model ({first_line(exc)})") from None
    fmt = "keras3-h5" if version.startswith("3") else "keras2-h5"
    detail = f"HDF5 saved by Keras {version} ({backend} backend)"
    if how:
        notes.append(how)
    if backend not in ("tensorflow", "unknown"):
        notes.append(f"saved with the {backend} backend: convolution kernels may need conversion")
    return KerasFile(model, fmt, detail, config, notes)


def _rebuild_h5(h5, config, allow_unsafe: bool, path: Path):
    """Keras 3's legacy reader first; a normalised config when it cannot rebuild the file."""
    from keras.src.legacy.saving import legacy_h5_format

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if isinstance(config, dict) and isinstance(config.get("config"), dict):
                return legacy_h5_format.load_model_from_hdf5(h5, compile=False, safe_mode=not allow_unsafe), ""
            first_error = None
        except Exception as exc:  # noqa: BLE001
            first_error = exc
        try:
            model = _rebuild_normalised(h5, normalise_legacy_config(config), allow_unsafe)
            return model, "rebuilt from a normalised Keras 2 config"
        except Exception as exc:  # noqa: BLE001
            reason = first_line(first_error or exc)
            raise ModelLoadError(f"cannot rebuild the model in {path.name}: {reason}") from None


def _rebuild_normalised(h5, config: dict, allow_unsafe: bool):
    from keras.src.legacy.saving import legacy_h5_format, saving_options, saving_utils
    from keras.src.saving import serialization_lib

    with saving_options.keras_option_scope(use_legacy_config=True), serialization_lib.SafeModeScope(
        not allow_unsafe
    ):
        model = saving_utils.model_from_config(config)
    legacy_h5_format.load_weights_from_hdf5_group(h5["model_weights"], model)
    return model


_DROPPED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def normalise_legacy_config(config) -> dict:
    """A Keras 2.x model config -> one Keras 3's legacy deserialiser accepts (weights untouched).

    - Keras 2.2 Sequential configs that are a plain list of layers become ``{"name", "layers"}``;
    - a Sequential whose first layer carries ``batch_input_shape`` gets an explicit InputLayer;
    - ``InputLayer.batch_input_shape`` becomes ``batch_shape``;
    - initializers, regularizers and constraints are dropped (irrelevant once weights are loaded,
      and old spellings such as ``VarianceScaling(distribution="normal")`` no longer parse).
    """
    config = copy.deepcopy(config)
    if isinstance(config, list):
        config = {"class_name": "Sequential", "config": config}
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError("model_config is not a Keras model config")
    _normalise_model(config)
    return config


def _normalise_model(entry: dict) -> None:
    inner = entry.get("config")
    if entry.get("class_name") == "Sequential":
        if isinstance(inner, list):
            inner = entry["config"] = {"name": "sequential", "layers": inner}
        layers = inner.get("layers", [])
        first = layers[0] if layers else None
        if first is not None and first.get("class_name") != "InputLayer":
            shape = first.get("config", {}).pop("batch_input_shape", None)
            if shape is not None:
                dtype = first["config"].get("dtype")
                layers.insert(0, {
                    "class_name": "InputLayer",
                    "config": {
                        "batch_shape": shape,
                        "dtype": dtype if isinstance(dtype, str) else "float32",
                        "name": f"{first['config'].get('name', 'layer')}_input",
                    },
                })
    if not isinstance(inner, dict):
        return
    for layer in inner.get("layers", []):
        cfg = layer.get("config")
        if not isinstance(cfg, dict):
            continue
        if layer.get("class_name") == "InputLayer":
            if "batch_input_shape" in cfg:
                cfg["batch_shape"] = cfg.pop("batch_input_shape")
        elif layer.get("class_name") not in model_safety.MODEL_CLASSES:
            cfg.pop("batch_input_shape", None)
        for key in [k for k in cfg if k.endswith(_DROPPED_SUFFIXES)]:
            del cfg[key]
        if layer.get("class_name") in model_safety.MODEL_CLASSES:
            _normalise_model(layer)
