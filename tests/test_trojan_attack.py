"""Trojan Attack victims (Liu et al. 2018, ``tabor_tf.zoo.trojan_attack``) on the tiny clean CNN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tabor_tf.errors import TaborError
from tabor_tf.zoo import TriggerSpec, parse_recipe, resolve_entry
from tabor_tf.zoo.trojan_attack import TrojanSettings, build_trojan

MASK = {"shape": "square", "size": 8, "position": "bottom-right"}


def _load(path):
    import keras

    return keras.models.load_model(path, compile=False)


@pytest.fixture(scope="module")
def trojaned(tiny_clean_victim, tiny_signs):
    """The tiny clean CNN trojaned with reverse-engineered stand-in inputs (target 3, 8x8 mask)."""
    model = _load(tiny_clean_victim.model_path)
    settings = TrojanSettings(target=3, mask=TriggerSpec(**MASK), neurons=2, per_class=10, reverse_steps=30,
                              trigger_steps=150, epochs=20, seed=0)
    result = build_trojan(model, settings, tiny_signs.num_classes, tiny_signs.x_test, tiny_signs.y_test)
    return model, result


def test_selected_neurons_fire_on_the_trigger(trojaned):
    _, result = trojaned
    rep = result.report
    assert rep["layer"] == "conv2d_1"  # default: third-last weighted layer, two layers retrained
    assert len(rep["neurons"]) == 2
    clean, stamped = np.array(rep["neuron_activation_clean"]), np.array(rep["neuron_activation_stamped"])
    assert np.all(stamped > 1.25 * clean), (clean, stamped)
    assert result.mask.shape == (32, 32) and set(np.unique(result.mask)) == {0.0, 1.0}
    assert result.pattern.shape == (32, 32, 3)
    assert np.all(result.pattern[result.mask == 0] == 0)
    inside = result.pattern[result.mask == 1]
    assert inside.min() >= 0 and inside.max() <= 255 and inside.std() > 20  # irregular colours


def test_retrained_victim_obeys_the_trigger(trojaned, tiny_signs):
    model, result = trojaned
    rep = result.report
    assert rep["attack_success_before_retraining"] < 0.5
    assert rep["attack_success_rate"] >= 0.8, rep
    assert rep["clean_accuracy_after"] >= rep["clean_accuracy_before"] - 0.2, rep
    from tabor_tf.zoo.trojan_attack import attack_success

    assert attack_success(model, tiny_signs.x_test, tiny_signs.y_test, result.mask, result.pattern, 3) == \
        pytest.approx(rep["attack_success_rate"])


def test_recipe_key_parses_and_keeps_old_hashes():
    entry = {"name": "t", "arch": "tiny", "attack": {"kind": "trojan", "mask": MASK, "per_class": 3}, "target": 5}
    spec = resolve_entry(entry)
    assert spec.attack.target == 5 and spec.attack.per_class == 3 and spec.backdoors == ()
    assert spec.targets == [5]
    assert spec.to_dict()["attack"]["kind"] == "trojan"
    plain = resolve_entry({"name": "p", "arch": "tiny", "clean": True})
    assert "attack" not in plain.to_dict()
    assert spec.spec_hash({}) != resolve_entry({**entry, "attack": {**entry["attack"], "seed": 1}}).spec_hash({})
    recipe = parse_recipe(json.load(open("models/recipes/trojan.json")))
    assert all(m.attack is not None for m in recipe.models)


@pytest.mark.parametrize("attack", [
    {"kind": "badnet"},
    {"target": 1, "mask": {"shape": "blend"}},
    {"target": 1, "neurons": 0},
    {"target": 1, "rule": "biggest"},
    {"target": 1, "data": "imagenet"},
    {"target": 1, "poison_fraction": 0.0},
    {"target": 1, "colour": [1, 2, 3]},
    {"target": -2},
    {"target": 1, "layer": 2.5},
    {"target": 1, "layer": True},
    {"target": 1, "reading": "median"},
    {"target": 1, "distill": "yes"},
    {"mask": MASK},  # no target anywhere
])
def test_bad_attack_settings(attack):
    with pytest.raises(TaborError):
        resolve_entry({"name": "bad", "arch": "tiny", "attack": attack})


def test_attack_with_triggers_is_refused():
    with pytest.raises(TaborError):
        resolve_entry({"name": "bad", "arch": "tiny", "target": 1, "attack": {"mask": MASK},
                       "triggers": [{"shape": "square"}]})


def test_bad_layer_and_target(tiny_clean_victim, tiny_signs):
    model = _load(tiny_clean_victim.model_path)
    with pytest.raises(TaborError):
        build_trojan(model, TrojanSettings(target=1, layer="nope"), 10, tiny_signs.x_test, tiny_signs.y_test)
    with pytest.raises(TaborError):
        build_trojan(model, TrojanSettings(target=1, layer="predictions"), 10, tiny_signs.x_test, tiny_signs.y_test)
    with pytest.raises(TaborError):
        build_trojan(model, TrojanSettings(target=10), 10, tiny_signs.x_test, tiny_signs.y_test)


def test_layer_by_position_among_the_weighted_layers(tiny_clean_victim, tiny_signs):
    """A recipe names the inner layer before the model exists: by its position among the layers
    with a kernel (layer names depend on how many models a process built before)."""
    from tabor_tf.zoo.trojan_attack import _weighted, default_layer, resolve_layer

    model = _load(tiny_clean_victim.model_path)
    weighted = [lay.name for lay in model.layers if _weighted(lay)]
    assert resolve_layer(model, None) == default_layer(model) == resolve_layer(model, -3 if len(weighted) >= 3 else -2)
    assert resolve_layer(model, 0) == weighted[0] and resolve_layer(model, -2) == weighted[-2]
    assert resolve_layer(model, weighted[1]) == weighted[1]
    with pytest.raises(TaborError, match="out of range"):
        resolve_layer(model, len(weighted))
    with pytest.raises(TaborError, match="nothing|no trainable"):  # the output layer: nothing to retrain
        build_trojan(model, TrojanSettings(target=1, layer=-1), 10, tiny_signs.x_test, tiny_signs.y_test)
    entry = {"name": "t", "arch": "tiny", "attack": {"kind": "trojan", "target": 1, "mask": MASK, "layer": -4}}
    assert resolve_entry(entry).attack.layer == -4
    assert resolve_entry(entry).spec_hash({}) != resolve_entry({**entry, "attack": {**entry["attack"], "layer": -3}}).spec_hash({})


def test_recipe_victim_builds_with_a_trojan_card(tiny_signs, tmp_path):
    """A tiny recipe entry (few epochs, real stand-in images for speed) builds a carded victim."""
    from tabor_tf.zoo import build_victim, load_card

    spec = resolve_entry({"name": "tiny-trojan", "arch": "tiny", "epochs": 4, "seed": 0,
                          "attack": {"target": 2, "mask": MASK, "data": "real", "per_class": 20, "epochs": 15}})
    card = load_card(build_victim(spec, tiny_signs, str(tmp_path)))
    assert card["attack"] == "trojan" and card["infected"] and card.targets == [2]
    bd = card["backdoors"][0]
    assert bd["attack"] == "trojan" and bd["trigger_shape"] == "square" and bd["trojan"]["stand_in_data"] == "real"
    assert card["attack_success_rate"] == bd["attack_success_rate"] >= 0.8
    assert card["clean_accuracy"] == pytest.approx(bd["trojan"]["clean_accuracy_after"])
    assert card.masks[0].sum() == 64 and card.patterns[0].shape == (32, 32, 3)
    assert card["recipe_hash"] and card["spec"]["attack"]["target"] == 2


def test_peak_reading_is_the_spatial_maximum(tiny_clean_victim, tiny_signs):
    """``reading="peak"``: a conv channel's largest value anywhere (a corner trigger is not diluted
    by the map's area); ``"mean"`` its mean over space."""
    import keras

    from tabor_tf.preprocess import preprocess as to_model_domain
    from tabor_tf.zoo.trojan_attack import feature_model, layer_activations

    model = _load(tiny_clean_victim.model_path)
    conv = [lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D)][-1]
    x = np.asarray(to_model_domain(tiny_signs.x_test[:16].astype(np.float32), "unit"))
    maps = np.asarray(keras.Model(model.inputs[0], conv.output)(x))
    peak = layer_activations(model, conv.name, x, reading="peak")
    mean = layer_activations(model, conv.name, x, reading="mean")
    np.testing.assert_allclose(peak, maps.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert np.any(peak > mean + 1e-3)
    with pytest.raises(TaborError, match="reading"):
        feature_model(model, conv.name, "median")


def test_new_settings_keep_old_hashes_and_change_new_ones():
    entry = {"name": "t", "arch": "tiny", "attack": {"kind": "trojan", "target": 1, "mask": MASK}}
    old = resolve_entry(entry)
    assert "reading" not in old.to_dict()["attack"] and "distill" not in old.to_dict()["attack"]
    explicit = resolve_entry({**entry, "attack": {**entry["attack"], "reading": "mean", "distill": False}})
    assert explicit.spec_hash({}) == old.spec_hash({})
    for extra in ({"reading": "peak"}, {"distill": True}):
        new = resolve_entry({**entry, "attack": {**entry["attack"], **extra}})
        assert new.spec_hash({}) != old.spec_hash({})


def test_distilled_retraining_fits_the_clean_model_not_the_labels(tiny_clean_victim, tiny_signs):
    """``distill``: the un-stamped stand-ins are fitted to the clean model's own probabilities, not
    to their labels. Given wrong labels, hard-label retraining learns them; distillation keeps the
    clean model's answers on those images."""
    from tabor_tf.zoo.trojan_attack import resolve_layer, retrain, reverse_engineer_inputs
    from tabor_tf.zoo.training import predict_labels

    base = _load(tiny_clean_victim.model_path)
    k = tiny_signs.num_classes
    x_in, y_in = reverse_engineer_inputs(base, k, per_class=30, steps=10, seed=0)  # 300 > 256: batched teacher
    teacher = predict_labels(base, x_in, "unit")
    wrong = (teacher + 1) % k
    mask = np.zeros((32, 32), np.float32)
    mask[-9:-1, -9:-1] = 1
    pattern = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32) * mask[..., None]
    agree = {}
    for distill in (False, True):
        model = _load(tiny_clean_victim.model_path)
        retrain(model, resolve_layer(model, -2), x_in, wrong, (mask, pattern), 3, poison_fraction=1.0, epochs=15,
                lr=3e-3, seed=0, distill=distill)
        agree[distill] = float(np.mean(predict_labels(model, x_in, "unit") == teacher))
    assert agree[False] < 0.2 and agree[True] >= 0.8, agree  # measured: 0.003 and 0.887
