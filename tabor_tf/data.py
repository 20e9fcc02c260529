"""Clean data for a scan: raw RGB pixels 0..255 as ``CleanData`` (x ``[N, H, W, C]`` float32, y ``[N]``).

Formats (recognised from content and layout, not only the name):

* ``.npz``: ``x_test``/``y_test``, ``X_test``/``Y_test``, ``x``/``y`` or ``X``/``Y`` (labels
  optional; ``x_train``/``y_train`` as a last resort). Loaded without pickle.
* ``.npy``: images only.
* Neural Cleanse style ``.h5``: ``X_test``/``Y_test`` (labels one-hot or integers), or the
  lower-case / unsuffixed names above.
* An image folder: one sub-folder per class (``0/``, ``1/``, ``00012/``, or names such as ``cat/``),
  or a flat folder of unlabelled images. Class labels follow ``label_order`` (below).
  png/jpg/jpeg/ppm/pgm/bmp/tif/webp read with OpenCV (BGR is turned into RGB, alpha dropped,
  16-bit scaled to 0..255).
* The official GTSRB layout: ``Final_Test/Images/*.ppm`` + ``GT-final_test.csv`` (in ``Images/``,
  ``Final_Test/`` or the given folder), or ``Final_Training/Images/000NN/*.ppm`` + ``GT-000NN.csv``.
  Whole images are resized (no region-of-interest crop), as in the shared GTSRB 32x32 arrays.

Images are resized to the model's (H, W) with OpenCV (``INTER_AREA`` when shrinking, bilinear
when enlarging); 1 <-> 3 channel conversion is done for image files only. Arrays (npz/npy/h5) are
resized by the same rule when only their height and width differ from the model's (a note says
so); their channels must match. ``limit`` keeps a deterministic subsample (stratified by label
when labels exist) and only the kept images are read from disk.

Class-folder labels (``label_order``; see ``class_folder_labels``): Keras's
``image_dataset_from_directory`` labels folders by their position in the names sorted as
strings, so unpadded numbers put ``10`` before ``2``. ``numeric``: label = int(folder name).
``keras``: Keras's order. ``auto`` (default): int(name) when both orders agree (numbers
zero-padded to one width, or single digits only), else Keras's order with a note saying so;
names that are not all numbers always get Keras's order. The GTSRB layouts take their labels
from the csv files.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import DataError

LABEL_ORDERS = ("auto", "keras", "numeric")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pnm", ".bmp", ".tif", ".tiff", ".webp")
ARRAY_KEYS = (("x_test", "y_test"), ("X_test", "Y_test"), ("x", "y"), ("X", "Y"), ("x_train", "y_train"),
              ("X_train", "Y_train"))
# Arrays may declare at most this many bytes per byte on disk (+ slack): guards against bombs.
_DECLARED_FACTOR, _DECLARED_SLACK = 200, 256 * 2**20


@dataclass
class CleanData:
    """Clean images in the raw pixel domain. ``x``: [N, H, W, C] float32 in 0..255; ``y``: [N] int64 or None."""

    x: np.ndarray
    y: Optional[np.ndarray]
    source: str
    format: str  # "npz", "npy", "h5", "image-folder", "gtsrb-test", "gtsrb-train"
    notes: tuple = ()
    label_order: Optional[str] = None  # class folders: "keras" or "numeric" (the one used); else None

    def __len__(self) -> int:
        return int(len(self.x))

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    @property
    def image_shape(self) -> tuple:
        return tuple(int(d) for d in self.x.shape[1:])

    def to_dict(self) -> dict:
        """JSON-ready summary (no arrays)."""
        return {
            "source": self.source,
            "format": self.format,
            "samples": len(self),
            "image_shape": list(self.image_shape),
            "labelled": self.has_labels,
            "labels_present": None if self.y is None else sorted(int(v) for v in np.unique(self.y)),
            "notes": list(self.notes),
            "label_order": self.label_order,
        }


def load_clean_data(
    path,
    *,
    image_shape: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
    limit: Optional[int] = None,
    seed: int = 0,
    min_samples: Optional[int] = None,
    label_order: str = "auto",
) -> CleanData:
    """Read clean data from ``path`` (see module doc); ``DataError`` with a one-line reason for bad input.

    ``image_shape`` (H, W, C): the model's input; images are resized / channel-converted to it,
    arrays are resized to it (their channels must match). ``num_classes``: labels must lie in [0, num_classes).
    ``limit``/``seed``: deterministic (stratified) subsample. ``min_samples``: refuse smaller data.
    ``label_order``: ``auto`` / ``keras`` / ``numeric``, for class folders (module doc).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"clean data not found: {path}")
    if image_shape is not None:
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3:
            raise DataError(f"image_shape must be (height, width, channels), got {image_shape}")
    if limit is not None and int(limit) < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    order = str(label_order).strip().lower()
    if order not in LABEL_ORDERS:
        raise DataError(f"--label-order {label_order!r}: choose one of {', '.join(LABEL_ORDERS)}")
    if path.is_dir():
        data = _load_directory(path, image_shape, limit, seed, order, num_classes)
    else:
        data = _load_array_file(path, image_shape, limit, seed)
    _check_labels(data, num_classes)
    if min_samples is not None and len(data) < int(min_samples):
        raise DataError(
            f"{path}: only {len(data)} clean images; this scan needs at least {int(min_samples)}"
        )
    return data


# ------------------------------------------------------------------------------------------
# subsampling


def subsample_indices(n: int, limit: Optional[int], y: Optional[np.ndarray], seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic subsample of ``limit`` out of ``n`` items.

    With labels the subsample is stratified: each class keeps its share (largest remainders,
    ties broken by ``seed``) and, when ``limit`` allows, every class keeps at least one image.
    """
    if limit is None or int(limit) >= n:
        return np.arange(n)
    limit = int(limit)
    rng = np.random.default_rng(seed)
    if y is None:
        return np.sort(rng.choice(n, size=limit, replace=False))
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = limit * counts / n
    take = np.floor(quota).astype(int)
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))
    take[order[: limit - take.sum()]] += 1
    if limit >= len(classes):
        for c in np.flatnonzero(take == 0):
            donor = int(np.argmax(take))
            take[donor] -= 1
            take[c] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == c), size=int(t), replace=False) for c, t in enumerate(take) if t]
    return np.sort(np.concatenate(chosen))


# ------------------------------------------------------------------------------------------
# arrays: npz / npy / h5


def _load_array_file(path: Path, image_shape, limit, seed) -> CleanData:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        x, y, keys, fmt = _read_npz(path)
    elif head.startswith(b"\x93NUMPY"):
        x, y, keys, fmt = _read_npy(path), None, ("array",), "npy"
    elif head.startswith(b"\x89HDF\r\n\x1a\n"):
        return _load_h5(path, image_shape, limit, seed)
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{path} is a single image; give a folder of images (one sub-folder per class)")
    else:
        raise DataError(f"{path}: unknown data format; expected .npz, .npy, .h5 or a folder of images")
    x = _as_nhwc(x, path)
    y = _as_labels(y, len(x), path)
    _check_shape(x.shape[1:], image_shape, path)
    idx = subsample_indices(len(x), limit, y, seed)
    xs, resized = _fit_size(x[idx], image_shape)
    xs = _pixels(xs, path)
    return CleanData(xs, None if y is None else y[idx], str(path), fmt, (f"arrays {'/'.join(keys)}",) + resized)


def _read_npz(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - corrupt zip
        raise DataError(f"{path}: not a readable .npz file ({_line(exc)})") from None
    with archive:
        names = set(archive.files)
        for xk, yk in ARRAY_KEYS:
            if xk in names:
                _check_npz_sizes(archive, path, [xk] + ([yk] if yk in names else []))
                try:
                    x = archive[xk]
                    y = archive[yk] if yk in names else None
                except ValueError as exc:
                    raise DataError(f"{path}: array {xk!r} cannot be read without pickle ({_line(exc)})") from None
                except Exception as exc:  # noqa: BLE001 - truncated member
                    raise DataError(f"{path}: array {xk!r} is unreadable ({_line(exc)})") from None
                return x, y, (xk,) + ((yk,) if y is not None else ()), "npz"
    raise DataError(
        f"{path}: no image array found; expected x_test/y_test, X_test/Y_test or x/y (has: {', '.join(sorted(names)) or 'nothing'})"
    )


def _check_npz_sizes(archive, path: Path, keys) -> None:
    declared = sum(archive.zip.getinfo(f"{k}.npy").file_size for k in keys if f"{k}.npy" in archive.zip.namelist())
    if declared > _DECLARED_FACTOR * os.path.getsize(path) + _DECLARED_SLACK:
        raise DataError(f"{path}: arrays declare {declared} bytes for a {os.path.getsize(path)}-byte file; refusing")


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable .npy array ({_line(exc)})") from None


def _load_h5(path: Path, image_shape, limit, seed) -> CleanData:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {_line(exc)}") from None
    with h5:
        if "model_config" in h5.attrs or "model_weights" in h5:
            raise DataError(f"{path} is a Keras model file, not clean data")
        for xk, yk in ARRAY_KEYS:
            if xk in h5 and isinstance(h5[xk], h5py.Dataset):
                dx = h5[xk]
                dy = h5[yk] if yk in h5 and isinstance(h5[yk], h5py.Dataset) else None
                declared = dx.size * dx.dtype.itemsize + (0 if dy is None else dy.size * dy.dtype.itemsize)
                if declared > _DECLARED_FACTOR * os.path.getsize(path) + _DECLARED_SLACK:
                    raise DataError(f"{path}: datasets declare {declared} bytes for a small file; refusing")
                try:
                    y = _as_labels(dy[()] if dy is not None else None, dx.shape[0] if dx.ndim else 0, path)
                    if dx.ndim not in (3, 4):
                        raise DataError(f"{path}: {xk!r} has shape {dx.shape}; expected images [N, H, W(, C)]")
                    _check_shape(tuple(dx.shape[1:]) + (() if dx.ndim == 4 else (1,)), image_shape, path)
                    idx = subsample_indices(dx.shape[0], limit, y, seed)
                    x = dx[()] if len(idx) == dx.shape[0] else dx[idx]
                except DataError:
                    raise
                except Exception as exc:  # noqa: BLE001 - truncated datasets
                    raise DataError(f"{path}: dataset {xk!r} is unreadable ({_line(exc)})") from None
                x, resized = _fit_size(_as_nhwc(x, path), image_shape)
                x = _pixels(x, path)
                keys = (xk,) + ((yk,) if dy is not None else ())
                return CleanData(x, None if y is None else y[idx], str(path), "h5",
                                 (f"datasets {'/'.join(keys)}",) + resized)
        names = ", ".join(sorted(h5.keys())) or "nothing"
    raise DataError(f"{path}: no image dataset found; expected X_test/Y_test or x/y (has: {names})")


def _as_nhwc(x, path: Path) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == object or x.dtype.kind not in "uif":
        raise DataError(f"{path}: images have dtype {x.dtype}; expected numbers (uint8 or float pixels 0..255)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: images have shape {x.shape}; expected [N, H, W, C] or [N, H, W]")
    if len(x) == 0:
        raise DataError(f"{path}: the image array is empty")
    return x


def _as_labels(y, n: int, path: Path) -> Optional[np.ndarray]:
    if y is None:
        return None
    y = np.asarray(y)
    if y.dtype == object or y.dtype.kind not in "buif":
        raise DataError(f"{path}: labels have dtype {y.dtype}; expected integers or one-hot rows")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        if not (np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1)):
            raise DataError(f"{path}: labels of shape {y.shape} are not one-hot rows")
        y = y.argmax(axis=1)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: {len(y) if y.ndim else 1} labels for {n} images")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{path}: labels must be whole numbers (class ids)")
    return y.astype(np.int64)


def _check_shape(shape, image_shape, path: Path) -> None:
    """Arrays must have the model's channels (their height and width are resized by ``_fit_size``)."""
    if image_shape is None:
        return
    shape = tuple(int(d) for d in shape)
    if shape[2:] != tuple(image_shape)[2:]:
        raise DataError(f"{path}: images are {_hwc(shape)} but the model takes {_hwc(image_shape)}"
                        " (channel conversion is only done for image folders)")


def _fit_size(x: np.ndarray, image_shape) -> tuple:
    """``(x [N,H,W,C] resized to the model's (H, W) by resize_image, notes)``; ``x`` unchanged when it
    fits. uint8 pixels are resized as uint8, as the zoo resizes its training data."""
    if image_shape is None or tuple(x.shape[1:3]) == tuple(image_shape[:2]):
        return x, ()
    size = tuple(int(d) for d in image_shape[:2])
    if x.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        x = x.astype(np.float32)
    out = np.stack([resize_image(img, size) for img in x])
    how = "area" if size[0] <= x.shape[1] and size[1] <= x.shape[2] else "bilinear"
    return out, (f"resized from {_hwc(x.shape[1:3])} to {_hwc(size)} ({how}) to fit the model",)


def _hwc(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def _pixels(x: np.ndarray, source) -> np.ndarray:
    """Validated float32 raw pixels: finite, within 0..255, not already normalised."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
            raise DataError(f"{source}: {int(bad.sum())} NaN/inf pixel values (first in image {first})")
    x = x.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    normalised = " - the data looks already normalised; give raw pixels 0..255 and choose --preprocess"
    if lo < 0 or hi > 255:
        raise DataError(
            f"{source}: pixel values span [{lo:.4g}, {hi:.4g}], outside the raw range 0..255"
            + (normalised if hi <= 1.0 else "")
        )
    if hi <= 1.0:
        raise DataError(f"{source}: pixel values lie in [{lo:.4g}, {hi:.4g}]{normalised}")
    return x


def _check_labels(data: CleanData, num_classes: Optional[int]) -> None:
    if data.y is None:
        return
    y = data.y
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise DataError(f"{data.source}: label {lo} is negative; labels are class ids 0..K-1")
    if num_classes is not None and hi >= int(num_classes):
        count = int((y >= int(num_classes)).sum())
        raise DataError(
            f"{data.source}: {count} label(s) up to {hi} are out of range for a model with"
            f" {int(num_classes)} classes (0..{int(num_classes) - 1})"
        )


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# ------------------------------------------------------------------------------------------
# image files


def read_image(path: Path, channels: Optional[int] = None, size: Optional[tuple] = None) -> np.ndarray:
    """One image file -> [H, W, C] float32 raw RGB 0..255 (``channels`` 1 or 3, ``size`` (H, W))."""
    import cv2

    try:
        buffer = np.fromfile(str(path), dtype=np.uint8)
        img = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    except (OSError, cv2.error, ValueError):
        img = None
    if img is None:
        raise DataError(f"cannot read image {path} (unreadable or not an image)")
    if img.dtype == np.uint16:
        img = img.astype(np.float32) / 257.0
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] != 1:
        raise DataError(f"cannot read image {path}: {img.shape[2]} channels")
    if channels == 1 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    elif channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if size is not None:
        img = resize_image(img, size)
    return img


def resize_image(img: np.ndarray, size) -> np.ndarray:
    """``img`` ``[H,W,C]`` resized to ``size`` (h, w): area averaging when shrinking, bilinear when
    enlarging; channels kept (a 1-channel image stays ``[h,w,1]``)."""
    import cv2

    h, w = (int(v) for v in size)
    if tuple(img.shape[:2]) == (h, w):
        return img
    shrink = h <= img.shape[0] and w <= img.shape[1]
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(h, w, img.shape[2])


def _read_images(files: Sequence[Path], image_shape, source: str) -> np.ndarray:
    channels = image_shape[2] if image_shape else None
    size = image_shape[:2] if image_shape else None
    images = []
    for file in files:
        img = read_image(file, channels, size)
        if images and img.shape != images[0].shape:
            raise DataError(
                f"{source}: images differ in size or channels ({file.name} is {_hwc(img.shape)},"
                f" {files[0].name} is {_hwc(images[0].shape)}); give the model's input shape"
            )
        if channels is None:
            channels = img.shape[2]
        images.append(img)
    return np.stack(images)


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def class_folder_labels(names: Sequence[str], label_order: str = "auto",
                        num_classes: Optional[int] = None) -> tuple[dict, str, Optional[str]]:
    """``({folder name: label}, order used ("keras" / "numeric"), note or None)`` for class folders.

    Keras's label of a folder is its index among the names sorted as strings. When the names are
    numbers below the model's class count ``num_classes`` (K), all unpadded or all zero-padded to
    one width, it is the index among the K names ``"0".."K-1"`` written that way and sorted as
    strings (the index among the folders present when all K are there): a clean-data folder
    missing some classes keeps the labels Keras gave the full training folder. ``auto`` calls the
    names ambiguous when these labels differ from int(name) (without K: when the string and
    numeric orders of the names differ, or two names are the same number).
    """
    names = sorted(names)
    if not all(n.isascii() and n.isdigit() for n in names):
        if label_order == "numeric":
            bad = next(n for n in names if not (n.isascii() and n.isdigit()))
            raise DataError(f"--label-order numeric needs class folders named by class number (0, 1, ...);"
                            f" found {bad!r}")
        labels = {n: i for i, n in enumerate(names)}
        shown = ", ".join(f"{n}={i}" for n, i in list(labels.items())[:4]) + (", ..." if len(names) > 4 else "")
        note = f"class folders are not numbers: labelled in Keras's order of the sorted names ({shown})"
        if num_classes is not None and len(names) < int(num_classes):
            note += (f"; only {len(names)} of the model's {int(num_classes)} classes have a folder, so these labels"
                     " are right only if the training folder had exactly these names")
        return labels, "keras", note
    ints = {n: int(n) for n in names}
    duplicates = len(set(ints.values())) < len(names)
    if label_order == "numeric":
        if duplicates:
            a, b = next((a, b) for a in names for b in names if a < b and ints[a] == ints[b])
            raise DataError(f"class folders {a!r} and {b!r} are both class {ints[a]} (--label-order numeric)")
        return ints, "numeric", None
    keras, full = _keras_labels(names, num_classes)
    if full:
        ambiguous = keras != ints
    else:
        ambiguous = duplicates or names != sorted(names, key=lambda n: (int(n), n))
    if label_order == "auto" and not ambiguous:
        return ints, "numeric", None
    if keras == ints:
        return keras, "keras", None
    inverted = [(a, b) for a in names for b in names if ints[a] < ints[b] and keras[b] < keras[a]]
    what = "class folders have numeric names that are not zero-padded to one width"
    if inverted:
        a, b = min(inverted, key=lambda p: (ints[p[0]], ints[p[1]]))
        detail, what = f"{b} before {a}: folder {b} is label {keras[b]}", f"{what} ({a}, {b}, ...)"
    else:
        n = next(n for n in names if keras[n] != ints[n])
        detail = f"folder {n} is label {keras[n]}"
        if full:
            detail = f"folders 0..{int(num_classes) - 1} sorted as strings: {detail}"
            what = f"class folders have unpadded numeric names for a {int(num_classes)}-class model"
        else:
            what = f"{what} ({n}, ...)"
    if label_order == "keras":
        return keras, "keras", f"class folders labelled in Keras's string order, as asked ({detail})"
    return keras, "keras", (f"{what}: labelled in Keras's string order ({detail}); use --label-order numeric"
                            " if the model was trained with label = int(folder name)")


def _keras_labels(names: Sequence[str], num_classes: Optional[int]) -> tuple[dict, bool]:
    """Keras's labels of numeric folder ``names`` and whether they assume the full training set of
    K folders named like these: unpadded ``"0".."K-1"``, or zero-padded to the names' one width."""
    k = None if num_classes is None else int(num_classes)
    width = len(names[0])
    if k is not None and all(int(n) < k for n in names):
        if all(str(int(n)) == n for n in names):
            style = str
        elif all(len(n) == width for n in names) and k <= 10 ** width:
            style = lambda i: str(i).zfill(width)  # noqa: E731
        else:
            style = None
        if style is not None:
            rank = {n: i for i, n in enumerate(sorted(style(i) for i in range(k)))}
            return {n: rank[n] for n in names}, True
    return {n: i for i, n in enumerate(sorted(names))}, False


def _load_directory(path: Path, image_shape, limit, seed, label_order="auto", num_classes=None) -> CleanData:
    gtsrb = _find_gtsrb(path)
    if gtsrb is not None:
        return _load_gtsrb(path, gtsrb, image_shape, limit, seed)
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    top_images = sorted(p for p in path.iterdir() if _is_image(p))
    found = {d.name: sorted(p for p in d.iterdir() if _is_image(p)) for d in subdirs}
    notes = []
    order = None
    if subdirs and (any(found.values()) or not top_images):
        labels_by_name, order, note = class_folder_labels(list(found), label_order, num_classes)
        if note:
            notes.append(note)
        if top_images:
            notes.append(f"{len(top_images)} images directly in the folder were ignored (not in a class folder)")
        files, labels = [], []
        for name in found:  # sorted names: the file order (and so the subsample) does not depend on the labels
            files += found[name]
            labels += [labels_by_name[name]] * len(found[name])
        y = np.asarray(labels, dtype=np.int64)
        if not files:
            raise DataError(f"{path}: no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) directly in its class"
                            f" folders ({', '.join(list(found)[:5])}{', ...' if len(found) > 5 else ''}); give a"
                            " folder with one sub-folder of images per class")
    else:
        if subdirs:
            notes.append(f"sub-folders without images ignored ({', '.join(d.name for d in subdirs[:5])})")
        files, y = top_images, None
    if not files:
        raise DataError(f"{path}: no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in the folder")
    idx = subsample_indices(len(files), limit, y, seed)
    x = _pixels(_read_images([files[i] for i in idx], image_shape, str(path)), path)
    fmt = "image-folder"
    if y is not None:
        how = "label = folder number" if order == "numeric" else "labels in Keras's order of the sorted names"
        notes.append(f"{len(files)} images in {len(found)} class folders ({how})")
    else:
        notes.append(f"{len(files)} images in a flat folder (no labels)")
    return CleanData(x, None if y is None else y[idx], str(path), fmt, tuple(notes), order)


# ------------------------------------------------------------------------------------------
# GTSRB


def _find_gtsrb(path: Path) -> Optional[tuple]:
    """("test", Final_Test dir) or ("train", Final_Training dir) when ``path`` is (in) a GTSRB tree.

    Accepts the ``Final_*`` folder itself, its ``Images`` folder, or a folder holding
    ``Final_Test``/``Final_Training`` (directly or under ``GTSRB/``); the test set wins when both exist.
    """
    kinds = (("Final_Test", "test"), ("Final_Training", "train"))
    here = path.parent if path.name == "Images" else path
    for name, kind in kinds:
        if here.name == name and (here / "Images").is_dir():
            return kind, here
    for base in (path, path / "GTSRB"):
        for name, kind in kinds:
            if (base / name / "Images").is_dir():
                return kind, base / name
    return None


def _read_gtsrb_csv(csv_path: Path, need_labels: bool = True) -> list[tuple[str, Optional[int]]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read GTSRB csv {csv_path} ({_line(exc)})") from None
    if not rows or "Filename" not in rows[0] or (need_labels and "ClassId" not in rows[0]):
        raise DataError(f"{csv_path}: expected ';'-separated columns Filename;...;ClassId")
    out = []
    for i, row in enumerate(rows, start=2):
        label = None
        if need_labels:
            try:
                label = int(row["ClassId"])
            except (TypeError, ValueError):
                raise DataError(f"{csv_path}: line {i}: ClassId {row.get('ClassId')!r} is not a number") from None
        out.append((row["Filename"], label))
    return out


def _load_gtsrb(path: Path, found: tuple, image_shape, limit, seed) -> CleanData:
    kind, base = found
    images_dir = base / "Images"
    notes = []
    if kind == "test":
        names = ("GT-final_test.csv",)
        places = (images_dir, base, base.parent, path)
        csv_path = next((p / n for p in places for n in names if (p / n).is_file()), None)
        labelled = True
        if csv_path is None:
            csv_path = next((p / "GT-final_test.test.csv" for p in places if (p / "GT-final_test.test.csv").is_file()), None)
            labelled = False
            if csv_path is None:
                raise DataError(
                    f"{path}: GTSRB test folder without GT-final_test.csv (the test labels come separately"
                    " as GTSRB_Final_Test_GT.zip; put the csv in Final_Test/Images)"
                )
            notes.append("GT-final_test.csv not found: test images loaded without labels")
        entries = [(images_dir / f, c) for f, c in _read_gtsrb_csv(csv_path, labelled)]
    else:
        entries = []
        class_dirs = sorted(d for d in images_dir.iterdir() if d.is_dir() and d.name.isdigit())
        if not class_dirs:
            raise DataError(f"{images_dir}: no class folders (000NN) in the GTSRB training layout")
        for d in class_dirs:
            csv_path = d / f"GT-{d.name}.csv"
            if not csv_path.is_file():
                raise DataError(f"{d}: GTSRB class folder without its csv GT-{d.name}.csv")
            entries += [(d / f, c) for f, c in _read_gtsrb_csv(csv_path)]
        labelled = True
    if not entries:
        raise DataError(f"{path}: the GTSRB csv lists no images")
    for file, _ in entries:
        if not file.is_file():
            raise DataError(f"GTSRB csv lists {file.name} but {file} does not exist")
    y = np.asarray([c for _, c in entries], dtype=np.int64) if labelled else None
    idx = subsample_indices(len(entries), limit, y, seed)
    x = _pixels(_read_images([entries[i][0] for i in idx], image_shape, str(path)), path)
    notes.append(f"GTSRB {'test' if kind == 'test' else 'training'} layout, {len(entries)} images")
    return CleanData(x, None if y is None else y[idx], str(path), f"gtsrb-{kind}", tuple(notes))
