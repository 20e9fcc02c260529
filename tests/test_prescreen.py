"""Label pre-screening (``prescreen.py``), the time-budget plan (``estimate.plan_for_budget``) and
the labels a scan searches when it cannot afford all (``label_plan.py``, ``scan --prescreen``)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tabor_tf import prescreen
from tabor_tf.cli import EXIT_INCONCLUSIVE, main
from tabor_tf.errors import TaborError
from tabor_tf.estimate import plan_for_budget
from tabor_tf.label_plan import LabelPlan, load_plan, make_plan, save_plan
from tabor_tf.tabor import preset


def constructed_logits(k=20, n=400, target=13, lift=1.5, seed=0):
    """Logits whose argmax is each image's class; ``target`` gets ``lift`` more on every image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 6.0
    logits[:, target] += lift
    return logits, y


@pytest.mark.parametrize("method", prescreen.METHODS)
def test_a_label_close_to_every_class_ranks_first(method):
    logits, y = constructed_logits()
    order = prescreen.ranking(logits, y, range(20), method)
    assert order[0] == 13 and sorted(order) == list(range(20))
    assert prescreen.choose(logits, y, range(20), 3, method)[0] <= 13 and 13 in prescreen.choose(logits, y, range(20), 3,
                                                                                                 method)
    flat, y0 = constructed_logits(lift=0.0)
    assert prescreen.ranking(flat, y0, range(20), method)[0] != 13 or method == "topk"


def test_only_other_classes_images_count_and_ties_go_to_the_smaller_label():
    # label 2's own images give it a huge logit; that must not make it suspicious
    y = np.array([2, 2, 2, 0, 1, 3])
    logits = np.zeros((6, 4))
    logits[y == 2, 2] = 100.0
    logits[np.arange(6), y] += 5.0
    s = prescreen.scores(logits, y, "zscore")
    assert s[2] == pytest.approx(s[0]) == pytest.approx(s[3])  # its own images would have lifted it far above
    assert prescreen.ranking(np.zeros((4, 5)), np.array([0, 1, 2, 3]), [4, 1, 3])[:2] == [1, 3]
    assert prescreen.choose(logits, y, [3, 0, 1, 2], 4) == [0, 1, 2, 3]


def test_bad_inputs_are_named():
    logits, y = constructed_logits()
    with pytest.raises(TaborError, match="logits"):
        prescreen.scores(logits[:, :1], y)
    with pytest.raises(TaborError, match="reference labels"):
        prescreen.scores(logits, y[:-1])
    bad = logits.copy()
    bad[3, 4] = np.nan
    with pytest.raises(TaborError, match="NaN"):
        prescreen.scores(bad, y)
    with pytest.raises(TaborError, match="unknown pre-screening method"):
        prescreen.scores(logits, y, "softmax")
    with pytest.raises(TaborError, match="at least one"):
        prescreen.choose(logits, y, range(20), 0)


def test_the_budget_plan_keeps_all_labels_when_they_fit_and_shrinks_in_order_otherwise():
    cfg = preset("gtsrb")  # 16 + 4 + 1 images per label-step, 50 planned steps, 256 scoring images
    per_label = 50 * 21 + 4 * 256  # image-steps one label needs in the plan
    ips = 1000.0
    roomy = plan_for_budget(3600, ips, 43, cfg, 1000)
    assert (roomy.labels, roomy.eval_images, roomy.prescreened, roomy.fits) == (43, 256, False, True)
    # room for 20 labels at 256 scoring images: 20 of 43, images unchanged
    twenty = plan_for_budget(20 * per_label / ips / 0.9 + 1.0 + 1e-3, ips, 43, cfg, 1000)
    assert (twenty.labels, twenty.eval_images, twenty.prescreened) == (20, 256, True)
    # room for fewer than 10 at 256 images: the scoring images shrink first (64), then the labels
    tight = plan_for_budget(7 * per_label / ips / 0.9 + 1.0, ips, 1000, cfg, 1000)
    assert tight.eval_images == 64 and 10 <= tight.labels < 20
    # no room at all: the outlier test's minimum of 3 labels, on 32 images, marked as not fitting
    none = plan_for_budget(2.0, ips, 1000, cfg, 1000)
    assert (none.labels, none.eval_images, none.fits) == (3, 32, False)
    assert plan_for_budget(5.0, ips, 3, cfg, 1000).labels == 3
    small_data = plan_for_budget(3600, ips, 43, cfg, 100)
    assert small_data.eval_images == 100 and small_data.labels == 43


class _LogitVictim:
    """A 'model' whose logits favour label 5 on every image (its input is ignored)."""

    num_classes = 8

    def logits(self, x):
        import tensorflow as tf

        base = tf.reduce_mean(x, axis=[1, 2, 3])[:, None] * 0.0
        return base + tf.constant([[0.0, 0.1, 0.2, 0.0, 0.1, 3.0, 0.0, 0.3]])


def _prepared(n=40):
    x = np.random.default_rng(0).uniform(0, 255, (n, 4, 4, 3)).astype(np.float32)
    return SimpleNamespace(victim=_LogitVictim(), data=SimpleNamespace(x=x, y=np.arange(n) % 8),
                           check=SimpleNamespace(mode="unit"))


def test_make_plan_prescreens_keeps_and_saves(tmp_path):
    plan = make_plan(_prepared(), range(8), keep=3)
    assert plan.labels is not None and len(plan.labels) == 3 and 5 in plan.labels
    assert "--prescreen 3" in plan.selection and plan.eval_images is None
    assert any("searching 3 of 8 labels" in line for line in plan.lines)
    assert make_plan(_prepared(), range(8), keep=8).labels is None  # keeping all is no selection
    with pytest.raises(TaborError, match="at least 3"):
        make_plan(_prepared(), range(8), keep=2)
    # a budget with no room: 3 labels, 32 scoring images, and the user is told it will be cut short
    tight = make_plan(_prepared(), range(8), budget=(2.0, 100.0), config=preset("gtsrb"))
    assert len(tight.labels) == 3 and 5 in tight.labels and tight.eval_images == 32
    assert "--time-budget fits about 3 labels" in tight.selection
    assert any("cut short" in line for line in tight.lines)
    save_plan(tmp_path, tight)
    again = load_plan(tmp_path)
    assert (again.labels, again.eval_images, again.selection) == (tight.labels, 32, tight.selection)
    assert load_plan(tmp_path / "nothing") is None
    (tmp_path / "label_plan.json").write_text("{not json")
    assert load_plan(tmp_path) is None
    assert LabelPlan().to_json() == json.dumps({"labels": None, "eval_images": None, "selection": None})


def _report(out) -> dict:
    return json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))


def test_scan_prescreen_searches_the_top_labels_and_says_the_answer_is_partial(tiny_infected_victim, tmp_path,
                                                                                capsys):
    v, out = tiny_infected_victim, tmp_path / "pre"
    args = ["scan", v.model_path, "--data", v.data_path, "--preset", "fast", "--set", "steps=60",
            "--max-samples", "200", "--preprocess", "unit", "--no-html", "--prescreen", "4", "--out", str(out)]
    rc = main(args)
    err = capsys.readouterr().err
    report = _report(out)
    assert rc == EXIT_INCONCLUSIVE and report["verdict"] == "inconclusive"
    cov = report["coverage"]
    assert cov["partial"] and cov["labels_scanned"] == 4 and "--prescreen 4" in cov["label_selection"]
    assert 7 in [e["label"] for e in report["labels"]]  # the backdoor target survives the pre-screen
    assert any("logit pre-screen" in r for r in report["inconclusive_reasons"])
    assert "plan         searching 4 of 10 labels" in err
    assert main(["scan", v.model_path, "--data", v.data_path, "--prescreen", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--prescreen must keep at least 3 labels" in capsys.readouterr().err


def test_a_time_budget_too_short_for_every_label_prescreens_and_ends_on_time(tiny_infected_victim, tmp_path,
                                                                              capsys):
    import time

    v, out, budget = tiny_infected_victim, tmp_path / "tb", 12.0
    # 190 images a step per label (batch 150 + 39 blocking + 1): 50 planned steps of all 10 labels
    # need ~100k image-steps, far more than the budget holds on a CPU
    args = ["scan", v.model_path, "--data", v.data_path, "--preset", "fast", "--set", "steps=100000",
            "--set", "min_rounds=100000", "--set", "batch_size=150", "--set", "blocking_batch_size=39",
            "--max-samples", "200", "--preprocess", "unit", "--no-html", "--time-budget", str(budget), "--out", str(out)]
    started = time.monotonic()
    rc = main(args)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    report = _report(out)
    assert elapsed <= budget + 6.0, elapsed
    scanned = report["coverage"]["labels_scanned"]
    assert rc == EXIT_INCONCLUSIVE and 3 <= scanned < 10
    assert f"--time-budget fits about {scanned} labels" in report["coverage"]["label_selection"]
    assert f"plan         searching {scanned} of 10 labels" in err
    assert report["time_limited"] and {e["stop_reason"] for e in report["labels"]} == {"time_budget"}
    chosen = sorted(e["label"] for e in report["labels"])
    # the rerun resumes the same planned labels
    main(args)
    err2 = capsys.readouterr().err
    assert f"resuming the planned search of {scanned} of 10 labels" in err2
    assert sorted(e["label"] for e in _report(out)["labels"]) == chosen
