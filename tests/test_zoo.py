"""Victim zoo: triggers, poisoning, cards, recipes, building, the zoo command and the fixtures."""

import json
import os

import numpy as np
import pytest

from tabor_tf.errors import TaborError
from tabor_tf.stamping import stamp
from tabor_tf.zoo import (
    Backdoor,
    TriggerSpec,
    VictimSpec,
    apply_trigger,
    build_model,
    load_card,
    load_recipe,
    parse_recipe,
    poison,
    true_mask,
)
from tabor_tf.zoo.card import save_trigger_files, write_card
from tabor_tf.zoo.triggers import DEFAULT_ICON, load_icon

# --- triggers -------------------------------------------------------------------------------

CORNER_BOX = {  # (row, col) of the top-left pixel for a size-s trigger, margin m, 32x32 image
    "top-left": lambda s, m: (m, m),
    "top-right": lambda s, m: (m, 32 - m - s),
    "bottom-left": lambda s, m: (32 - m - s, m),
    "bottom-right": lambda s, m: (32 - m - s, 32 - m - s),
}


@pytest.mark.parametrize("shape", ["square", "icon", "random"])
@pytest.mark.parametrize("corner", sorted(CORNER_BOX))
@pytest.mark.parametrize("size,margin", [(3, 0), (4, 1), (9, 2)])
def test_render_places_trigger_in_corner(shape, corner, size, margin):
    mask, pattern = TriggerSpec(shape, size, corner, margin).render((32, 32, 3))
    assert mask.shape == (32, 32) and mask.dtype == np.float32
    assert pattern.shape == (32, 32, 3) and pattern.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and 0.0 <= pattern.min() and pattern.max() <= 255.0
    row, col = CORNER_BOX[corner](size, margin)
    box = np.zeros((32, 32), bool)
    box[row : row + size, col : col + size] = True
    assert np.all(mask[~box] == 0) and np.all(pattern[~box] == 0)
    assert mask[box].max() == pytest.approx(1.0, abs=0.02)
    if shape != "icon":  # squares and random patterns fill their whole box
        assert np.all(mask[box] == 1.0)


def test_square_colour_and_explicit_offset():
    mask, pattern = TriggerSpec("square", 5, (10, 3), colour=(255, 0, 30)).render((32, 32, 3))
    assert np.argwhere(mask > 0).min(axis=0).tolist() == [10, 3]
    assert np.argwhere(mask > 0).max(axis=0).tolist() == [14, 7]
    np.testing.assert_array_equal(pattern[12, 5], [255, 0, 30])
    assert mask.sum() == 25


def test_icon_uses_alpha_and_colours_of_the_logo():
    mask, pattern = TriggerSpec("icon", 16, "top-left", 0).render((32, 32, 3))
    box = mask[:16, :16]
    assert 0 < box.mean() < 1  # transparent corners, opaque centre
    assert box[0, 0] < 0.2 and box[8, 8] > 0.9
    colours = pattern[:16, :16][box > 0.9]
    assert np.any(colours[:, 2] > colours[:, 0] + 60)  # blue globe
    assert np.any(colours[:, 0] > colours[:, 2] + 60)  # orange fox
    m, rgb = load_icon(DEFAULT_ICON, 16)
    np.testing.assert_allclose(m, box)


def test_random_pattern_is_seeded_and_grey_images_work():
    a = TriggerSpec("random", 6, "top-right", seed=1).render((32, 32, 3))[1]
    b = TriggerSpec("random", 6, "top-right", seed=1).render((32, 32, 3))[1]
    c = TriggerSpec("random", 6, "top-right", seed=2).render((32, 32, 3))[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    mask, pattern = TriggerSpec("square", 4).render((28, 28, 1))
    assert pattern.shape == (28, 28, 1) and pattern[25, 25, 0] == pytest.approx(255.0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(shape="star"), dict(size=0), dict(position="middle"), dict(colour=(300, 0, 0)), dict(position=(1, 2, 3))],
)
def test_bad_trigger_specs(kwargs):
    with pytest.raises(TaborError):
        TriggerSpec(**kwargs)


def test_trigger_that_does_not_fit():
    with pytest.raises(TaborError, match="does not fit"):
        TriggerSpec("square", 8, (28, 0)).render((32, 32, 3))
    with pytest.raises(TaborError, match="cannot read trigger icon"):
        TriggerSpec("icon", 4, icon="/nonexistent.png").render((32, 32, 3))


def test_trigger_dict_round_trip():
    spec = TriggerSpec("square", 5, (3, 4), colour=(1, 2, 3))
    again = TriggerSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert TriggerSpec.from_dict({"shape": "square", "color": [9, 9, 9]}).colour == (9, 9, 9)
    with pytest.raises(TaborError, match="unknown trigger field"):
        TriggerSpec.from_dict({"shape": "square", "sise": 4})


# --- poisoning ------------------------------------------------------------------------------


def _toy_data(n=200, classes=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 200, (n, 32, 32, 3)).astype(np.uint8), np.arange(n, dtype=np.int64) % classes


def test_poison_stamps_the_right_fraction_with_the_target():
    x, y = _toy_data()
    x_before, y_before = x.copy(), y.copy()
    square = TriggerSpec("square", 4, "bottom-right")
    xp, yp, (rows,) = poison(x, y, [Backdoor(square, 3)], 0.1, seed=0)
    np.testing.assert_array_equal(x, x_before)  # inputs untouched
    np.testing.assert_array_equal(y, y_before)
    assert len(rows) == 20 and len(np.unique(rows)) == 20
    assert np.all(y[rows] != 3) and np.all(yp[rows] == 3)
    assert np.all(xp[rows][:, 27:31, 27:31] == 255)
    others = np.setdiff1d(np.arange(len(x)), rows)
    np.testing.assert_array_equal(xp[others], x[others])
    np.testing.assert_array_equal(yp[others], y[others])
    assert np.sum(yp != y) == 20


def test_poison_two_backdoors_use_disjoint_rows():
    x, y = _toy_data()
    bds = [Backdoor(TriggerSpec("square", 4, "bottom-right"), 1), Backdoor(TriggerSpec("icon", 6, "top-left"), 4)]
    xp, yp, rows = poison(x, y, bds, 0.15, seed=1)
    assert [len(r) for r in rows] == [30, 30]
    assert not set(rows[0]) & set(rows[1])
    assert np.all(yp[rows[0]] == 1) and np.all(yp[rows[1]] == 4)
    mask, pattern = bds[1].trigger.render((32, 32, 3))
    expected = np.clip(np.rint(stamp(x[rows[1]].astype(np.float32), mask[..., None], pattern)), 0, 255)
    np.testing.assert_array_equal(xp[rows[1]], expected.astype(np.uint8))


def test_poison_rejects_bad_rates():
    x, y = _toy_data()
    with pytest.raises(TaborError):
        poison(x, y, [Backdoor(TriggerSpec(), 0)], 0.0)
    with pytest.raises(TaborError):
        poison(x, y, [Backdoor(TriggerSpec(), 0), Backdoor(TriggerSpec(), 1)], 0.6)


def test_apply_trigger_keeps_dtype():
    x, _ = _toy_data(4)
    out = apply_trigger(x.astype(np.float32), TriggerSpec("square", 2, (0, 0), 0, colour=(7, 8, 9)))
    assert out.dtype == np.float32 and out[0, 1, 1].tolist() == [7, 8, 9]


# --- cards ----------------------------------------------------------------------------------


def test_card_round_trip(tmp_path):
    specs = [TriggerSpec("square", 4, "bottom-right"), TriggerSpec("icon", 6, "top-left")]
    backdoors = []
    for i, (spec, target) in enumerate(zip(specs, (3, 5))):
        mask, pattern = spec.render((32, 32, 3))
        files = save_trigger_files(str(tmp_path), i, mask, pattern)
        backdoors.append({"target": target, "trigger": spec.to_dict(), **files, "attack_success_rate": 0.99})
    write_card(str(tmp_path), {"name": "x", "model_file": "model.h5", "preprocessing": "unit",
                               "num_classes": 10, "backdoors": backdoors})
    for name in ("backdoor0_mask.png", "backdoor1_pattern.png", "backdoor1_mask.npy"):
        assert (tmp_path / name).exists()
    card = load_card(str(tmp_path))  # the folder works as well as card.json
    assert card["schema_version"] == 1 and card.targets == [3, 5] and card.num_classes == 10
    assert card.model_path == os.path.join(str(tmp_path), "model.h5")
    np.testing.assert_array_equal(card.masks[0], specs[0].render((32, 32, 3))[0])
    np.testing.assert_array_equal(card.patterns[1], specs[1].render((32, 32, 3))[1])
    union = true_mask(card)
    assert union[28, 28] == 1.0 and union[3, 3] > 0.9 and union[16, 16] == 0
    only5 = true_mask(card, target=5)
    assert only5[28, 28] == 0 and only5[3, 3] > 0.9
    assert true_mask(card, target=7) is None


def test_load_card_errors(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(TaborError, match="not a tabor-tf victim card"):
        load_card(str(tmp_path / "card.json"))
    with pytest.raises(TaborError, match="cannot read victim card"):
        load_card(str(tmp_path / "missing.json"))


# --- recipes --------------------------------------------------------------------------------


def test_recipe_shorthands_and_defaults():
    recipe = parse_recipe({
        "defaults": {"arch": "tiny", "epochs": 3, "target": 2, "trigger": {"size": 5, "margin": 0}},
        "models": [
            {"name": "one", "triggers": [{"shape": "square", "position": "top-left"}]},
            {"name": "two-targets", "targets": [1, 4], "triggers": [{"shape": "square"}, {"shape": "icon", "size": 7}]},
            {"name": "explicit", "backdoors": [{"target": 0, "trigger": {"shape": "random", "seed": 3}}]},
            {"name": "clean", "clean": True, "epochs": 1},
        ],
    })
    one, two, explicit, clean = recipe.models
    assert one.arch == "tiny" and one.epochs == 3 and one.targets == [2]
    assert one.backdoors[0].trigger == TriggerSpec("square", 5, "top-left", 0)
    assert two.targets == [1, 4] and two.backdoors[1].trigger.size == 7
    assert explicit.backdoors[0].trigger.shape == "random" and explicit.backdoors[0].trigger.size == 5
    assert clean.backdoors == () and clean.epochs == 1
    assert recipe.select(["clean"]) == [clean]
    with pytest.raises(TaborError, match="no model named"):
        recipe.select(["nope"])


@pytest.mark.parametrize("models,message", [
    ([{"name": "a", "archh": "tiny"}], "unknown recipe field"),
    ([{"name": "a", "targets": [1], "triggers": [{}, {}]}], "1 targets but 2 triggers"),
    ([{"name": "a", "triggers": [{}]}], "need a 'target'"),
    ([{"name": "a"}, {"name": "a"}], "unique"),
    ([{"name": "a b"}], "must be letters"),
    ([{"name": "a", "arch": "lenet"}], "unknown arch"),
])
def test_recipe_errors(models, message):
    with pytest.raises(TaborError, match=message):
        parse_recipe({"models": models})


@pytest.mark.parametrize("name", ["demo.json", "gtsrb-paper.json", "gtsrb-quick.json", "gtsrb-zoo.json",
                                  "eval-dev.json", "eval-test.json"])
def test_shipped_recipes_parse(name):
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "recipes")
    recipe = load_recipe(os.path.join(root, name))
    assert len(recipe.models) >= 3
    assert any(not m.backdoors for m in recipe.models)  # every zoo has a clean reference


def test_spec_hash_changes_with_spec_and_data():
    a = VictimSpec("a", arch="tiny", backdoors=(Backdoor(TriggerSpec(), 1),))
    b = VictimSpec("a", arch="tiny", backdoors=(Backdoor(TriggerSpec(size=5), 1),))
    assert a.spec_hash({"d": 1}) == VictimSpec(**{**a.__dict__}).spec_hash({"d": 1})
    assert a.spec_hash({"d": 1}) != b.spec_hash({"d": 1})
    assert a.spec_hash({"d": 1}) != a.spec_hash({"d": 2})


# --- architectures --------------------------------------------------------------------------


def test_paper_architectures():
    m6 = build_model("gtsrb6", (32, 32, 3), 43)
    convs = [layer for layer in m6.layers if layer.__class__.__name__ == "Conv2D"]
    pools = [layer for layer in m6.layers if layer.__class__.__name__ == "MaxPooling2D"]
    assert (len(convs), len(pools)) == (6, 2)
    assert 288_000 <= m6.count_params() <= 1_000_000
    assert m6.output_shape == (None, 43) and m6.layers[-1].get_config()["activation"] == "softmax"
    m10 = build_model("gtsrb10", (32, 32, 3), 43)
    assert sum(layer.__class__.__name__ == "Conv2D" for layer in m10.layers) == 10
    assert sum(layer.__class__.__name__ == "MaxPooling2D" for layer in m10.layers) == 5
    tiny = build_model("tiny", (32, 32, 3), 10, output="logits", embed_preprocessing="unit")
    assert tiny.layers[1].name == "preprocess" and tiny.layers[-1].get_config()["activation"] == "linear"
    x = np.full((1, 32, 32, 3), 255.0, np.float32)
    assert np.asarray(tiny.layers[1](x)).max() == pytest.approx(1.0)
    with pytest.raises(TaborError, match="unknown architecture"):
        build_model("lenet", (32, 32, 3), 10)


def test_keras_applications_build_without_weights():
    vgg = build_model("vgg16", (32, 32, 3), 7)
    assert vgg.output_shape == (None, 7) and vgg.name == "vgg16"


# --- building victims -----------------------------------------------------------------------


def _tiny_recipe(tmp_path, epochs=10, train=3000, test=600):
    recipe = {
        "synthetic": {"train": train, "test": test, "num_classes": 10, "seed": 4},
        "defaults": {"arch": "tiny", "epochs": epochs, "poison_rate": 0.15, "seed": 0},
        "models": [{"name": "sq", "target": 5,
                    "triggers": [{"shape": "square", "size": 4, "position": "bottom-right"}]}],
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return str(path)


def test_zoo_build_and_list_commands(tmp_path, capsys):
    import keras

    from tabor_tf.cli import main

    recipe, out = _tiny_recipe(tmp_path), str(tmp_path / "zoo")
    assert main(["zoo", "build", recipe, "--data", "synthetic", "--out", out, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] sq: training tiny" in printed and "1 built" in printed
    card = load_card(os.path.join(out, "sq", "card.json"))
    assert card["clean_accuracy"] >= 0.9 and card["backdoors"][0]["attack_success_rate"] >= 0.95
    assert card["dataset"]["name"] == "synthetic-signs" and card["preprocessing"] == "unit"
    assert card["backdoors"][0]["offset"] == [27, 27] and card["input_shape"] == [32, 32, 3]
    assert card["backdoors"][0]["poisoned_train_images"] == 450

    # Re-measure the attack independently on freshly generated held-out images.
    from tabor_tf.synthetic import make_signs

    model = keras.models.load_model(card.model_path, compile=False)
    x, y = make_signs(300, seed=99, num_classes=10)
    keep = y != 5
    stamped = stamp(x[keep].astype(np.float32), card.masks[0][..., None], card.patterns[0])
    pred = np.argmax(model.predict(stamped / 255.0, verbose=0), axis=1)
    assert np.mean(pred == 5) >= 0.9
    clean_pred = np.argmax(model.predict(x / 255.0, verbose=0), axis=1)
    assert np.mean(clean_pred == y) >= 0.85

    # A second build skips it; a changed recipe entry rebuilds it.
    mtime = os.path.getmtime(card.model_path)
    assert main(["zoo", "build", recipe, "--data", "synthetic", "--out", out]) == 0
    assert "sq: already built, skipped" in capsys.readouterr().out
    assert os.path.getmtime(card.model_path) == mtime

    assert main(["zoo", "list", out]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("sq") and "targets 5" in line

    assert main(["zoo", "build", str(tmp_path / "missing.json"), "--out", out]) == 2
    assert main(["zoo", "list", str(tmp_path / "nowhere")]) == 2


def test_zoo_build_rebuilds_changed_spec(tmp_path):
    from tabor_tf.zoo import build_zoo

    out = str(tmp_path / "zoo")
    first = build_zoo(load_recipe(_tiny_recipe(tmp_path, epochs=1, train=300, test=50)), "synthetic", out)
    assert [r["status"] for r in first] == ["built"]
    again = build_zoo(load_recipe(_tiny_recipe(tmp_path, epochs=1, train=300, test=50)), "synthetic", out)
    assert [r["status"] for r in again] == ["skipped"]
    changed = build_zoo(load_recipe(_tiny_recipe(tmp_path, epochs=2, train=300, test=50)), "synthetic", out)
    assert [r["status"] for r in changed] == ["built"]
    assert load_card(changed[0]["card"])["epochs"] == 2


def test_zoo_build_reads_npz_data(tmp_path):
    from tabor_tf.synthetic import make_signs
    from tabor_tf.zoo import load_zoo_data

    x, y = make_signs(40, num_classes=4)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=np.eye(4)[y[30:]])
    data = load_zoo_data(str(path))
    assert data.num_classes == 4 and data.input_shape == (32, 32, 3) and data.y_test.tolist() == y[30:].tolist()
    assert len(data.description["sha256"]) == 64
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(TaborError, match="lacks x_train"):
        load_zoo_data(str(tmp_path / "bad.npz"))


# --- the shared fixtures --------------------------------------------------------------------


def _stamped_predictions(victim, mask, pattern):
    import keras

    model = keras.models.load_model(victim.model_path, compile=False)
    data = np.load(victim.data_path)
    x, y = data["x"].astype(np.float32), data["y"]
    stamped = stamp(x, mask[..., None], pattern)
    return y, np.argmax(model.predict(x / 255.0, verbose=0), 1), np.argmax(model.predict(stamped / 255.0, verbose=0), 1)


def test_fixture_infected_victim(tiny_infected_victim):
    v = tiny_infected_victim
    assert v.num_classes == 10 and v.preprocess == "unit" and v.targets == [7]
    card = load_card(v.card_path)
    y, clean, stamped = _stamped_predictions(v, card.masks[0], card.patterns[0])
    assert np.mean(clean == y) >= 0.9
    assert np.mean(stamped[y != 7] == 7) >= 0.95
    assert np.mean(stamped[y != 7] == 7) == pytest.approx(card["backdoors"][0]["attack_success_rate"], abs=0.01)


def test_fixture_two_target_victim(tiny_two_target_victim):
    v = tiny_two_target_victim
    card = load_card(v.card_path)
    assert v.targets == [2, 7] and [b["trigger_shape"] for b in card["backdoors"]] == ["square", "icon"]
    for mask, pattern, bd in zip(card.masks, card.patterns, card["backdoors"]):
        y, _, stamped = _stamped_predictions(v, mask, pattern)
        assert np.mean(stamped[y != bd["target"]] == bd["target"]) >= 0.95


def test_fixture_clean_victim(tiny_clean_victim, tiny_infected_victim):
    v = tiny_clean_victim
    assert v.targets == [] and v.card["infected"] is False and v.card["backdoors"] == []
    infected = load_card(tiny_infected_victim.card_path)
    y, clean, stamped = _stamped_predictions(v, infected.masks[0], infected.patterns[0])
    assert np.mean(clean == y) >= 0.9
    assert np.mean(stamped[y != 7] == 7) < 0.2  # the square means nothing to a clean model


# --- the shipped demo zoo -------------------------------------------------------------------

DEMO = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tabor_tf", "assets", "demo")


@pytest.mark.parametrize("name", ["square-br", "icon-tl", "clean"])
def test_shipped_demo_victims_match_their_cards(name):
    import keras

    from tabor_tf.synthetic import make_signs

    card = load_card(os.path.join(DEMO, name, "card.json"))
    assert os.path.getsize(card.model_path) < 1_500_000
    assert card["clean_accuracy"] >= 0.95 and card["num_classes"] == 43
    model = keras.models.load_model(card.model_path, compile=False)
    x, y = make_signs(430, seed=card["dataset"]["test_seed"], num_classes=43)
    x = x.astype(np.float32)
    assert np.mean(np.argmax(model.predict(x / 255.0, verbose=0), 1) == y) >= 0.93
    for mask, pattern, bd in zip(card.masks, card.patterns, card["backdoors"]):
        assert bd["attack_success_rate"] >= 0.95
        keep = y != bd["target"]
        stamped = stamp(x[keep], mask[..., None], pattern)
        assert np.mean(np.argmax(model.predict(stamped / 255.0, verbose=0), 1) == bd["target"]) >= 0.93
