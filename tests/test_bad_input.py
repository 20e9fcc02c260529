"""Bad input end to end: ``tabor-tf scan`` answers exit 2 and one clear line, never a traceback,
and never modifies the user's files."""

import hashlib
import os
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from tabor_tf.cli import main

NC_FAST = ["--method", "nc", "--set", "mini_batch=2", "--set", "steps=5", "--set", "batch_size=16",
           "--max-samples", "100", "--no-html", "--quiet"]
SIZE, CLASSES = 32, 10


def _tree_digest(*paths) -> dict:
    out = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for p in files:
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), os.path.getmtime(p))
    return out


def _images(n, size=SIZE, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels)).astype(np.uint8)


def _write_folder(root: Path, n=6, classes=3):
    for i, img in enumerate(_images(n)):
        d = root / str(i % classes)
        d.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(d / f"img{i:03d}.png"), img)


def _gtsrb_without_csv(root: Path) -> Path:
    d = root / "GTSRB" / "Final_Test" / "Images"
    d.mkdir(parents=True)
    for i, img in enumerate(_images(4)):
        assert cv2.imwrite(str(d / f"{i:05d}.ppm"), img)
    return root


def _marker_lambda(marker: str):
    return eval(f"lambda t: (open({marker!r}, 'w').close(), t * 1.0)[1]")  # noqa: S307 - test fixture


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """Models that are not image classifiers, and a Lambda model whose code writes a marker file."""
    import keras

    root = tmp_path_factory.mktemp("odd-models")
    shape = (SIZE, SIZE, 3)
    keras.Sequential([keras.Input((784,)), keras.layers.Dense(CLASSES)]).save(root / "flat.keras")
    regression = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(1)])
    regression.save(root / "regression.keras")
    inp = keras.Input(shape)
    h = keras.layers.Flatten()(inp)
    keras.Model(inp, [keras.layers.Dense(3)(h), keras.layers.Dense(2)(h)]).save(root / "two_outputs.keras")
    marker = root / "MARKER"
    inp = keras.Input(shape)
    h = keras.layers.Lambda(_marker_lambda(str(marker)), name="evil")(inp)
    keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Flatten()(h))).save(
        root / "lambda.h5")
    if marker.exists():
        marker.unlink()  # building the model traced the Lambda once
    return root, marker


def _case_files(tmp: Path, victim) -> dict:
    """name -> (model path, data path, extra args, expected message regexp)."""
    model, data = victim.model_path, victim.data_path
    raw = Path(model).read_bytes()
    cases = {}
    cases["missing model"] = (str(tmp / "nope.h5"), data, [], "model not found")
    (tmp / "corrupt.h5").write_bytes(b"this is not a model at all" * 20)
    cases["corrupt model"] = (str(tmp / "corrupt.h5"), data, [], "corrupt.h5")
    (tmp / "truncated.h5").write_bytes(raw[: len(raw) // 2])
    cases["truncated hdf5"] = (str(tmp / "truncated.h5"), data, [], "truncated.h5")
    shutil.copy(model, tmp / "absurd.h5")
    with h5py.File(tmp / "absurd.h5", "r+") as f:  # declares 4 TB of weights, stores none
        f["model_weights"].create_dataset("huge", shape=(10**12,), dtype="float32")
    cases["absurd hdf5"] = (str(tmp / "absurd.h5"), data, [], "declares .* TB")
    x, y = _images(40), np.arange(40) % CLASSES
    # (another height / width is resized to the model's: tests/test_data.py)
    np.savez(tmp / "flat.npz", x=_images(40, size=16).reshape(40, -1), y=y)
    cases["flat image arrays"] = (model, str(tmp / "flat.npz"), [], "[N, H, W, C]")
    np.savez(tmp / "gray.npz", x=_images(40, channels=2), y=y)
    cases["wrong channels"] = (model, str(tmp / "gray.npz"), [], "channel")
    (tmp / "empty").mkdir()
    cases["empty data folder"] = (model, str(tmp / "empty"), [], "no images")
    np.savez(tmp / "few.npz", x=x[:2], y=y[:2])
    cases["too few samples"] = (model, str(tmp / "few.npz"), [], "only 2 clean images; this scan needs at least")
    np.savez(tmp / "labels.npz", x=x, y=y + 5)
    cases["labels out of range"] = (model, str(tmp / "labels.npz"), [], "out of range")
    xf = x.astype(np.float32)
    xf[3, 1, 1, 0] = np.nan
    np.savez(tmp / "nan.npz", x=xf, y=y)
    cases["nan"] = (model, str(tmp / "nan.npz"), [], "NaN")
    xf = x.astype(np.float32)
    xf[0, 0, 0, 0] = np.inf
    np.savez(tmp / "inf.npz", x=xf, y=y)
    cases["inf"] = (model, str(tmp / "inf.npz"), [], "inf")
    np.savez(tmp / "big.npz", x=x.astype(np.float32) * 3, y=y)
    cases["values above 255"] = (model, str(tmp / "big.npz"), [], "0..255")
    np.savez(tmp / "neg.npz", x=x.astype(np.float32) - 300, y=y)
    cases["negative values"] = (model, str(tmp / "neg.npz"), [], "0..255")
    _write_folder(tmp / "folder")
    (tmp / "folder" / "1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cases["unreadable image"] = (model, str(tmp / "folder"), ["--max-samples", "0"], "broken.jpg")
    cases["gtsrb without csv"] = (model, str(_gtsrb_without_csv(tmp / "gtsrb")), [], "csv")
    (tmp / "blocker").write_text("a regular file")
    cases["unwritable output"] = (model, data, ["--out", str(tmp / "blocker" / "out")], "cannot write")
    return cases


CASE_NAMES = ["missing model", "corrupt model", "truncated hdf5", "absurd hdf5", "flat image arrays",
              "wrong channels", "empty data folder", "too few samples", "labels out of range", "nan", "inf",
              "values above 255", "negative values", "unreadable image", "gtsrb without csv", "unwritable output"]


@pytest.fixture(scope="module")
def cases(tiny_clean_victim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    return tmp, _case_files(tmp, tiny_clean_victim)


def _check_one_line_error(capsys, rc, pattern):
    import re

    captured = capsys.readouterr()
    err_lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in err_lines if line.startswith("tabor-tf: error:")]
    assert len(errors) == 1, captured.err
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_exit_2_one_line_files_untouched(cases, tiny_clean_victim, name, capsys, tmp_path):
    tmp, table = cases
    model, data, extra, pattern = table[name]
    before = _tree_digest(model, data)
    out = ["--out", str(tmp_path / "out")] if "--out" not in extra else []
    rc = main(["scan", model, "--data", data, *NC_FAST, *out, *extra])
    _check_one_line_error(capsys, rc, pattern)
    assert _tree_digest(model, data) == before
    assert not (tmp_path / "out" / "report.json").exists()
    if "--out" not in extra:  # a scan that could not start leaves no empty report folder behind
        assert not (tmp_path / "out").exists(), sorted(p.name for p in (tmp_path / "out").rglob("*"))


def test_failed_start_leaves_no_report_folder(tiny_clean_victim, capsys, tmp_path, monkeypatch):
    """The default ``scan-<model>-<method>`` folder, a nested ``--out`` and an existing folder,
    after a model that cannot be loaded: nothing is created, nothing the user had is removed."""
    monkeypatch.chdir(tmp_path)
    data = tiny_clean_victim.data_path
    assert main(["scan", "nope.h5", "--data", data, *NC_FAST, "--quiet"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert main(["scan", "nope.h5", "--data", data, *NC_FAST, "--out", "a/b/c", "--quiet"]) == 2
    assert not (tmp_path / "a").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["scan", "nope.h5", "--data", data, *NC_FAST, "--out", "mine", "--quiet"]) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert main(["scan", "nope.h5", "--data", data, *NC_FAST, "--out", "empty", "--quiet"]) == 2
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    capsys.readouterr()


@pytest.mark.parametrize("name, pattern", [("flat.keras", "input has shape"), ("regression.keras", "single unit"),
                                           ("two_outputs.keras", "2 outputs")])
def test_not_an_image_classifier(odd_models, tiny_clean_victim, name, pattern, capsys, tmp_path):
    root, _ = odd_models
    before = _tree_digest(root / name)
    rc = main(["scan", str(root / name), "--data", tiny_clean_victim.data_path, *NC_FAST, "--out", str(tmp_path)])
    _check_one_line_error(capsys, rc, pattern)
    assert _tree_digest(root / name) == before


def test_lambda_model_code_never_runs(odd_models, tiny_clean_victim, capsys, tmp_path):
    root, marker = odd_models
    before = _tree_digest(root / "lambda.h5")
    rc = main(["scan", str(root / "lambda.h5"), "--data", tiny_clean_victim.data_path, *NC_FAST,
               "--out", str(tmp_path / "o")])
    line = _check_one_line_error(capsys, rc, r"Lambda.*--allow-unsafe-deserialization")
    assert "evil" in line
    assert not marker.exists()
    assert _tree_digest(root / "lambda.h5") == before
