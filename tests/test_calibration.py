"""Calibrated trojan probability: AUC, cross-entropy, the logistic fit, held-out measures, defaults."""

import json

import numpy as np
import pytest

from tabor_tf.calibration import (Calibration, cross_entropy, feature, fit, load_default, pairs_from_compare,
                                  report_block, roc_auc, save)


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


def test_pairs_from_compare_and_defaults(tmp_path):
    for i, (ai, infected) in enumerate([(4.0, True), (0.7, False), (None, True)]):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "compare.json").write_text(json.dumps({
            "truth": {"infected": infected},
            "reports": {"tabor": {"anomaly_index": ai}, "neural_cleanse": {"anomaly_index": 1.0}}}))
    dirs = sorted(tmp_path.iterdir())
    assert pairs_from_compare(dirs, "tabor") == [(4.0, True), (0.7, False), (None, True)]
    default = load_default("tabor")
    assert default.provisional and default.probability(2.0) == pytest.approx(0.5, abs=1e-3)
    assert load_default("neural_cleanse").probability(10.0) > 0.9
    block = report_block({"method": "tabor", "anomaly_index": 5.0})
    assert block["provisional"] and block["p"] > 0.5
    cal = fit(_synthetic_pairs(), method="tabor")
    save([cal], tmp_path / "cal.json", note="test")
    assert load_default("tabor", tmp_path / "cal.json") == cal


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
