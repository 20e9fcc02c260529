"""Clean-data loaders: every format, resizing/channels, subsampling, and bad input."""

from __future__ import annotations

import hashlib

import cv2
import h5py
import numpy as np
import pytest

from tabor_tf.data import CleanData, load_clean_data, read_image, subsample_indices
from tabor_tf.errors import DataError


def _images(n=12, size=8, channels=3, seed=0):
    """Images whose first pixel encodes their index (value 10 + index) so labels can be checked."""
    rng = np.random.default_rng(seed)
    x = rng.integers(20, 256, size=(n, size, size, channels)).astype(np.uint8)
    x[:, 0, 0, 0] = 10 + np.arange(n)
    return x


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., ::-1].copy() if rgb.shape[-1] == 3 else rgb


def _write_folder(root, x, y, ext=".png"):
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / str(label)
        d.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(d / f"img{i:03d}{ext}"), _bgr(img))


# ------------------------------------------------------------------------------------------
# arrays


@pytest.mark.parametrize("keys", [("x", "y"), ("x_test", "y_test"), ("X_test", "Y_test")])
def test_npz_keys(tmp_path, keys):
    x, y = _images(), np.arange(12) % 3
    path = tmp_path / "d.npz"
    np.savez(path, **{keys[0]: x, keys[1]: y})
    data = load_clean_data(path, image_shape=(8, 8, 3), num_classes=3)
    assert isinstance(data, CleanData) and data.format == "npz"
    assert data.x.dtype == np.float32 and data.x.shape == (12, 8, 8, 3)
    np.testing.assert_array_equal(data.x, x.astype(np.float32))
    assert data.y.dtype == np.int64 and list(data.y) == list(y)


def test_npz_without_labels_float_and_grayscale(tmp_path):
    x = _images(channels=1)[..., 0].astype(np.float64)  # [N, H, W] float
    np.savez(tmp_path / "g.npz", x=x)
    data = load_clean_data(tmp_path / "g.npz", image_shape=(8, 8, 1))
    assert data.y is None and data.x.shape == (12, 8, 8, 1) and not data.has_labels
    assert data.to_dict()["labelled"] is False


@pytest.mark.parametrize("onehot", [True, False])
def test_neural_cleanse_h5(tmp_path, onehot):
    x, y = _images(), np.arange(12) % 4
    path = tmp_path / "gtsrb_dataset_int.h5"
    with h5py.File(path, "w") as f:
        f["X_test"] = x
        f["Y_test"] = np.eye(4)[y] if onehot else y[:, None]
    data = load_clean_data(path, image_shape=(8, 8, 3), num_classes=4)
    assert data.format == "h5"
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_array_equal(data.x, x)
    sub = load_clean_data(path, limit=8, seed=1)
    np.testing.assert_array_equal(sub.y, (sub.x[:, 0, 0, 0].astype(int) - 10) % 4)


def test_arrays_must_match_the_model(tmp_path):
    np.savez(tmp_path / "d.npz", x=_images(), y=np.arange(12) % 3)
    with pytest.raises(DataError, match="8x8x3 but the model takes 32x32x3"):
        load_clean_data(tmp_path / "d.npz", image_shape=(32, 32, 3))
    with pytest.raises(DataError, match="channel conversion is only done for image folders"):
        load_clean_data(tmp_path / "d.npz", image_shape=(8, 8, 1))
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 192)) + 5)
    with pytest.raises(DataError, match="expected \\[N, H, W, C\\]"):
        load_clean_data(tmp_path / "flat.npz")


# ------------------------------------------------------------------------------------------
# image folders


def test_image_folder_with_classes_all_formats_rgb_order(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    red[..., 1] = 30
    exts = [".png", ".bmp", ".ppm", ".jpg"]
    for label, ext in enumerate(exts):
        _write_folder(tmp_path / "imgs", [red, red], [label, label], ext)
    (tmp_path / "imgs" / "0" / "notes.txt").write_text("not an image")
    data = load_clean_data(tmp_path / "imgs", image_shape=(8, 8, 3), num_classes=4)
    assert data.format == "image-folder" and len(data) == 8
    assert list(data.y) == [0, 0, 1, 1, 2, 2, 3, 3]
    lossless = data.x[:6]  # png, bmp, ppm
    np.testing.assert_array_equal(lossless, np.broadcast_to(red, lossless.shape))
    assert np.abs(data.x[6:] - red).max() < 12  # jpeg, still RGB not BGR


def test_image_folder_resizes_and_converts_channels(tmp_path):
    x = _images(n=4, size=16)
    _write_folder(tmp_path / "big", x, [0, 1, 0, 1])
    data = load_clean_data(tmp_path / "big", image_shape=(8, 8, 3))
    expected = cv2.resize(x[0].astype(np.float32), (8, 8), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(data.x[0], expected, atol=1e-4)
    gray = load_clean_data(tmp_path / "big", image_shape=(8, 8, 1))
    assert gray.x.shape == (4, 8, 8, 1)
    small = load_clean_data(tmp_path / "big", image_shape=(20, 24, 3))  # enlarging: bilinear
    assert small.x.shape == (4, 20, 24, 3)
    g = _images(n=2, channels=1)
    _write_folder(tmp_path / "gray", g, [0, 0])
    rgb = load_clean_data(tmp_path / "gray", image_shape=(8, 8, 3))
    assert rgb.x.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(rgb.x[..., 0], rgb.x[..., 2])


def test_flat_folder_has_no_labels_and_16bit_and_alpha(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    img = _images(n=1)[0]
    cv2.imwrite(str(d / "a.png"), _bgr(img))
    cv2.imwrite(str(d / "b.png"), (_bgr(img).astype(np.uint16) * 257))
    cv2.imwrite(str(d / "c.png"), np.dstack([_bgr(img), np.full((8, 8), 128, np.uint8)]))
    data = load_clean_data(d)
    assert data.y is None and data.x.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(data.x[1], data.x[0], atol=1e-3)
    np.testing.assert_array_equal(data.x[2], data.x[0])


# ------------------------------------------------------------------------------------------
# GTSRB


def _gtsrb_tree(root, with_test_csv=True):
    rng = np.random.default_rng(3)
    test_dir = root / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(6):
        h, w = 10 + i, 12 + i
        img = rng.integers(20, 256, (h, w, 3)).astype(np.uint8)
        cv2.imwrite(str(test_dir / f"{i:05d}.ppm"), img)
        rows.append(f"{i:05d}.ppm;{w};{h};1;1;{w - 1};{h - 1};{i % 3}")
    if with_test_csv:
        (test_dir / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    train = root / "GTSRB" / "Final_Training" / "Images"
    for c in range(2):
        d = train / f"{c:05d}"
        d.mkdir(parents=True)
        lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for j in range(3):
            cv2.imwrite(str(d / f"00000_{j:05d}.ppm"), rng.integers(20, 256, (9, 9, 3)).astype(np.uint8))
            lines.append(f"00000_{j:05d}.ppm;9;9;1;1;8;8;{c}")
        (d / f"GT-{c:05d}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_gtsrb_layouts(tmp_path):
    root = _gtsrb_tree(tmp_path)
    for path in (root, root / "GTSRB", root / "GTSRB" / "Final_Test", root / "GTSRB" / "Final_Test" / "Images"):
        data = load_clean_data(path, image_shape=(8, 8, 3), num_classes=43)
        assert data.format == "gtsrb-test" and data.x.shape == (6, 8, 8, 3)
        assert list(data.y) == [0, 1, 2, 0, 1, 2]
    train = load_clean_data(root / "GTSRB" / "Final_Training", image_shape=(8, 8, 3))
    assert train.format == "gtsrb-train" and list(train.y) == [0, 0, 0, 1, 1, 1]


def test_gtsrb_without_csv(tmp_path):
    root = _gtsrb_tree(tmp_path, with_test_csv=False)
    with pytest.raises(DataError, match="without GT-final_test.csv"):
        load_clean_data(root, image_shape=(8, 8, 3))
    (root / "GTSRB" / "Final_Training" / "Images" / "00001" / "GT-00001.csv").unlink()
    with pytest.raises(DataError, match="without its csv GT-00001.csv"):
        load_clean_data(root / "GTSRB" / "Final_Training", image_shape=(8, 8, 3))


# ------------------------------------------------------------------------------------------
# subsampling


def test_limit_is_deterministic_and_stratified(tmp_path):
    x, y = _images(n=60), np.repeat([0, 1, 2], [30, 20, 10])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a = load_clean_data(tmp_path / "d.npz", limit=12, seed=5)
    b = load_clean_data(tmp_path / "d.npz", limit=12, seed=5)
    c = load_clean_data(tmp_path / "d.npz", limit=12, seed=6)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert np.bincount(a.y).tolist() == [6, 4, 2]
    idx = a.x[:, 0, 0, 0].astype(int) - 10  # which source images were kept
    np.testing.assert_array_equal(a.y, y[idx])
    rare = subsample_indices(100, 3, np.array([0] * 98 + [1, 2]), seed=0)
    assert len(rare) == 3 and {98, 99} <= set(rare.tolist())  # every class kept when possible
    assert len(subsample_indices(10, 4, None, seed=0)) == 4


def test_limit_reads_only_the_chosen_images(tmp_path):
    _write_folder(tmp_path / "f", _images(n=6), [0, 0, 0, 1, 1, 1])
    (tmp_path / "f" / "1" / "zzz_broken.png").write_bytes(b"garbage")  # file index 6 (sorted last)
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    seeds = {s: 6 in subsample_indices(7, 2, y, seed=s) for s in range(20)}
    skip = next(s for s, hit in seeds.items() if not hit)
    hit = next(s for s, hit in seeds.items() if hit)
    assert len(load_clean_data(tmp_path / "f", limit=2, seed=skip)) == 2
    with pytest.raises(DataError, match="zzz_broken.png"):
        load_clean_data(tmp_path / "f", limit=2, seed=hit)


# ------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_clean_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_clean_data(tmp_path / "empty")
    (tmp_path / "named" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="named by class number"):
        load_clean_data(tmp_path / "named")
    x = _images().astype(np.float32)
    cases = {
        "nan": (np.where(np.arange(x.size).reshape(x.shape) == 700, np.nan, x), "NaN/inf.*image 3"),
        "inf": (np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x), "NaN/inf"),
        "big": (x * 2, "outside the raw range 0..255"),
        "unit": (x / 255.0, "looks already normalised"),
        "symmetric": (x / 127.5 - 1, "outside the raw range.*looks already normalised"),
    }
    for name, (arr, msg) in cases.items():
        np.savez(tmp_path / f"{name}.npz", x=arr)
        with pytest.raises(DataError, match=msg):
            load_clean_data(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "labels.npz", x=x, y=np.arange(12))
    with pytest.raises(DataError, match="out of range for a model with 10 classes"):
        load_clean_data(tmp_path / "labels.npz", num_classes=10)
    np.savez(tmp_path / "neg.npz", x=x, y=np.arange(12) - 1)
    with pytest.raises(DataError, match="negative"):
        load_clean_data(tmp_path / "neg.npz")
    with pytest.raises(DataError, match="only 12 clean images; this scan needs at least 50"):
        load_clean_data(tmp_path / "labels.npz", min_samples=50)
    np.savez(tmp_path / "obj.npz", x=np.array([x[0], None], dtype=object))
    with pytest.raises(DataError, match="without pickle"):
        load_clean_data(tmp_path / "obj.npz")
    np.savez(tmp_path / "nokeys.npz", images=x)
    with pytest.raises(DataError, match="no image array found.*images"):
        load_clean_data(tmp_path / "nokeys.npz")
    with h5py.File(tmp_path / "absurd.h5", "w") as f:  # declares 200 GB, stores nothing
        f.create_dataset("X_test", shape=(10**9, 8, 8, 3), dtype="uint8")
    with pytest.raises(DataError, match="declare .* bytes"):
        load_clean_data(tmp_path / "absurd.h5")
    (tmp_path / "notdata.bin").write_bytes(b"hello")
    with pytest.raises(DataError, match="unknown data format"):
        load_clean_data(tmp_path / "notdata.bin")


def test_unreadable_image_is_named_and_files_untouched(tmp_path):
    _write_folder(tmp_path / "f", _images(n=2), [0, 1])
    bad = tmp_path / "f" / "1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "f").rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        load_clean_data(tmp_path / "f", image_shape=(8, 8, 3))
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "f").rglob("*") if p.is_file()}
    assert before == after
    with pytest.raises(DataError, match="broken.jpg"):
        read_image(bad)
