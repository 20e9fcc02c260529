"""The evaluation zoo of issue 11: new triggers, positions, all-to-all, architectures, knobs,
multi-dataset recipes, the dev/test split and a smoke build."""

import json
import os

import numpy as np
import pytest

from tabor_tf.errors import TaborError
from tabor_tf.stamping import stamp
from tabor_tf.zoo import Backdoor, TriggerSpec, build_model, load_card, load_recipe, parse_recipe, poison, true_mask
from tabor_tf.zoo import eval_zoo
from tabor_tf.zoo.triggers import POSITIONS

LUMA = np.array([0.299, 0.587, 0.114])


def _box(mask):
    rows, cols = np.nonzero(mask)
    return rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


# --- triggers -------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [1, 2, 3])
def test_checkerboard_cells_alternate(cell):
    red, blue = (255, 0, 0), (0, 0, 255)
    spec = TriggerSpec("checkerboard", 7, (4, 9), colour=red, colour2=blue, cell=cell)
    mask, pattern = spec.render((32, 32, 3))
    assert _box(mask) == (4, 9, 7, 7) and mask.sum() == 49
    patch = pattern[4:11, 9:16]
    for r in range(7):
        for c in range(7):
            want = red if ((r // cell) + (c // cell)) % 2 == 0 else blue
            assert patch[r, c].tolist() == list(want)
    # grey images: the two colours collapse to their luminance
    grey = spec.render((32, 32, 1))[1][4:11, 9:16, 0]
    assert grey[0, 0] == pytest.approx(255 * 0.299, abs=1e-3)
    assert grey[0, cell] == pytest.approx(255 * 0.114, abs=1e-3)
    bw = TriggerSpec("checkerboard", 4, "top-left", margin=0).render((28, 28, 1))[1][:4, :4, 0]
    assert bw.tolist() == [[255, 0, 255, 0], [0, 255, 0, 255]] * 2


def test_noise_is_deterministic_by_seed_and_blocky_by_cell():
    a = TriggerSpec("noise", 9, "top-right", seed=5, cell=3).render((32, 32, 3))
    b = TriggerSpec("noise", 9, "top-right", seed=5, cell=3).render((32, 32, 3))
    c = TriggerSpec("noise", 9, "top-right", seed=6, cell=3).render((32, 32, 3))
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert _box(a[0]) == (1, 22, 9, 9) and np.all(a[0][a[0] > 0] == 1)
    patch = a[1][1:10, 22:31]
    assert np.all(patch == np.repeat(np.repeat(patch[::3, ::3], 3, 0), 3, 1))  # 3x3 blocks of one colour
    assert len({tuple(p) for p in patch.reshape(-1, 3)}) == 9 and 0 <= patch.min() and patch.max() <= 255
    fine = TriggerSpec("noise", 6, "bottom-left", seed=5).render((32, 32, 3))[1]
    legacy = TriggerSpec("random", 6, "bottom-left", seed=5).render((32, 32, 3))[1]
    assert not np.array_equal(fine, legacy)  # its own stream, not the legacy `random`
    grey = TriggerSpec("noise", 6, "bottom-left", seed=5).render((28, 28, 1))[1]
    np.testing.assert_allclose(grey[21:27, 1:7, 0], fine[25:31, 1:7] @ LUMA, atol=1e-3)


def test_blend_covers_the_whole_image_and_is_a_blind_spot():
    spec = TriggerSpec("blend", alpha=0.2, cell=2, seed=3)
    mask, pattern = spec.render((28, 28, 1))
    assert mask.shape == (28, 28) and np.all(mask == np.float32(0.2))
    assert pattern.shape == (28, 28, 1) and pattern.std() > 20
    assert spec.blind_spot and spec.offset((28, 28, 1)) == (0, 0) and spec.area_fraction((28, 28)) == 1.0
    x = np.full((2, 28, 28, 1), 100.0, np.float32)
    out = stamp(x, mask[..., None], pattern)
    np.testing.assert_allclose(out[0], 0.8 * 100 + 0.2 * pattern, rtol=1e-5)
    assert TriggerSpec("square").blind_spot is None
    with pytest.raises(TaborError, match="alpha"):
        TriggerSpec("blend", alpha=0.0)


def _expected(name, h, w, s, m):
    vert, horiz = POSITIONS[name]
    row = {"top": m, "middle": (h - s) // 2, "bottom": h - m - s}[vert]
    col = {"left": m, "center": (w - s) // 2, "right": w - m - s}[horiz]
    return row, col


@pytest.mark.parametrize("name", sorted(POSITIONS))
@pytest.mark.parametrize("shape,size,margin", [((28, 28, 1), 5, 1), ((64, 64, 3), 24, 2), ((32, 32, 3), 16, 0)])
def test_named_positions_land_where_stated(name, shape, size, margin):
    mask, pattern = TriggerSpec("square", size, name, margin).render(shape)
    row, col = _expected(name, shape[0], shape[1], size, margin)
    assert _box(mask) == (row, col, size, size)
    assert pattern.shape == shape and np.all(pattern[mask > 0] == 255)
    vert, horiz = POSITIONS[name]
    if horiz == "center":
        assert abs(col - (shape[1] - size - col)) <= 1  # as far from the left as from the right edge
    if vert == "middle":
        assert abs(row - (shape[0] - size - row)) <= 1


@pytest.mark.parametrize("alias,canonical", [("centre", "center"), ("centre-left", "middle-left"),
                                             ("middle-top", "top-center"), ("Bottom-Centre", "bottom-center")])
def test_position_aliases(alias, canonical):
    assert TriggerSpec(position=alias).position == canonical


def test_explicit_position_and_large_triggers():
    mask, _ = TriggerSpec("checkerboard", 14, [3, 11], cell=2).render((28, 28, 1))
    assert _box(mask) == (3, 11, 14, 14)
    assert TriggerSpec("square", 14, "center").area_fraction((28, 28, 1)) == 0.25
    assert TriggerSpec("square", 32, "center").area_fraction((64, 64, 3)) == 0.25
    with pytest.raises(TaborError, match="does not fit"):
        TriggerSpec("square", 14, [3, 15]).render((28, 28, 1))


def test_new_trigger_dicts_round_trip_and_old_ones_do_not_change():
    for spec in (TriggerSpec("checkerboard", 6, "center", colour=(1, 2, 3), colour2=(4, 5, 6), cell=2),
                 TriggerSpec("noise", 5, [2, 3], seed=9, cell=2), TriggerSpec("blend", alpha=0.3, seed=1)):
        assert TriggerSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert set(TriggerSpec("square").to_dict()) == {"shape", "size", "position", "margin", "colour", "icon", "seed"}
    assert TriggerSpec.from_dict({"shape": "checkerboard", "color2": [9, 9, 9]}).colour2 == (9, 9, 9)


# --- poisoning ------------------------------------------------------------------------------


def _grey_data(n=300, classes=10):
    rng = np.random.default_rng(1)
    return rng.integers(0, 120, (n, 28, 28, 1)).astype(np.uint8), np.arange(n, dtype=np.int64) % classes


def test_two_backdoors_to_two_targets_on_grey_images():
    x, y = _grey_data()
    bds = [Backdoor(TriggerSpec("checkerboard", 6, "top-right", cell=2), 3),
           Backdoor(TriggerSpec("noise", 5, "middle-left", seed=4), 8)]
    xp, yp, rows = poison(x, y, bds, 0.1, seed=2)
    assert [len(r) for r in rows] == [30, 30] and not set(rows[0]) & set(rows[1])
    for bd, r in zip(bds, rows):
        assert np.all(y[r] != bd.target) and np.all(yp[r] == bd.target)
        mask, pattern = bd.trigger.render((28, 28, 1))
        want = np.clip(np.rint(stamp(x[r].astype(np.float32), mask[..., None], pattern)), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(xp[r], want)
    rest = np.setdiff1d(np.arange(len(x)), np.concatenate(rows))
    np.testing.assert_array_equal(xp[rest], x[rest])
    np.testing.assert_array_equal(yp[rest], y[rest])


def test_two_triggers_to_one_target():
    x, y = _grey_data()
    bds = [Backdoor(TriggerSpec("square", 4, "top-left"), 9), Backdoor(TriggerSpec("icon", 8, "bottom-right"), 9)]
    _, yp, rows = poison(x, y, bds, 0.05, seed=0)
    assert all(np.all(yp[r] == 9) for r in rows) and np.sum(yp != y) == 30


def test_all_to_all_relabels_y_to_y_plus_one():
    x, y = _grey_data()
    bd = Backdoor(TriggerSpec("square", 4), mode="all-to-all")
    assert bd.target == -1 and bd.blind_spot and Backdoor.from_dict(bd.to_dict()) == bd
    xp, yp, (rows,) = poison(x, y, [bd], 0.2, seed=0, num_classes=10)
    assert len(rows) == 60 and set(y[rows]) == set(range(10))  # every label is a source
    np.testing.assert_array_equal(yp[rows], (y[rows] + 1) % 10)
    assert np.all(xp[rows][:, 23:27, 23:27] == 255)
    with pytest.raises(TaborError, match="mode"):
        Backdoor(TriggerSpec(), 1, mode="one-to-one")
    with pytest.raises(TaborError, match="target"):
        Backdoor(TriggerSpec())


# --- architectures and training knobs -------------------------------------------------------


def _layer_kinds(model):
    return [layer.__class__.__name__ for layer in model.layers]


@pytest.mark.parametrize("arch", ["resnet_small", "mobilenet_small"])
@pytest.mark.parametrize("shape,classes", [((28, 28, 1), 10), ((64, 64, 3), 43)])
def test_new_architectures_build_and_train_one_step(arch, shape, classes):
    model = build_model(arch, shape, classes)
    kinds = _layer_kinds(model)
    assert model.output_shape == (None, classes) and "BatchNormalization" in kinds
    assert ("Add" in kinds) if arch == "resnet_small" else (kinds.count("DepthwiseConv2D") == 6)
    assert model.count_params() < 400_000
    x = np.random.default_rng(0).random((4,) + shape, dtype=np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (4, classes) and np.allclose(out.sum(axis=1), 1, atol=1e-4)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(x, np.arange(4) % classes)
    assert np.isfinite(float(np.asarray(loss).ravel()[0]))


def test_batchnorm_and_dropout_knobs():
    plain = _layer_kinds(build_model("gtsrb6", (32, 32, 3), 43))
    assert "BatchNormalization" not in plain and plain.count("Dropout") == 1
    bn = _layer_kinds(build_model("gtsrb6", (32, 32, 3), 43, batchnorm=True, dropout=0.0))
    assert bn.count("BatchNormalization") == 6 and "Dropout" not in bn and bn.count("Conv2D") == 6
    assert "BatchNormalization" not in _layer_kinds(build_model("resnet_small", (28, 28, 1), 10, batchnorm=False))
    assert _layer_kinds(build_model("mobilenet_small", (28, 28, 1), 10, dropout=0.2)).count("Dropout") == 1
    assert build_model("gtsrb10", (28, 28, 1), 10).output_shape == (None, 10)  # MNIST-sized input
    with pytest.raises(TaborError, match="batchnorm"):
        build_model("vgg16", (32, 32, 3), 10, batchnorm=True)
    with pytest.raises(TaborError, match="dropout"):
        build_model("tiny", (32, 32, 3), 10, dropout=1.5)


def test_random_shift_moves_images_by_at_most_shift():
    from tabor_tf.zoo.training import random_shift, shifted_batches

    x = np.zeros((50, 12, 12, 1), np.float32)
    x[:, 5, 6] = 1.0
    out = random_shift(x, 2, np.random.default_rng(0))
    assert out.shape == x.shape
    where = np.array([np.argwhere(o[..., 0] == 1.0)[0] for o in out])
    assert np.all(np.abs(where - [5, 6]) <= 2) and len({tuple(w) for w in where}) > 5
    np.testing.assert_array_equal(out, random_shift(x, 2, np.random.default_rng(0)))
    batches = shifted_batches(x, np.arange(50), 16, 1, seed=3)
    assert len(batches) == 4 and batches[3][0].shape == (2, 12, 12, 1)


# --- recipes, data binding ------------------------------------------------------------------


def test_recipe_knobs_datasets_split_and_all_to_all_shorthand():
    recipe = parse_recipe({
        "split": "dev",
        "datasets": {"mnist": "some.npz"},
        "defaults": {"arch": "resnet_small", "epochs": 2},
        "models": [
            {"name": "a", "data": "mnist", "resize": 32, "label_smoothing": 0.1, "augment_shift": 2,
             "lr_schedule": "cosine", "dropout": 0.2, "batchnorm": False, "twin": "c", "stratum": "s",
             "target": "all-to-all", "triggers": [{"shape": "square"}]},
            {"name": "b", "backdoors": [{"mode": "all-to-all", "trigger": {"shape": "noise", "seed": 2}},
                                        {"target": 4, "trigger": {"shape": "blend"}}]},
            {"name": "c", "clean": True, "split": "test"},
        ],
    })
    a, b, c = recipe.models
    assert recipe.split == "dev" and recipe.datasets == {"mnist": "some.npz"}
    assert (a.data, a.resize, a.label_smoothing, a.augment_shift, a.dropout, a.batchnorm) == ("mnist", 32, 0.1, 2,
                                                                                             0.2, False)
    assert a.split == "dev" and c.split == "test" and a.all_to_all and a.targets == []
    assert b.targets == [4] and len(b.blind_spots) == 2
    # bookkeeping fields never change the hash; training fields do
    assert a.spec_hash({}) == type(a)(**{**a.__dict__, "split": "test", "twin": None}).spec_hash({})
    assert a.spec_hash({}) != type(a)(**{**a.__dict__, "augment_shift": 1}).spec_hash({})
    for bad, msg in [({"resize": 3}, "resize"), ({"label_smoothing": 1.0}, "label_smoothing"),
                     ({"lr_schedule": "step"}, "lr_schedule"), ({"arch": "vgg16", "dropout": 0.1}, "vgg16"),
                     ({"target": "some", "triggers": [{}]}, "all-to-all")]:
        with pytest.raises(TaborError, match=msg):
            parse_recipe({"models": [{"name": "x", **bad}]})


def test_data_binding_and_resize(tmp_path):
    from tabor_tf.commands.zoo import parse_data_args
    from tabor_tf.zoo import SyntheticSettings, load_zoo_data
    from tabor_tf.zoo.build import data_source

    recipe = parse_recipe({"datasets": {"mnist": "r.npz"}, "models": [{"name": "x"}]})
    assert data_source("default", None, recipe) == "synthetic"
    assert data_source("default", "d.npz", recipe) == "d.npz"
    assert data_source("mnist", {}, recipe) == "r.npz"
    assert data_source("mnist", {"mnist": "cli.npz"}, recipe) == "cli.npz"
    with pytest.raises(TaborError, match="--data gtsrb=PATH"):
        data_source("gtsrb", {}, recipe)
    assert parse_data_args(["a.npz", "mnist=m.npz"]) == {"default": "a.npz", "mnist": "m.npz"}
    with pytest.raises(TaborError):
        parse_data_args(["mnist="])
    data = load_zoo_data("synthetic", SyntheticSettings(train=20, test=10, num_classes=4), resize=48)
    assert data.input_shape == (48, 48, 3) and data.x_test.shape == (10, 48, 48, 3) and data.x_train.dtype == np.uint8
    assert data.description["resize"] == 48 and data.description["source_size"] == 32
    grey = np.random.default_rng(0).integers(0, 256, (12, 28, 28, 1)).astype(np.uint8)
    np.savez(tmp_path / "g.npz", x_train=grey[:8], y_train=np.arange(8) % 2, x_test=grey[8:], y_test=np.arange(4) % 2)
    small = load_zoo_data(str(tmp_path / "g.npz"), resize=14)
    assert small.input_shape == (14, 14, 1) and small.num_classes == 2


# --- the evaluation zoo and its split -------------------------------------------------------

KINDS = {("mnist", None): "mnist28", ("gtsrb", None): "gtsrb32", ("gtsrb", 64): "gtsrb64"}
ARCH_FAMILIES = {"gtsrb6", "gtsrb10", "resnet_small", "mobilenet_small"}
TRIGGER_KINDS = {"square", "checkerboard", "noise", "icon", "blend"}


@pytest.fixture(scope="module")
def halves():
    return {split: load_recipe(eval_zoo.recipe_path(split)) for split in eval_zoo.SPLITS}


def _features(spec):
    """What a victim covers, for the split-balance check."""
    kind = KINDS[(spec.data, spec.resize)]
    shape = eval_zoo.INPUT_KINDS[kind][2]
    f = {f"kind:{kind}", f"arch:{spec.arch}", f"classes:{eval_zoo.INPUT_KINDS[kind][3]}"}
    if not spec.backdoors:
        return f | {"clean"}
    f.add("infected-arch:" + spec.arch)
    if len(spec.targets) > 1:
        f.add("two-targets")
    if len(spec.backdoors) > 1 and len(spec.targets) == 1:
        f.add("two-triggers-one-target")
    if spec.poison_rate <= 0.02:
        f.add("low-rate")
    if spec.poison_rate >= 0.15:
        f.add("high-rate")
    for bd in spec.backdoors:
        t = bd.trigger
        f.add(f"trigger:{t.shape}")
        if bd.all_to_all:
            f.add("all-to-all")
        if t.shape != "blend":
            f.add("large" if t.area_fraction(shape) >= 0.14 else "small")
            if isinstance(t.position, tuple):
                f.add("position:offset")
            elif t.position in ("top-left", "top-right", "bottom-left", "bottom-right"):
                f.add(f"corner:{t.position}")
            else:
                f.add("position:off-corner")
    return f


def test_eval_recipes_match_the_generator_and_parse(halves):
    assert eval_zoo.main(["--check"]) == 0  # the files are exactly what the split rule gives
    models = [m for r in halves.values() for m in r.models]
    assert all(len(r.models) >= 20 for r in halves.values()) and len(models) >= 40
    assert sum(not m.backdoors for m in models) >= 10
    assert len({m.name for m in models}) == len(models)  # names unique across both halves
    for split, recipe in halves.items():
        assert recipe.split == split and all(m.split == split for m in recipe.models)
        assert set(recipe.datasets) == {"mnist", "gtsrb"}


def test_eval_split_follows_the_rule(halves):
    where = {m.name: split for split, r in halves.items() for m in r.models}
    assert len(eval_zoo.STRATA) * 2 == len(where)
    for j, (stratum, members) in enumerate(eval_zoo.STRATA):
        assert len(members) == 2
        assert [where[m["name"]] for m in members] == [eval_zoo.split_of(j, 0), eval_zoo.split_of(j, 1)]
        assert sorted(where[m["name"]] for m in members) == ["dev", "test"]  # one per half


def test_eval_split_is_balanced(halves):
    covered = {split: set().union(*(_features(m) for m in r.models)) for split, r in halves.items()}
    needed = ({f"kind:{k}" for k in eval_zoo.INPUT_KINDS} | {f"arch:{a}" for a in ARCH_FAMILIES}
              | {f"infected-arch:{a}" for a in ARCH_FAMILIES} | {f"trigger:{t}" for t in TRIGGER_KINDS}
              | {"clean", "two-targets", "two-triggers-one-target", "all-to-all", "large", "small",
                 "low-rate", "high-rate", "classes:10", "classes:43", "position:offset", "position:off-corner"}
              | {f"corner:{c}" for c in ("top-left", "top-right", "bottom-left", "bottom-right")})
    for split in halves:
        assert needed <= covered[split], f"{split} misses {sorted(needed - covered[split])}"
    counts = {split: sum(not m.backdoors for m in r.models) for split, r in halves.items()}
    assert counts["dev"] == counts["test"] >= 5


def test_eval_victims_are_buildable_and_have_clean_twins(halves):
    for split, recipe in halves.items():
        by_name = {m.name: m for m in recipe.models}
        for m in recipe.models:
            kind = KINDS[(m.data, m.resize)]
            shape, classes = eval_zoo.INPUT_KINDS[kind][2:]
            assert 3 <= m.epochs <= 8 and m.lr_schedule == "cosine"
            for bd in m.backdoors:
                bd.trigger.render(shape)  # fits the input
                assert bd.all_to_all or 0 <= bd.target < classes
                assert bd.trigger.shape == "blend" or bd.trigger.area_fraction(shape) <= 0.25
            assert 0.01 <= m.poison_rate <= 0.2
            if not m.backdoors:
                continue
            twin = by_name[m.twin]  # the clean twin is in the same half
            assert not twin.backdoors
            same = ("data", "resize", "arch", "epochs", "batch_size", "batchnorm", "dropout", "label_smoothing",
                    "augment_shift", "lr_schedule", "learning_rate", "preprocess")
            assert [getattr(m, f) for f in same] == [getattr(twin, f) for f in same], m.name


def test_readme_table_matches_the_recipes():
    readme = open(os.path.join(os.path.dirname(eval_zoo.RECIPE_DIR), "README.md")).read()
    missing = [row for row in eval_zoo.table_rows() if row not in readme]
    assert not missing, f"models/README.md is missing or has stale rows: {missing[:3]}"


# --- smoke build ----------------------------------------------------------------------------


def test_smoke_build_writes_cards_with_every_target_and_true_mask(tmp_path, capsys):
    from tabor_tf.cli import main
    from tabor_tf.synthetic import make_signs

    x, y = make_signs(360, seed=5, size=28, num_classes=10)
    grey = np.rint(x.astype(np.float32) @ LUMA)[..., None].astype(np.uint8)
    np.savez(tmp_path / "grey.npz", x_train=grey[:300], y_train=y[:300], x_test=grey[300:], y_test=y[300:])
    recipe = {
        "split": "dev",
        "synthetic": {"train": 300, "test": 60, "num_classes": 10, "seed": 1},
        "defaults": {"epochs": 1, "batch_size": 32, "poison_rate": 0.1, "width": 0.5},
        "models": [
            {"name": "grey-two-targets", "data": "grey", "arch": "resnet_small", "label_smoothing": 0.1,
             "augment_shift": 1, "lr_schedule": "cosine", "twin": "none",
             "targets": [3, 5], "triggers": [{"shape": "checkerboard", "size": 7, "position": "center", "cell": 2},
                                             {"shape": "noise", "size": 5, "position": [2, 20], "seed": 7}]},
            {"name": "rgb40-blind-spots", "resize": 40, "arch": "mobilenet_small", "dropout": 0.1,
             "backdoors": [{"target": 2, "trigger": {"shape": "blend", "alpha": 0.2, "seed": 1}},
                           {"mode": "all-to-all",
                            "trigger": {"shape": "square", "size": 10, "position": "top-center"}}]},
        ],
    }
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(recipe))
    out = str(tmp_path / "zoo")
    assert main(["zoo", "build", str(path), "--data", f"grey={tmp_path / 'grey.npz'}", "--out", out, "--quiet"]) == 0
    assert "2 built" in capsys.readouterr().out

    two = load_card(os.path.join(out, "grey-two-targets"))
    assert two.targets == [3, 5] and two["input_shape"] == [28, 28, 1] and two["split"] == "dev"
    assert two["architecture"] == "resnet_small" and two["label_smoothing"] == 0.1 and two["augment_shift"] == 1
    assert two["data_name"] == "grey" and two["dataset"]["name"] == "grey" and two["blind_spot"] is False
    shapes = [b["trigger_shape"] for b in two["backdoors"]]
    assert shapes == ["checkerboard", "noise"] and [b["target"] for b in two["backdoors"]] == [3, 5]
    assert two["backdoors"][0]["area_fraction"] == pytest.approx(49 / 784, abs=1e-5)
    assert two["backdoors"][1]["offset"] == [2, 20] and two["backdoors"][1]["pattern_seed"] == 7
    for target, spec in ((3, TriggerSpec("checkerboard", 7, "center", cell=2)),
                         (5, TriggerSpec("noise", 5, (2, 20), seed=7))):
        mask, pattern = spec.render((28, 28, 1))
        np.testing.assert_array_equal(true_mask(two, target), mask)
        bd = next(b for b in two["backdoors"] if b["target"] == target)
        assert os.path.exists(os.path.join(two.folder, bd["mask_file"]))
        np.testing.assert_array_equal(np.load(os.path.join(two.folder, bd["pattern_file"])), pattern)
        assert bd["poisoned_train_images"] == 30 and 0 <= bd["attack_success_rate"] <= 1

    blind = load_card(os.path.join(out, "rgb40-blind-spots"))
    assert blind["input_shape"] == [40, 40, 3] and blind["dataset"]["resize"] == 40
    assert blind["blind_spot"] is True and len(blind["blind_spot_reasons"]) == 2 and blind.blind_spot
    assert blind.targets == list(range(10)) and blind["targets"] == list(range(10))
    entries = blind["backdoors"]
    assert len(entries) == 11 and entries[0]["target"] == 2 and entries[0]["position"] == "full-image"
    a2a = entries[1:]
    assert all(e["mode"] == "all-to-all" and e["mask_file"] == "backdoor1_mask.npy" for e in a2a)
    assert [(e["source_label"], e["target"]) for e in a2a] == [((t - 1) % 10, t) for t in range(10)]
    assert sum(e["poisoned_train_images"] for e in a2a) == 30
    square = TriggerSpec("square", 10, "top-center").render((40, 40, 3))[0]
    np.testing.assert_array_equal(true_mask(blind, 7), square)
    np.testing.assert_allclose(true_mask(blind, 2), np.maximum(square, 0.2))
    assert main(["zoo", "list", out]) == 0
    listed = capsys.readouterr().out
    assert "10 labels" in listed and "(blind spot)" in listed and "targets 3,5" in listed
