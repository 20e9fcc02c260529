"""Shared fixtures: tiny victim models built once per test session on the synthetic signs.

Each victim fixture returns a ``TinyVictim`` with ``model_path`` (Keras 3 ``.h5``),
``card_path``, ``card`` (the card dict), ``data_path`` (npz of held-out clean images ``x`` uint8
``[N,32,32,3]`` and labels ``y`` int64), ``num_classes`` (10), ``preprocess`` ("unit"),
``targets`` and ``name``. Building asserts clean accuracy >= 0.9 and attack success >= 0.95 on
the held-out images, so a bad victim fails loudly instead of making detector tests flaky.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dataclasses import dataclass  # noqa: E402
from typing import List  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_CLASSES = 10
TINY_TRAIN, TINY_TEST = 3000, 1000
TINY_EPOCHS = 10
MIN_CLEAN_ACC, MIN_ASR = 0.9, 0.95


@dataclass(frozen=True)
class TinyVictim:
    name: str
    model_path: str
    card_path: str
    card: dict
    data_path: str
    num_classes: int
    preprocess: str
    targets: List[int]


@pytest.fixture(scope="session")
def tiny_signs():
    """The synthetic dataset of every tiny victim (``ZooData``: 3000 train / 1000 test, 10 classes)."""
    from tabor_tf.zoo import SyntheticSettings, synthetic_data

    return synthetic_data(SyntheticSettings(train=TINY_TRAIN, test=TINY_TEST, num_classes=TINY_CLASSES, seed=0))


@pytest.fixture(scope="session")
def tiny_signs_path(tiny_signs, tmp_path_factory):
    """npz of the held-out clean images (``x`` uint8 raw, ``y`` int64)."""
    path = str(tmp_path_factory.mktemp("tiny-data") / "clean-test.npz")
    np.savez(path, x=tiny_signs.x_test, y=tiny_signs.y_test)
    return path


def tiny_spec(name: str, backdoors=(), **overrides):
    """The recipe entry every tiny victim uses (tiny arch, unit preprocessing, fixed seed)."""
    from tabor_tf.zoo import VictimSpec

    settings = dict(arch="tiny", epochs=TINY_EPOCHS, batch_size=64, poison_rate=0.15, seed=0, preprocess="unit")
    settings.update(overrides)
    return VictimSpec(name=name, backdoors=tuple(backdoors), **settings)


def _build(spec, data, data_path, out_root) -> TinyVictim:
    import keras

    from tabor_tf.zoo import build_victim, load_card

    keras.utils.set_random_seed(spec.seed)
    card_path = build_victim(spec, data, str(out_root))
    card = load_card(card_path)
    assert card["clean_accuracy"] >= MIN_CLEAN_ACC, f"{spec.name}: clean accuracy {card['clean_accuracy']:.3f}"
    for bd in card["backdoors"]:
        assert bd["attack_success_rate"] >= MIN_ASR, (
            f"{spec.name}: attack success {bd['attack_success_rate']:.3f} for target {bd['target']}"
        )
    return TinyVictim(
        name=spec.name,
        model_path=card.model_path,
        card_path=card_path,
        card=card.data,
        data_path=data_path,
        num_classes=card.num_classes,
        preprocess=card.preprocess,
        targets=card.targets,
    )


@pytest.fixture(scope="session")
def tiny_clean_victim(tiny_signs, tiny_signs_path, tmp_path_factory):
    """A clean tiny CNN (no backdoor)."""
    return _build(tiny_spec("tiny-clean"), tiny_signs, tiny_signs_path, tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def tiny_infected_victim(tiny_signs, tiny_signs_path, tmp_path_factory):
    """White 4x4 square, bottom-right (1 px margin) -> target 7."""
    from tabor_tf.zoo import Backdoor, TriggerSpec

    bd = Backdoor(TriggerSpec("square", 4, "bottom-right"), 7)
    return _build(tiny_spec("tiny-square-br", [bd]), tiny_signs, tiny_signs_path, tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def tiny_two_target_victim(tiny_signs, tiny_signs_path, tmp_path_factory):
    """Two backdoors: white 4x4 square bottom-right -> 7, and a 6x6 logo icon top-left -> 2."""
    from tabor_tf.zoo import Backdoor, TriggerSpec

    bds = [
        Backdoor(TriggerSpec("square", 4, "bottom-right"), 7),
        Backdoor(TriggerSpec("icon", 6, "top-left"), 2),
    ]
    return _build(tiny_spec("tiny-two-targets", bds), tiny_signs, tiny_signs_path, tmp_path_factory.mktemp("zoo"))
