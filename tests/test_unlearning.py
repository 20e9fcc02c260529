"""Mitigation by unlearning (``tabor_tf.unlearning``) on the tiny infected victim."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from neural_cleanse_baseline import preset
from neural_cleanse_baseline.reverse import Reverser
from tabor_tf.errors import ModelLoadError, TaborError
from tabor_tf.unlearning import (
    UnlearnConfig,
    evaluate_backdoor,
    load_trainable,
    patch,
    save_model,
    stamp_fraction,
)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_stamp_fraction_keeps_labels_and_stamps_exactly_the_fraction():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, (50, 4, 4, 3)).astype(np.float32)
    m1 = np.zeros((4, 4)); m1[0, 0] = 1.0
    m2 = np.zeros((4, 4)); m2[3, 3] = 1.0
    pat = np.full((4, 4, 3), 255.0)
    mixed, stamped = stamp_fraction(x, [(m1, pat), (m2, pat, 5)], 0.2, np.random.default_rng(1))
    assert stamped.sum() == 10 and mixed.shape == x.shape
    np.testing.assert_array_equal(mixed[~stamped], x[~stamped])  # the rest untouched
    hit1 = mixed[stamped][:, 0, 0, 0] == 255
    hit2 = mixed[stamped][:, 3, 3, 0] == 255
    assert hit1.sum() == 5 and hit2.sum() == 5 and not np.any(hit1 & hit2)  # spread over triggers
    changed = (mixed != x).any(axis=(1, 2, 3))
    assert set(np.flatnonzero(changed)) <= set(np.flatnonzero(stamped))
    with pytest.raises(TaborError):
        stamp_fraction(x, [], 0.2, rng)
    with pytest.raises(TaborError):
        stamp_fraction(x, [(m1, np.zeros((3, 3, 3)))], 0.2, rng)


def test_unlearning_removes_the_backdoor_and_keeps_clean_accuracy(tiny_infected_victim, tiny_signs, tmp_path):
    from tabor_tf.data import load_clean_data
    from tabor_tf.loading import load_victim
    from tabor_tf.zoo.card import load_card

    tiny = tiny_infected_victim
    card = load_card(tiny.card_path)
    held = load_clean_data(tiny.data_path)
    victim = load_victim(tiny.model_path)
    # restore the trigger of the target with Neural Cleanse (the target label only, short run)
    cfg = preset("gtsrb", steps=150, mini_batch=4)
    out = Reverser(victim, held.x[:300], tiny.preprocess, cfg).run(7, np.random.default_rng(0))
    restored = (out.mask, out.pattern, 7)
    true = (card.masks[0], card.patterns[0], 7)
    # about 10% of the training data, 20% of it stamped with the restored trigger, true labels
    x_ft, y_ft = tiny_signs.x_train[:400], tiny_signs.y_train[:400]
    before_hash = _sha(tiny.model_path)
    report = patch(tiny.model_path, x_ft, y_ft, tiny.preprocess, [restored], tmp_path / "patched.keras",
                   config=UnlearnConfig(epochs=1), eval_x=held.x[300:], eval_y=held.y[300:], true_triggers=[true])
    print("\nunlearning:", report["before"], report["after"])
    before, after = report["before"], report["after"]
    assert before["attack_success"][1] > 0.9  # the real trigger works before
    assert after["attack_success"][1] < 0.5 * before["attack_success"][1]  # ... and much less after
    assert after["attack_success"][0] < 0.5 * before["attack_success"][0]
    assert after["clean_accuracy"] > before["clean_accuracy"] - 0.06
    assert _sha(tiny.model_path) == before_hash  # the infected file is only read
    # the saved patched model reloads and measures the same
    reloaded = load_trainable(report["model_path"])
    again = evaluate_backdoor(reloaded, held.x[300:], held.y[300:], tiny.preprocess, [true])
    assert again["clean_accuracy"] == pytest.approx(after["clean_accuracy"])
    assert again["attack_success"][0] == pytest.approx(after["attack_success"][1])
    # .h5 too
    assert Path(save_model(reloaded, tmp_path / "patched.h5")).is_file()


def test_evaluate_backdoor_counts_only_non_target_images(tiny_infected_victim):
    from tabor_tf.data import load_clean_data
    from tabor_tf.zoo.card import load_card

    held = load_clean_data(tiny_infected_victim.data_path, limit=200, seed=0)
    card = load_card(tiny_infected_victim.card_path)
    model = load_trainable(tiny_infected_victim.model_path)
    res = evaluate_backdoor(model, held.x, held.y, "unit", [(card.masks[0], card.patterns[0], 7)])
    assert res["clean_accuracy"] == pytest.approx(tiny_infected_victim.card["clean_accuracy"], abs=0.08)
    assert res["attack_success"][0] > 0.9
    # an all-zero mask is no trigger: "attack success" = how often non-7 images are called 7 anyway
    none = evaluate_backdoor(model, held.x, held.y, "unit", [(np.zeros((32, 32)), card.patterns[0], 7)])
    assert none["attack_success"][0] < 0.1
    with pytest.raises(TaborError, match="target"):
        evaluate_backdoor(model, held.x, held.y, "unit", [(card.masks[0], card.patterns[0])])


def test_patching_errors(tmp_path, tiny_infected_victim):
    with pytest.raises(ModelLoadError):
        load_trainable(tmp_path)  # a directory (SavedModel) cannot be fine-tuned here
    with pytest.raises(ModelLoadError):
        load_trainable(tmp_path / "missing.h5")
    model = load_trainable(tiny_infected_victim.model_path)
    with pytest.raises(TaborError, match=".keras or .h5"):
        save_model(model, tmp_path / "patched.pb")
