"""Calibrated trojan probability: AUC, cross-entropy, the logistic fit, held-out measures, defaults."""

import json
from dataclasses import replace

import numpy as np
import pytest

from tabor_tf.calibration import (MIN_HELDOUT_MODELS, Calibration, decision_rule, cross_entropy, feature, fit, load_default, pairs_from_compare, sigmoid,
                                  MIN_USEFUL_AUC, probability_line, report_block, roc_auc, save)


def test_auc_and_cross_entropy():
    assert roc_auc([5, 6, 7, 0.5, 1, 1.5], [1, 1, 1, 0, 0, 0]) == 1.0
    assert roc_auc([0.5, 1, 1.5, 5, 6, 7], [1, 1, 1, 0, 0, 0]) == 0.0
    assert roc_auc([1, 1], [1, 0]) == 0.5
    assert roc_auc([1, 2], [1, 1]) is None
    assert cross_entropy([0.5, 0.5], [1, 0]) == pytest.approx(np.log(2))
    assert cross_entropy([0.99, 0.01], [1, 0]) < cross_entropy([0.6, 0.4], [1, 0])
    assert feature(np.inf) == np.inf and feature(-3.0) == 0.0


def _synthetic_pairs(seed=0, n=40, overlap=False):
    rng = np.random.default_rng(seed)
    clean = rng.uniform(0.2, 1.8, n // 2)
    infected = rng.uniform(1.2, 6.0, n // 2) if overlap else rng.uniform(2.5, 8.0, n // 2)
    return [(float(a), False) for a in clean] + [(float(a), True) for a in infected]


def test_fit_separable_set():
    pairs = _synthetic_pairs()
    ai = np.array([a for a, _ in pairs])
    y = np.array([int(t) for _, t in pairs])
    start = Calibration("tabor", a=1.0, b=-1.0)  # the optimiser's starting point
    before = cross_entropy([start.probability(a) for a in ai], y)
    cal = fit(pairs, method="tabor", source="synthetic")
    after = cross_entropy([cal.probability(a) for a in ai], y)
    assert after < before and cal.a > 0 and not cal.provisional
    assert cal.heldout_auc == 1.0 and cal.heldout_cross_entropy < 0.3
    assert cal.n_models == 40 and cal.n_infected == 20
    assert cal.probability(10.0) > 0.9 > 0.1 > cal.probability(0.3)
    assert cal.probability(np.inf) == 1.0 and cal.probability(None) is None


def test_fit_overlapping_set_is_honest_about_heldout_error():
    cal = fit(_synthetic_pairs(seed=1, overlap=True))
    assert 0.5 < cal.heldout_auc < 1.0
    assert cal.heldout_cross_entropy > fit(_synthetic_pairs(seed=1)).heldout_cross_entropy
    with pytest.raises(ValueError):
        fit([(1.0, True), (2.0, True)])
    with pytest.raises(ValueError, match="at least 2 infected and 2 clean"):
        fit([(1.0, False), (3.0, True), (4.0, True), (5.0, True)])  # one clean model is not enough
    two_each = fit([(0.5, False), (1.0, False), (3.0, True), (5.0, True)])  # 2 + 2: fits, LOO too
    assert two_each.n_models == 4 and two_each.heldout_cross_entropy is not None


def test_pairs_from_compare_and_defaults(tmp_path):
    # null anomaly index: infinite (MAD 0) when the report flags a label, else no evidence
    rows = [(4.0, True, [3]), (0.7, False, []), (None, True, [5]), (None, False, [])]
    for i, (ai, infected, flagged) in enumerate(rows):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "compare.json").write_text(json.dumps({
            "truth": {"infected": infected},
            "reports": {"tabor": {"anomaly_index": ai, "flagged_labels": flagged},
                        "neural_cleanse": {"anomaly_index": 1.0}}}))
    dirs = sorted(tmp_path.iterdir())
    assert pairs_from_compare(dirs, "tabor") == [(4.0, True), (0.7, False), (np.inf, True), (None, False)]
    default = load_default("tabor")  # the shipped file: fitted on the evaluation zoo's dev half, measured on its test half
    assert not default.provisional and default.n_models >= 4 and default.heldout_auc is not None
    assert default.probability(2.0) == pytest.approx(float(sigmoid(default.a * np.log(3.0) + default.b)))
    assert default.probability(0.5) < default.probability(2.0) < default.probability(5.0)
    assert load_default("neural_cleanse").probability(10.0) > 0.9
    block = report_block("tabor", 5.0)
    assert block["probability"] == pytest.approx(default.probability(5.0)) and block["probability"] > 0.5
    assert not block["calibration"]["provisional"] and block["calibration"]["fitted_on_zoo"]
    assert block["calibration"]["file"] == "calibration.json" and block["anomaly_index"] == 5.0
    # refitted on release-3 indices of the dev half (session 17) and measured on 11 test-half models
    # (session 18): the current rule, an AUC above the bar on enough held-out models, so it is validated
    # for models like those (issue 11: never an AUC not measured there)
    assert default.decision_rule == decision_rule("tabor") and default.heldout_kind == "test split"
    assert default.heldout_auc >= MIN_USEFUL_AUC and default.test_models >= MIN_HELDOUT_MODELS
    assert default.provisional_reasons() == []
    assert "PROVISIONAL" not in probability_line({"trojan_probability": block})
    assert f"AUC {default.heldout_auc:.2f} on {default.test_models} other test models" in probability_line(
        {"trojan_probability": block})
    few = replace(default, test_models=6)  # the same AUC on 6 models only: too few to validate it
    assert few.provisional_reasons() == [f"its held-out AUC ({default.heldout_auc:.2f}) rests on 6 models only,"
                                         f" fewer than {MIN_HELDOUT_MODELS}"]
    assert "PROVISIONAL" in probability_line({"trojan_probability": report_block("tabor", 5.0, few)})
    earlier = replace(default, decision_rule=None)  # indices of an earlier rule: provisional until refitted
    assert "earlier decision rule" in probability_line({"trojan_probability": report_block("tabor", 5.0, earlier)})
    current = replace(default, heldout_auc=0.9, test_models=10, decision_rule=decision_rule("tabor"))
    assert current.provisional_reasons() == []
    assert report_block("nc", None)["probability"] is None
    assert report_block("tabor", float("inf"))["probability"] == 1.0
    broken = report_block("tabor", 5.0, path=tmp_path / "missing.json")  # never fails the scan
    assert broken["probability"] is None and "no usable calibration" in broken["error"]
    cal = fit(_synthetic_pairs(), method="tabor")
    save([cal], tmp_path / "cal.json", note="test")
    assert load_default("tabor", tmp_path / "cal.json") == cal
    fitted = report_block("tabor", 5.0, cal)
    assert fitted["calibration"]["fitted_on_zoo"] and fitted["calibration"]["n_models"] == 40
    assert "calibrated on 40 zoo models, leave-one-out AUC 1.00" in probability_line({"trojan_probability": fitted})


def test_fit_command_on_compare_files(tmp_path, capsys):
    from tabor_tf.calibration import main

    for i, (ai, infected) in enumerate(_synthetic_pairs(seed=2, n=12)):
        d = tmp_path / "zoo" / f"m{i:02d}"
        d.mkdir(parents=True)
        (d / "compare.json").write_text(json.dumps({
            "truth": {"infected": infected},
            "reports": {"tabor": {"anomaly_index": ai}, "neural_cleanse": {"anomaly_index": ai / 2}}}))
    assert main([str(tmp_path / "zoo"), "--out", str(tmp_path / "cal.json")]) == 0
    out = capsys.readouterr().out
    assert "tabor" in out and "AUC 1.000" in out
    cal = load_default("neural_cleanse", tmp_path / "cal.json")
    assert cal.n_models == 12 and not cal.provisional and cal.heldout_auc == 1.0


def _zoo_output(root, rows):
    """A ``compare --zoo OUT`` layout: OUT/<name>/compare.json (+ the zoo table files)."""
    for name, (tabor_ai, nc_ai, infected) in rows.items():
        d = root / name
        d.mkdir(parents=True)
        reports = {m: {"method": m, "anomaly_index": ai, "flagged_labels": [1] if ai is None or ai > 2 else []}
                   for m, ai in (("tabor", tabor_ai), ("neural_cleanse", nc_ai))}
        (d / "compare.json").write_text(json.dumps({
            "schema_version": 1, "kind": "tabor-tf-compare", "name": name,
            "truth": {"name": name, "infected": infected, "targets": [1] if infected else []},
            "reports": reports}))
        (d / "tabor").mkdir()
        (d / "tabor" / "report.json").write_text(json.dumps(reports["tabor"]))
    (root / "zoo_summary.json").write_text("{}")
    (root / "zoo_table.md").write_text("")


def test_fit_subcommand_on_a_zoo_output_folder(tmp_path, capsys):
    from tabor_tf.calibration import main

    out = tmp_path / "zoo-out"
    _zoo_output(out, {"clean-0": (0.8, 1.1, False), "clean-1": (1.3, 0.4, False), "square-br": (6.0, 3.0, True),
                      "icon-tl": (None, 2.5, True), "square-tl": (3.5, 1.5, True)})
    target = tmp_path / "assets" / "calibration.json"
    assert main(["fit", str(out), "--out", str(target)]) == 0
    text = capsys.readouterr().out
    assert "n=5 (3 infected, 2 clean)" in text and "leave-one-out cross-entropy" in text and "AUC" in text
    for method in ("tabor", "neural_cleanse"):
        cal = load_default(method, target)
        assert not cal.provisional and cal.n_models == 5 and "zoo-out" in cal.source
        assert cal.heldout_auc is not None and cal.heldout_cross_entropy is not None
    # the infinite TABOR index (null + flagged) is the strongest evidence
    assert load_default("tabor", target).probability(np.inf) == 1.0
    # 5 models, leave-one-out: fitted, but its held-out figures are too few to validate the probability
    assert main(["show", str(target)]) == 0 and "[provisional]" in capsys.readouterr().out
    assert any("rests on 5 models only" in r for r in load_default("tabor", target).provisional_reasons())
    assert main(["show", str(tmp_path / "nope.json")]) == 2


def test_fit_command_needs_two_of_each_class_and_keeps_the_other_method(tmp_path, capsys):
    from tabor_tf.calibration import main

    out = tmp_path / "zoo-out"
    # NC has no index for one clean model: only 1 clean left for NC, so NC cannot be fitted
    _zoo_output(out, {"clean-0": (0.8, 1.1, False), "clean-1": (1.3, float("nan"), False),
                      "a": (6.0, 3.0, True), "b": (4.0, 2.5, True)})
    target = tmp_path / "cal.json"
    save([Calibration("neural_cleanse", a=2.0, b=-1.0, source="earlier")], target)
    assert main(["fit", str(out), "--out", str(target)]) == 0
    captured = capsys.readouterr()
    assert "neural_cleanse" in captured.err and "at least 2 infected and 2 clean" in captured.err
    assert load_default("neural_cleanse", target).source == "earlier"  # kept, not dropped
    assert not load_default("tabor", target).provisional
    assert main(["fit", str(tmp_path / "missing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fit", str(empty)]) == 2


def test_fit_on_dev_measured_on_test_split(tmp_path, capsys):
    """Issue 11: fit on the dev half, report cross-entropy and AUC on the test half only."""
    from tabor_tf.calibration import main, probability_text

    _zoo_output(tmp_path / "dev", {"d-clean-0": (0.8, 1.1, False), "d-clean-1": (1.3, 0.4, False),
                                   "d-a": (6.0, 3.0, True), "d-b": (3.5, 1.5, True), "d-c": (4.2, 2.2, True)})
    # the test half: one clean model scores as high as an infected one (AUC below 1, measured there)
    _zoo_output(tmp_path / "test", {"t-clean-0": (0.9, 1.0, False), "t-clean-1": (3.0, 0.5, False),
                                    "t-a": (5.0, 2.8, True), "t-b": (2.5, 1.2, True)})
    target = tmp_path / "cal.json"
    assert main(["fit", str(tmp_path / "dev"), "--test", str(tmp_path / "test"), "--out", str(target)]) == 0
    out = capsys.readouterr().out
    assert "on the test split (4 models, 2 infected)" in out and "leave-one-out" not in out
    assert "only 4 held-out models" in out
    cal = load_default("tabor", target)
    assert cal.n_models == 5 and cal.heldout_kind == "test split" and cal.test_models == 4
    # the AUC on the test half, by hand: infected 5.0, 2.5 vs clean 0.9, 3.0 -> 3 of 4 pairs ordered
    assert cal.heldout_auc == pytest.approx(0.75)
    p = [cal.probability(a) for a in (0.9, 3.0, 5.0, 2.5)]
    assert cal.heldout_cross_entropy == pytest.approx(cross_entropy(p, [0, 0, 1, 1]))
    assert "--test" in json.loads(target.read_text())["note"]
    current = replace(cal, decision_rule=decision_rule("tabor"))
    text = probability_text({"trojan_probability": report_block("tabor", 4.0, current)})
    assert "PROVISIONAL" in text and "rests on 4 models only, fewer than 10" in text  # too few to validate it
    enough = replace(current, test_models=10)  # the same AUC measured on 10 test models validates it
    text = probability_text({"trojan_probability": report_block("tabor", 4.0, enough)})
    assert "AUC 0.75 on 10 other test models" in text and "PROVISIONAL" not in text
    # a model in both halves is refused: the figures would not be held out
    _zoo_output(tmp_path / "leak", {"d-a": (6.0, 3.0, True), "t-x": (1.0, 1.0, False)})
    assert main(["fit", str(tmp_path / "dev"), "--test", str(tmp_path / "leak")]) == 2
    assert "shares models with the fit: d-a" in capsys.readouterr().err
