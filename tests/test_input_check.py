"""Preprocessing auto-selection on toy models trained in a second under a known preprocessing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tabor_tf.data import CleanData  # noqa: E402
from tabor_tf.errors import DataError  # noqa: E402
from tabor_tf.input_check import (  # noqa: E402
    InputCheck, choose_unlabelled, clean_accuracy, select_preprocess)
from tabor_tf.loading import load_victim  # noqa: E402
from tabor_tf.preprocess import MODES, preprocess  # noqa: E402

# classes = mean colour: dark grey, red, green, blue, light grey (+ pixel noise)
COLOURS = np.array([[40, 40, 40], [200, 60, 60], [60, 200, 60], [60, 60, 200], [210, 210, 210]], np.float32)


def toy(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(COLOURS), n)
    x = COLOURS[y][:, None, None, :] + rng.normal(0, 12, (n, 6, 6, 3))
    return np.clip(x, 0, 255).astype(np.float32), y.astype(np.int64)


def train_victim(mode, path, rescaling=False):
    keras.utils.set_random_seed(0)
    x, y = toy(500, 0)
    layers = [keras.Input((6, 6, 3))]
    if rescaling:
        layers.append(keras.layers.Rescaling(1 / 255.0))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16, activation="relu"),
               keras.layers.Dense(len(COLOURS), activation="softmax")]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(preprocess(x, mode), y, epochs=15, batch_size=50, verbose=0)
    model.save(path)
    return load_victim(path)


@pytest.fixture(scope="module")
def victims(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return {m: train_victim(m, root / f"{m}.keras") for m in MODES}


@pytest.fixture(scope="module")
def clean():
    x, y = toy(150, 1)
    return CleanData(x, y, "toy", "npz")


@pytest.mark.parametrize("mode", MODES)
def test_auto_recovers_the_training_preprocessing_with_labels(victims, clean, mode):
    check = select_preprocess(victims[mode], clean, "auto")
    assert isinstance(check, InputCheck)
    assert check.mode == mode
    assert check.clean_accuracy == check.accuracies_by_mode[mode] > 0.95
    assert set(check.accuracies_by_mode) == set(MODES)
    assert min(check.accuracies_by_mode.values()) < 0.7  # the wrong modes really are wrong
    assert check.warnings == () and check.criterion == "clean accuracy"
    assert check.clean_accuracy == clean_accuracy(victims[mode], clean, mode)


@pytest.mark.parametrize("mode", MODES)
def test_auto_without_labels_recovers_it_too(victims, clean, mode):
    unlabelled = CleanData(clean.x, None, "toy", "npz")
    check = select_preprocess(victims[mode], unlabelled, "auto")
    assert check.mode == mode and check.clean_accuracy is None
    assert set(check.scores_by_mode) == set(MODES)
    assert any("no labels" in w and "heuristic" in w for w in check.warnings)
    json.dumps(check.to_dict())


def test_low_accuracy_warns_and_names_the_better_mode(victims, clean):
    check = select_preprocess(victims["symmetric"], clean, "mnist")  # NC alias of unit
    assert check.mode == "unit" and check.clean_accuracy < 0.5
    assert len(check.warnings) == 1
    warning = check.warnings[0]
    assert "LOW CLEAN ACCURACY" in warning and "with --preprocess unit" in warning
    assert "--preprocess symmetric gives 100.0%" in warning
    assert set(check.accuracies_by_mode) == set(MODES)
    good = select_preprocess(victims["symmetric"], clean, "inception")
    assert good.mode == "symmetric" and good.warnings == () and list(good.accuracies_by_mode) == ["symmetric"]


def test_explicit_mode_without_labels_and_clean_accuracy_needs_labels(victims, clean):
    unlabelled = CleanData(clean.x, None, "toy", "npz")
    check = select_preprocess(victims["raw"], unlabelled, "imagenet")
    assert check.mode == "imagenet" and check.clean_accuracy is None and check.warnings == ()
    with pytest.raises(DataError):
        clean_accuracy(victims["raw"], unlabelled, "raw")
    with pytest.raises(Exception, match="unknown preprocessing mode"):
        select_preprocess(victims["raw"], clean, "zscore")


def test_internal_rescaling_prefers_raw(tmp_path, clean):
    victim = train_victim("raw", tmp_path / "r.keras", rescaling=True)
    assert [p.class_name for p in victim.preprocessing_layers] == ["Rescaling"]
    check = select_preprocess(victim, CleanData(clean.x, None, "toy", "npz"))
    assert check.mode == "raw" and "Rescaling" in check.criterion
    scores = {"raw": {"diversity": 0.5, "confidence": 0.9}, "unit": {"diversity": 0.9, "confidence": 0.9},
              "symmetric": {"diversity": 0.1, "confidence": 0.5}, "imagenet": {"diversity": 0.95, "confidence": 1.0}}
    assert choose_unlabelled(scores) == ("unit", "prediction diversity and confidence (no labels)")
    assert choose_unlabelled(scores, self_normalising=True)[0] == "unit"  # raw is not plausible here


def test_auto_prefers_training_scale_over_overconfident_raw():
    """A ReLU net trained on x/255 is nearly as accurate on raw 0..255 input, only over-confident:
    the NLL tie-break must pick the training mode (unit) for the shipped demo victim."""
    from pathlib import Path

    from tabor_tf.data import CleanData
    from tabor_tf.loading import load_victim
    from tabor_tf.synthetic import make_signs

    model = Path(__file__).resolve().parents[1] / "tabor_tf" / "assets" / "demo" / "square-br" / "model.h5"
    x, y = make_signs(300, seed=777)
    check = select_preprocess(load_victim(model), CleanData(x=x.astype("float32"), y=y, source="t", format="npz"))
    assert check.accuracies_by_mode["raw"] >= check.accuracies_by_mode["unit"] - 0.02  # the trap is real
    assert check.mode == "unit"
