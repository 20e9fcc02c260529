"""Load the model under inspection into a frozen ``Victim``.

``load_victim(path)`` accepts a Keras 3 ``.keras`` archive, a Keras 3 or Keras 2 (2.2..2.15,
tf.keras or standalone) ``.h5``/``.hdf5`` file, a TensorFlow SavedModel directory, or a TF Serving
model base path ``NAME/<version>/saved_model.pb`` (highest version unless ``version`` is given).
The format is recognised from the file's content, not its name. Saved configs are checked before
deserialisation (``model_safety``): Lambda layers and custom objects are refused unless
``allow_unsafe=True``. Files are only ever opened for reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ModelLoadError, UnsafeModelError
from .files import list_serving_versions, sha256_path
from .victim import LayerInfo, Victim

__all__ = ["load_victim", "Victim", "LayerInfo", "list_serving_versions", "sha256_path",
           "ModelLoadError", "UnsafeModelError"]


def load_victim(path, *, allow_unsafe: bool = False, version: Optional[int] = None) -> Victim:
    """Model file or directory -> frozen ``Victim``; ``ModelLoadError`` (one line) for anything unusable."""
    from . import files

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    if path.is_dir():
        from .saved_model import saved_model_classifier

        directory, used_version = files.resolve_saved_model_dir(path, version)
        parts = saved_model_classifier(directory, allow_unsafe)
        fmt = "tf-serving" if used_version is not None else "savedmodel"
        detail = parts.pop("format_detail")
        if used_version is not None:
            detail += f", TF Serving version {used_version} of {list_serving_versions(path)}"
        return Victim(path=str(directory), format=fmt, format_detail=detail, version=used_version,
                      sha256=sha256_path(directory), **parts)
    if version is not None:
        raise ModelLoadError(f"{path} is a model file; --model-version applies to a TF Serving base path")
    from .classifier import keras_classifier
    from .keras_files import load_keras_h5, load_keras_zip

    kind = files.sniff(path)
    loaded = load_keras_zip(path, allow_unsafe) if kind == "zip" else load_keras_h5(path, allow_unsafe)
    try:
        parts = keras_classifier(loaded.model, path.name)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - an odd graph Keras cannot slice
        raise ModelLoadError(f"{path.name}: cannot inspect the model ({files.first_line(exc)})") from None
    parts["notes"] = loaded.notes + parts["notes"]
    return Victim(model=loaded.model, path=str(path), format=loaded.format, format_detail=loaded.detail,
                  sha256=sha256_path(path), **parts)
