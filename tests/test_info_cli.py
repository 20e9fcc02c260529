"""``tabor-tf info``: text and JSON descriptions, exit 2 with one line for refused/unreadable models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tabor_tf.cli import main  # noqa: E402
from tabor_tf.loading import sha256_path  # noqa: E402


def _model(lambda_marker=None):
    inp = keras.Input((10, 12, 3))
    h = keras.layers.Rescaling(1 / 255.0)(inp)
    if lambda_marker:
        h = keras.layers.Lambda(eval(f"lambda t: (open({str(lambda_marker)!r}, 'w').close(), t)[1]"))(h)  # noqa: S307
    h = keras.layers.Conv2D(2, 3, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(7, activation="softmax")(h))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    m = _model()
    m.save(root / "m.keras")
    for v in (1, 2):
        m.export(str(root / "serving" / str(v)), verbose=False)
    marker = root / "MARKER"
    _model(marker).save(root / "lambda.keras")
    marker.unlink()
    return root, m.count_params()


def test_text_output(models, capsys):
    root, params = models
    assert main(["info", str(root / "m.keras")]) == 0
    out = capsys.readouterr().out
    assert "10 x 12 x 3" in out and "RGB" in out
    assert "classes               7" in out
    assert "probabilities" in out and "pre-softmax" in out
    assert "Rescaling(scale=0.00392157, offset=0)" in out
    assert f"{params:,}" in out
    assert sha256_path(root / "m.keras") in out
    assert "keras - Keras 3 .keras archive" in out


def test_json_output_and_serving_version(models, capsys):
    root, params = models
    assert main(["info", str(root / "m.keras"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_shape"] == [10, 12, 3] and info["num_classes"] == 7
    assert info["output_kind"] == "probabilities" and info["param_count"] == params
    assert [p["class_name"] for p in info["preprocessing_layers"]] == ["Rescaling"]
    assert main(["info", str(root / "serving"), "--json", "--version", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "tf-serving" and info["version"] == 1 and info["preprocessing_layers"] is None
    assert main(["info", str(root / "serving")]) == 0
    assert "TF Serving version 2 of [1, 2]" in capsys.readouterr().out


def test_refused_and_unreadable_models_exit_2_with_one_line(models, capsys, tmp_path):
    root, _ = models
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    for args, msg in [
        ([str(root / "lambda.keras")], "(Lambda)"),
        ([str(tmp_path / "missing.keras")], "model not found"),
        ([str(bad)], "not a readable HDF5 file"),
        ([str(root / "serving"), "--version", "5"], "version 5 not found"),
    ]:
        assert main(["info", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tabor-tf: error: ") and msg in err[0]
    assert not (root / "MARKER").exists()
    assert main(["info", str(root / "lambda.keras"), "--allow-unsafe-deserialization"]) == 0
    assert "unsafe deserialisation allowed" in capsys.readouterr().out
    (root / "MARKER").unlink(missing_ok=True)


def test_python_dash_m(models):
    root, _ = models
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    ok = subprocess.run([sys.executable, "-m", "tabor_tf", "info", str(root / "m.keras"), "--json"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["num_classes"] == 7
    bad = subprocess.run([sys.executable, "-m", "tabor_tf", "info", str(root / "lambda.keras")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("tabor-tf: error: ")
    assert not (root / "MARKER").exists()
