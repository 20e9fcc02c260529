"""report.json: schema, per-label files, strict JSON, atomic writes (constructed ScanResults, no TF)."""

import json
import os

import cv2
import numpy as np
import pytest

from tabor_tf import __version__
from tabor_tf.errors import TaborError
from tabor_tf.outliers import mad_test
from tabor_tf.report import (SCHEMA_VERSION, ReportContext, atomic_write_json, build_report, dumps,
                             load_label_array, load_report, method_key, write_report)
from tabor_tf.results import LabelResult, ScanResult

H, W = 8, 10
REQUIRED = ("schema_version", "tool_version", "method", "model", "data", "preprocess", "seed", "settings",
            "verdict", "flagged_labels", "anomaly_index", "mad", "seconds", "created", "labels")
LABEL_KEYS = ("label", "score", "l1", "attack_success", "steps", "stop_reason", "seconds", "parts", "files")


def scan_result(scores, method="tabor", nan_part=False):
    rng = np.random.default_rng(0)
    labels = []
    for k, s in enumerate(scores):
        mask = rng.uniform(0, 1, (H, W)).astype(np.float32)
        pattern = rng.uniform(0, 255, (H, W, 3)).astype(np.float32)
        parts = {"A": s, "acc_att": 0.99, "np_value": np.float32(0.5)}
        if nan_part and k == 0:
            parts["broken"] = float("nan")
        labels.append(LabelResult(label=k, mask=mask, pattern=pattern, score=float(s), attack_success=0.99,
                                  l1=float(mask.sum()), steps=10 + k, stop_reason="converged", seconds=0.1,
                                  parts=parts))
    mad = mad_test(scores, list(range(len(scores))))
    return ScanResult(method=method, labels=labels, mad=mad, seconds=1.5, settings={"preset": "fast", "steps": 10},
                      clean_accuracy=0.9)


def context():
    return ReportContext(
        model={"path": "/m/model.h5", "sha256": "ab" * 32, "format": "keras3-h5", "input_shape": [H, W, 3],
               "num_classes": 6, "output_kind": "logits"},
        data={"path": "/d/data.npz", "format": "npz", "samples": 100, "labelled": True},
        preprocess={"mode": "raw", "clean_accuracy": 0.9, "accuracies_by_mode": {"raw": 0.9}, "warnings": []},
        seed=3,
    )


INFECTED = [10.0, 10.5, 9.5, 1.0, 10.2, 9.8]  # label 3 is a low outlier
CLEAN = [10.0, 10.5, 9.5, 9.9, 10.2, 9.8]


def test_report_schema_and_files(tmp_path):
    result = scan_result(INFECTED)
    report = write_report(result, tmp_path, context(), html=False)
    on_disk = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert on_disk == report
    for key in REQUIRED:
        assert key in report, key
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["tool_version"] == __version__
    assert report["method"] == "tabor"
    assert report["verdict"] == "infected"
    assert report["flagged_labels"] == [3] and all(type(v) is int for v in report["flagged_labels"])
    assert report["anomaly_index"] == pytest.approx(result.mad.anomaly_index)
    assert report["mad"]["threshold"] == 2.0 and report["mad"]["score"] == "a"
    assert report["model"]["sha256"] == "ab" * 32 and report["seed"] == 3
    assert [e["label"] for e in report["labels"]] == list(range(6))
    for entry in report["labels"]:
        for key in LABEL_KEYS:
            assert key in entry, key
        assert entry["flagged"] == (entry["label"] == 3)
        src = result.by_label(entry["label"])
        for kind, expected in (("mask", src.mask), ("pattern", src.pattern), ("fusion", src.fusion)):
            png = tmp_path / entry["files"][f"{kind}_png"]
            npy = tmp_path / entry["files"][f"{kind}_npy"]
            assert not os.path.isabs(entry["files"][f"{kind}_png"])
            img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
            assert img.shape[:2] == (H, W)
            np.testing.assert_allclose(np.load(npy), expected, rtol=1e-6)
        # the mask PNG is the mask scaled to 0..255
        mask_png = cv2.imread(str(tmp_path / entry["files"]["mask_png"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_allclose(mask_png, np.rint(src.mask * 255), atol=1)
    # pattern PNG keeps RGB order on disk (cv2 reads BGR)
    pat = cv2.cvtColor(cv2.imread(str(tmp_path / report["labels"][0]["files"]["pattern_png"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(pat, np.rint(result.labels[0].pattern), atol=1)
    np.testing.assert_allclose(load_label_array(tmp_path, report, 3, "mask"), result.by_label(3).mask)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_clean_report_and_nc_method(tmp_path):
    report = write_report(scan_result(CLEAN, method="neural_cleanse"), tmp_path, context(), html=False)
    assert report["verdict"] == "clean" and report["flagged_labels"] == []
    assert report["method"] == "neural_cleanse" and report["mad"]["score"] == "l1"


def test_strict_json_replaces_non_finite(tmp_path):
    report = build_report(scan_result(INFECTED, nan_part=True), context())
    assert report["labels"][0]["parts"]["broken"] is None
    text = dumps(report)
    json.loads(text)  # strict JSON: no NaN tokens
    assert "NaN" not in text and "Infinity" not in text


def test_load_report_checks_version(tmp_path):
    write_report(scan_result(INFECTED), tmp_path, context(), html=False)
    assert load_report(tmp_path)["flagged_labels"] == [3]
    data = json.loads((tmp_path / "report.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(TaborError, match="schema version"):
        load_report(tmp_path)
    with pytest.raises(TaborError, match="no report"):
        load_report(tmp_path / "missing")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"old": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(path, {"new": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_unwritable_output_is_a_tabor_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(TaborError, match="cannot write the report"):
        write_report(scan_result(INFECTED), blocker / "out", context(), html=False)


def test_method_key():
    assert method_key("nc") == method_key("Neural-Cleanse") == "neural_cleanse"
    assert method_key("TABOR") == "tabor"
    with pytest.raises(TaborError):
        method_key("strip")


def test_report_extra_keys_and_context_mask_3d(tmp_path):
    result = scan_result(INFECTED)
    result.labels[1].mask = result.labels[1].mask[..., None]  # [H, W, 1] masks are accepted too
    ctx = ReportContext(model=context().model, data=context().data, preprocess=context().preprocess, seed=0,
                        extra={"audit": {"model_sha256": "cd" * 32}})
    report = write_report(result, tmp_path, ctx, html=False)
    assert report["audit"] == {"model_sha256": "cd" * 32}
    assert np.load(tmp_path / report["labels"][1]["files"]["mask_npy"]).shape == (H, W)


def test_report_carries_the_calibrated_trojan_probability(tmp_path):
    from tabor_tf.calibration import Calibration, load_default

    infected = write_report(scan_result(INFECTED), tmp_path / "inf", context())
    clean = write_report(scan_result(CLEAN, method="neural_cleanse"), tmp_path / "clean", context())
    for report in (infected, clean):
        block = report["trojan_probability"]
        shipped = load_default(report["method"])
        assert block["probability"] == pytest.approx(shipped.probability(report["anomaly_index"]))
        cal = block["calibration"]
        assert cal["method"] == report["method"] and cal["a"] == shipped.a and cal["b"] == shipped.b
        for key in ("provisional", "fitted_on_zoo", "source", "n_models", "heldout_cross_entropy", "heldout_auc",
                    "mapping"):
            assert key in cal, key
    assert infected["trojan_probability"]["probability"] > 0.9
    # the same calibration gives the clean scan's weaker evidence a lower probability
    assert clean["anomaly_index"] < infected["anomaly_index"]
    nc = load_default("neural_cleanse")
    assert clean["trojan_probability"]["probability"] < nc.probability(infected["anomaly_index"])
    # the HTML page says it next to the verdict
    page = (tmp_path / "inf" / "report.html").read_text(encoding="utf-8")
    line = page[page.index('id="trojan-probability"'):]
    assert f"Trojan probability {infected['trojan_probability']['probability']:.2f}" in line[:200]
    assert page.index('id="verdict"') < page.index('id="trojan-probability"') < page.index("Anomaly plot")
    # an explicit calibration; an infinite index (MAD 0) is a certain detection, written as null
    fitted = Calibration("tabor", a=3.0, b=-2.0, provisional=False, source="zoo", n_models=10, n_infected=8,
                         heldout_cross_entropy=0.2, heldout_auc=0.95)
    flat = build_report(scan_result([5.0, 5.0, 5.0, 1.0, 5.0, 6.0]), context(), calibration=fitted)
    assert flat["anomaly_index"] is None and flat["trojan_probability"]["anomaly_index"] is None
    assert flat["trojan_probability"]["probability"] == 1.0
    assert flat["trojan_probability"]["calibration"]["fitted_on_zoo"]
    assert flat["trojan_probability"]["calibration"]["heldout_auc"] == 0.95


def test_detection_limit_states_the_large_trigger_blind_spot_of_a_clean_verdict(tmp_path):
    from tabor_tf.html_report import write_report_html
    from tabor_tf.report import detection_limit_text
    from tabor_tf.terminal import summary_lines

    clean = scan_result(CLEAN)
    report = write_report(clean, tmp_path, context(), html=False)
    limit = report["detection_limit"]
    expected = float(np.median([r.l1 for r in clean.labels]))
    assert limit["natural_l1_median"] == pytest.approx(expected)
    assert limit["image_pixels"] == H * W and limit["natural_fraction"] == pytest.approx(expected / (H * W))
    text = detection_limit_text(report)
    assert f"{expected:.0f} px" in text and f"{100 * expected / (H * W):.0f}% of the image" in text
    assert any(line.startswith("blind spot") and text in line for line in summary_lines(report))
    write_report_html(tmp_path, report)
    assert 'id="detection-limit"' in (tmp_path / "report.html").read_text(encoding="utf-8")

    infected = build_report(scan_result(INFECTED), context())
    assert infected["detection_limit"]["natural_l1_median"] > 0  # recorded for every verdict
    assert not any(line.startswith("blind spot") for line in summary_lines(infected))  # shown for clean only
    assert detection_limit_text({"verdict": "clean"}) is None  # reports written before the field existed


def test_a_confirmed_scan_reports_the_index_its_verdict_stands_on(tmp_path):
    """TABOR's fresh starts dropped the first start's flag: the report's anomaly index, the one the
    trojan probability is computed from, is the decision's (under the threshold), not the first start's."""
    import dataclasses

    from tabor_tf.calibration import report_anomaly_index
    from tabor_tf.tabor.confirm import decide
    from tabor_tf.terminal import summary_lines

    result = scan_result(INFECTED)
    first = result.mad
    assert first.flagged_labels == [3]
    mirrored = 2 * first.median - INFECTED[3]  # the fresh starts land as far above the median: not a trigger
    confirmed, indices = decide(first, {3: [mirrored, mirrored]})
    result = dataclasses.replace(result, mad=confirmed)
    report = write_report(result, tmp_path, context(), html=False)
    assert report["verdict"] == "clean" and report["flagged_labels"] == []
    assert report["first_start_anomaly_index"] == pytest.approx(first.anomaly_index)
    assert report["anomaly_index"] < report["mad"]["threshold"] < report["first_start_anomaly_index"]
    assert report["trojan_probability"]["anomaly_index"] == pytest.approx(report["anomaly_index"])
    assert report_anomaly_index(report) == pytest.approx(report["anomaly_index"])
    line = next(ln for ln in summary_lines(report) if ln.startswith("anomaly index"))
    assert f"first start {first.anomaly_index:.2f}" in line
    from tabor_tf.html_report import write_report_html

    write_report_html(tmp_path, report)
    assert "first start" in (tmp_path / "report.html").read_text(encoding="utf-8")
    # an older report (no first_start_anomaly_index): calibration recomputes the decision's index
    # from the label rows' fresh starts, as written by the detector (parts.confirm_indices)
    old = dict(report, anomaly_index=first.anomaly_index)
    del old["first_start_anomaly_index"]
    old["labels"] = [dict(r, parts=dict(r["parts"], confirm_indices=indices[3])) if r["label"] == 3 else r
                     for r in report["labels"]]
    assert report_anomaly_index(old) == pytest.approx(report["anomaly_index"])
    plain = build_report(scan_result(INFECTED), context())  # no confirmation: the first start's, no extra key
    assert plain["first_start_anomaly_index"] is None and report_anomaly_index(plain) == plain["anomaly_index"]


def test_the_summary_says_where_the_time_went(tmp_path):
    from tabor_tf.html_report import write_report_html
    from tabor_tf.terminal import summary_lines

    report = build_report(scan_result(CLEAN), context())
    report["seconds"] = 75.2
    report["settings"]["phase_seconds"] = {"preparation": 0.4, "search": 50.1, "scoring": 12.0,
                                           "confirmation": 0.0, "completion": 12.7}
    time_line = next(line for line in summary_lines(report) if line.startswith("time"))
    assert time_line.endswith("1 min 15 s  (search 50.1 s, scoring 12.0 s, completion 12.7 s)")
    write_report_html(tmp_path, report)
    assert "1 min 15 s (search 50.1 s, scoring 12.0 s, completion 12.7 s)" in (tmp_path / "report.html").read_text(
        encoding="utf-8")
    del report["settings"]["phase_seconds"]  # reports written before the field existed
    assert next(line for line in summary_lines(report) if line.startswith("time")).endswith("1 min 15 s")
