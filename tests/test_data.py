"""Clean-data loaders: every format, resizing/channels, subsampling, and bad input."""

from __future__ import annotations

import hashlib

import cv2
import h5py
import numpy as np
import pytest

from tabor_tf.data import CleanData, load_clean_data, read_image, resize_image, subsample_indices
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


def test_arrays_are_resized_to_the_model_but_keep_their_channels(tmp_path):
    np.savez(tmp_path / "d.npz", x=_images(), y=np.arange(12) % 3)
    big = load_clean_data(tmp_path / "d.npz", image_shape=(32, 32, 3))
    assert big.image_shape == (32, 32, 3)
    np.testing.assert_allclose(big.x[3], resize_image(_images()[3], (32, 32)), atol=1e-4)
    assert any("resized from 8x8 to 32x32 (bilinear)" in n for n in big.notes)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X_test"] = _images()
        f["Y_test"] = np.arange(12) % 3
    small = load_clean_data(tmp_path / "d.h5", image_shape=(4, 4, 3))
    assert small.image_shape == (4, 4, 3) and any("(area)" in n for n in small.notes)
    np.testing.assert_allclose(small.x[0], resize_image(_images()[0], (4, 4)), atol=1e-4)
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


def _class_folders(root, names):
    """One image per class folder; its first pixel is 10 + int(name) (or 10 + position for words)."""
    x = _images(n=len(names))
    for i, name in enumerate(names):
        x[i, 0, 0, 0] = 10 + (int(name) if name.isdigit() else i)
        d = root / name
        d.mkdir(parents=True)
        assert cv2.imwrite(str(d / "img.png"), _bgr(x[i]))
    return root


def _folder_of(data):
    """The int(folder name) each loaded image came from (decoded from its first pixel)."""
    return data.x[:, 0, 0, 0].astype(int) - 10


def test_unpadded_class_folders_follow_keras_order_with_a_note(tmp_path):
    """Keras's image_dataset_from_directory sorts 0..11 as strings: 0, 1, 10, 11, 2, ..., 9."""
    root = _class_folders(tmp_path / "imgs", [str(i) for i in range(12)])
    keras_order = sorted(str(i) for i in range(12))
    data = load_clean_data(root, image_shape=(8, 8, 3), num_classes=12)
    assert data.label_order == "keras" and data.to_dict()["label_order"] == "keras"
    assert {int(f): int(y) for f, y in zip(_folder_of(data), data.y)} == {int(n): i for i, n in enumerate(keras_order)}
    assert dict(zip(_folder_of(data).tolist(), data.y.tolist()))[10] == 2
    note = next(n for n in data.notes if "Keras's string order" in n)
    assert "(2, 10, ...)" in note and "10 before 2" in note and "--label-order numeric" in note
    assert load_clean_data(root, image_shape=(8, 8, 3), label_order="keras").y.tolist() == data.y.tolist()

    numeric = load_clean_data(root, image_shape=(8, 8, 3), num_classes=12, label_order="numeric")
    assert numeric.label_order == "numeric"
    np.testing.assert_array_equal(numeric.y, _folder_of(numeric))
    assert not any("Keras" in n for n in numeric.notes)
    with pytest.raises(DataError, match="--label-order 'alphabetic': choose one of auto, keras, numeric"):
        load_clean_data(root, label_order="alphabetic")


def test_padded_or_single_digit_class_folders_are_unambiguous(tmp_path):
    for name, names in (("padded", [f"{i:05d}" for i in range(12)]), ("digits", [str(i) for i in range(7)])):
        root = _class_folders(tmp_path / name, names)
        for order in ("auto", "keras", "numeric"):
            data = load_clean_data(root, image_shape=(8, 8, 3), num_classes=len(names), label_order=order)
            np.testing.assert_array_equal(data.y, _folder_of(data))
            assert not any("Keras's string order" in n for n in data.notes), (name, order, data.notes)
        assert load_clean_data(root, image_shape=(8, 8, 3)).label_order == "numeric"


def test_class_folder_subsets_and_names(tmp_path):
    # single digits only, but a 12-class model: Keras numbered its training folders 0..11 as strings
    subset = _class_folders(tmp_path / "subset", [str(i) for i in range(10)])
    data = load_clean_data(subset, image_shape=(8, 8, 3), num_classes=12)
    assert dict(zip(_folder_of(data).tolist(), data.y.tolist()))[2] == 4 and data.label_order == "keras"
    assert any("12-class model" in n for n in data.notes)
    # padded names with a class missing keep their numbers
    gap = _class_folders(tmp_path / "gap", ["00", "01", "03"])
    assert load_clean_data(gap, image_shape=(8, 8, 3)).y.tolist() == [0, 1, 3]
    # names that are not numbers: Keras's order, and numeric refuses them
    words = _class_folders(tmp_path / "words", ["dog", "cat", "bird"])
    data = load_clean_data(words, image_shape=(8, 8, 3), num_classes=3)
    assert data.label_order == "keras" and data.y.tolist() == [0, 1, 2]  # bird, cat, dog
    assert any("bird=0, cat=1, dog=2" in n for n in data.notes)
    with pytest.raises(DataError, match="numeric needs class folders named by class number.*'bird'"):
        load_clean_data(words, label_order="numeric")
    with pytest.raises(DataError, match="'01' and '1' are both class 1"):
        load_clean_data(_class_folders(tmp_path / "dup", ["1", "01"]), label_order="numeric")
    # arrays have no folder order
    np.savez(tmp_path / "d.npz", x=_images(), y=np.arange(12))
    assert load_clean_data(tmp_path / "d.npz").label_order is None


def test_label_order_reaches_the_cli_and_the_report(tmp_path):
    import argparse
    from types import SimpleNamespace

    from tabor_tf.commands.scan import add_common_input_arguments
    from tabor_tf.input_check import InputCheck
    from tabor_tf.scanning import Prepared

    parser = argparse.ArgumentParser()
    add_common_input_arguments(parser)
    assert parser.parse_args([]).label_order == "auto"
    assert parser.parse_args(["--label-order", "numeric"]).label_order == "numeric"
    with pytest.raises(SystemExit):
        parser.parse_args(["--label-order", "alphabetic"])
    data = load_clean_data(_class_folders(tmp_path / "imgs", [str(i) for i in range(12)]), image_shape=(8, 8, 3))
    victim = SimpleNamespace(path=str(tmp_path / "m.keras"), sha256="0" * 64, format="keras", input_shape=(8, 8, 3),
                             num_classes=12, output_kind="logits", version=None)
    prepared = Prepared(victim=victim, data=data, check=InputCheck("unit", 1.0), data_path=str(tmp_path / "imgs"),
                        max_samples=None)
    assert prepared.context(0).data["label_order"] == "keras"


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
    with pytest.raises(DataError, match=r"no images .*directly in its class folders \(cats\)"):
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
