"""Model files on disk: what kind of file it is, where a TF Serving version lives, its hash, and
sanity checks against files that declare absurd sizes. Everything here only reads."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Optional

from ..errors import ModelLoadError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# Declared tensor bytes may exceed the bytes on disk by this factor (+ slack) before we refuse:
# weights of real networks barely compress, so a much larger declaration is a crafted file.
SIZE_FACTOR, SIZE_SLACK = 4, 16 * 2**20
MAX_CONFIG_BYTES = 64 * 2**20


def sniff(path: Path) -> str:
    """``"hdf5"`` or ``"zip"`` from the file's magic bytes (the extension is not trusted)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if not head:
        raise ModelLoadError(f"model file {path} is empty")
    raise ModelLoadError(
        f"{path} is not a Keras model file (.keras zip or HDF5 .h5) nor a SavedModel directory"
    )


def is_saved_model_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in SAVED_MODEL_FILES)


def list_serving_versions(path) -> list[int]:
    """Numeric version folders of a TF Serving model base path ``NAME/<version>/saved_model.pb``, sorted."""
    path = Path(path)
    versions = []
    if path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and child.name.isdigit() and is_saved_model_dir(child):
                versions.append(int(child.name))
    return sorted(versions)


def resolve_saved_model_dir(path: Path, version: Optional[int]) -> tuple[Path, Optional[int]]:
    """A SavedModel directory, or a TF Serving base path + version (highest unless given)."""
    if is_saved_model_dir(path):
        if version is not None:
            raise ModelLoadError(
                f"{path} is a single SavedModel, not a TF Serving base path: drop --model-version {version}"
            )
        return path, None
    versions = list_serving_versions(path)
    if not versions:
        numeric = sorted(c.name for c in path.iterdir() if c.is_dir() and c.name.isdigit())
        if numeric:
            raise ModelLoadError(
                f"{path} looks like a TF Serving base path but none of its version folders"
                f" ({', '.join(numeric)}) holds a saved_model.pb"
            )
        raise ModelLoadError(
            f"{path} is a directory without saved_model.pb: not a SavedModel nor a TF Serving base"
            " path (NAME/<version>/saved_model.pb)"
        )
    if version is None:
        version = versions[-1]
    elif int(version) not in versions:
        raise ModelLoadError(
            f"version {version} not found under {path}; available versions: {', '.join(map(str, versions))}"
        )
    return path / str(int(version)), int(version)


def sha256_path(path) -> str:
    """SHA-256 of a file; of a directory: over its files in sorted relative-path order, each
    contributing its relative POSIX path, a NUL byte and its bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file(path, digest)
        return digest.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
        _hash_file(file, digest)
    return digest.hexdigest()


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def check_declared_bytes(declared: int, on_disk: int, what: str) -> None:
    """Refuse files whose tensors declare far more bytes than the file holds (memory exhaustion)."""
    if declared > SIZE_FACTOR * on_disk + SIZE_SLACK:
        raise ModelLoadError(
            f"{what} declares {_human(declared)} of tensors but holds only {_human(on_disk)}:"
            " a truncated or crafted file; refusing to load it"
        )


def h5_declared_bytes(h5file) -> int:
    """Total bytes the datasets of an open ``h5py.File`` declare (shape x itemsize; nothing is read)."""
    import h5py

    total = 0

    def visit(_name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            count = 1
            for dim in obj.shape or ():
                count *= int(dim)
            total += count * int(obj.dtype.itemsize)

    h5file.visititems(visit)
    return total


def read_h5_text_attr(h5file, name: str, file_size: int, what: str) -> Optional[str]:
    """A string attribute (``model_config``...) of an open HDF5 file, size-checked before reading."""
    if name not in h5file.attrs:
        return None
    storage = h5file.attrs.get_id(name).get_storage_size()
    if storage > max(file_size, MAX_CONFIG_BYTES):
        raise ModelLoadError(f"{what}: attribute {name!r} declares {_human(storage)}; refusing to read it")
    value = h5file.attrs[name]
    if hasattr(value, "decode"):
        value = value.decode("utf-8")
    return str(value)


def check_zip(path: Path) -> zipfile.ZipFile:
    """Open a ``.keras`` zip after checking its entries' declared sizes; raises ModelLoadError."""
    try:
        archive = zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable .keras archive ({_first_line(exc)})") from None
    size = os.path.getsize(path)
    declared = sum(info.file_size for info in archive.infolist())
    check_declared_bytes(declared, size, f"{path}")
    return archive


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:300]


first_line = _first_line
