"""Verdicts a deployment gate can trust (issue 13): no CLEAN below the accuracy floor, partial scans
are inconclusive, report folders are never silently overwritten, probabilities say when they are
provisional, and the small honesty fixes (signs, --quiet, --seeds 0, early option errors, axes)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tabor_tf.cli import EXIT_ERROR, EXIT_INCONCLUSIVE, build_parser, exit_for_verdict, main

NC_FAST = ["--method", "nc", "--set", "mini_batch=3", "--set", "steps=30", "--max-samples", "300",
           "--preprocess", "unit", "--no-html"]


def _report(out) -> dict:
    return json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def mislabelled_data(tiny_signs, tmp_path_factory):
    """The tiny victims' clean images with every label shifted by one: clean accuracy ~0."""
    path = tmp_path_factory.mktemp("bad-labels") / "shifted.npz"
    np.savez(path, x=tiny_signs.x_test, y=(tiny_signs.y_test + 1) % 10)
    return str(path)


# ----------------------------------------------------------------------------- exit codes


def test_exit_codes_by_verdict():
    assert [exit_for_verdict(v) for v in ("clean", "infected", "inconclusive", "?")] == [0, 1, 3, 2]


# ----------------------------------------------------------------------------- 2. accuracy floor


def test_low_accuracy_is_an_error_unless_forced_then_inconclusive(tiny_clean_victim, mislabelled_data, tmp_path,
                                                                  capsys):
    out = tmp_path / "low"
    rc = main(["scan", tiny_clean_victim.model_path, "--data", mislabelled_data, *NC_FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_ERROR
    assert "below the floor of 50%" in err and "--allow-low-accuracy" in err
    assert not (out / "report.json").exists()

    rc = main(["scan", tiny_clean_victim.model_path, "--data", mislabelled_data, *NC_FAST, "--out", str(out),
               "--allow-low-accuracy", "--quiet"])
    captured = capsys.readouterr()
    assert rc == EXIT_INCONCLUSIVE
    report = _report(out)
    assert report["verdict"] == "inconclusive"
    assert any("clean accuracy" in r and "below the floor" in r for r in report["inconclusive_reasons"])
    # --quiet still prints the verdict line
    assert re.search(r"^verdict\s+INCONCLUSIVE", captured.out, re.M)


# ----------------------------------------------------------------------------- 3. partial scans


def test_partial_labels_scan_is_inconclusive_everywhere(tiny_infected_victim, tmp_path, capsys):
    out = tmp_path / "partial"
    args = [a for a in NC_FAST if a != "--no-html"]
    rc = main(["scan", tiny_infected_victim.model_path, "--data", tiny_infected_victim.data_path, *args,
               "--labels", "0-2", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == EXIT_INCONCLUSIVE  # never 0 for labels nobody looked at
    report = _report(out)
    assert report["verdict"] == "inconclusive"
    assert report["coverage"] == {"labels_scanned": 3, "num_classes": 10, "partial": True, "label_selection": None}
    assert any("partial scan: 3 of 10 labels" in r for r in report["inconclusive_reasons"])
    assert "PARTIAL: 3 of 10 labels scanned" in stdout
    assert str(out / "report.html") in stdout  # the summary names the html report too
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "INCONCLUSIVE" in html and "partial scan: 3 of 10 labels" in html


def test_full_scan_is_not_partial():
    from tabor_tf.outliers import mad_test
    from tabor_tf.results import LabelResult, ScanResult

    labels = [LabelResult(k, np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.float32), float(s), 0.0, 0.0,
                          1, "max_steps", 0.0) for k, s in enumerate([5.0, 5.1, 4.9, 5.0, 0.5])]
    mad = mad_test([r.score for r in labels])
    full = ScanResult("tabor", labels, mad, 1.0, num_classes=5)
    assert not full.partial and full.verdict == "infected" and full.flagged_labels == [4]
    part = ScanResult("tabor", labels, mad, 1.0, num_classes=43)
    assert part.partial and part.verdict == "inconclusive" and part.flagged_labels == [4]


# ----------------------------------------------------------------------------- 4. report folders


def test_out_refuses_a_finished_report_of_another_model(tiny_infected_victim, tiny_clean_victim, tmp_path, capsys):
    out = tmp_path / "shared"
    assert main(["scan", tiny_infected_victim.model_path, "--data", tiny_infected_victim.data_path, *NC_FAST,
                 "--out", str(out)]) in (0, 1)
    first = (out / "report.json").read_bytes()
    assert len(list((out / "labels").glob("label_[0-9][0-9][0-9]_mask.npy"))) == 10
    capsys.readouterr()

    rc = main(["scan", tiny_clean_victim.model_path, "--data", tiny_clean_victim.data_path, *NC_FAST,
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_ERROR and "already holds a finished" in err and "--overwrite" in err
    assert (out / "report.json").read_bytes() == first  # nothing the user had is lost

    # refused before anything is loaded: a missing model is not even looked at
    rc = main(["scan", str(tmp_path / "missing.h5"), "--data", tiny_clean_victim.data_path, *NC_FAST,
               "--out", str(out)])
    assert rc == EXIT_ERROR and "already holds a finished" in capsys.readouterr().err

    (out / "notes.txt").write_text("the user's own file")
    rc = main(["scan", tiny_clean_victim.model_path, "--data", tiny_clean_victim.data_path, *NC_FAST,
               "--out", str(out), "--overwrite", "--labels", "0-4"])
    assert rc == EXIT_INCONCLUSIVE
    report = _report(out)
    assert report["model"]["sha256"] != json.loads(first)["model"]["sha256"]
    stale = sorted(p.name for p in (out / "labels").iterdir())
    assert stale == sorted(f"label_{k:03d}_{kind}.{ext}" for k in range(5) for kind in ("mask", "pattern", "fusion")
                           for ext in ("png", "npy"))  # no label file of the old scan is left
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_claim_resumes_only_the_same_scan(tmp_path):
    from tabor_tf.errors import TaborError
    from tabor_tf.output_folder import CHECKPOINT_DIR, claim

    ident = {"model_sha256": "a" * 64, "method": "tabor", "seed": 0, "labels": None}
    folder = tmp_path / "run"
    assert claim(folder, ident) == "new"
    (folder / CHECKPOINT_DIR / "tabor").mkdir(parents=True)
    (folder / CHECKPOINT_DIR / "tabor" / "state.npz").write_bytes(b"work")
    assert claim(folder, ident) == "resume"  # the same command after an interruption
    other = dict(ident, seed=1)
    with pytest.raises(TaborError, match="interrupted scan with other settings"):
        claim(folder, other)
    assert (folder / CHECKPOINT_DIR / "tabor" / "state.npz").exists()
    assert claim(folder, other, overwrite=True) == "overwrite"
    assert not (folder / CHECKPOINT_DIR / "tabor").exists()
    # a folder of unrelated files is usable as is; nothing in it is touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("x")
    assert claim(mine, ident) == "new" and (mine / "data.csv").read_text() == "x"


def test_default_out_dir_skips_an_interrupted_scan_of_another_model(tmp_path):
    from tabor_tf.output_folder import CHECKPOINT_DIR, default_out_dir, write_identity

    ident = {"model_sha256": "a" * 64, "seed": 0}
    busy = tmp_path / "scan-m-tabor"
    (busy / CHECKPOINT_DIR).mkdir(parents=True)
    (busy / CHECKPOINT_DIR / "x.npz").write_bytes(b"w")
    write_identity(busy, dict(ident, model_sha256="b" * 64))
    assert default_out_dir("m.h5", "tabor", parent=tmp_path, identity=ident) == tmp_path / "scan-m-tabor-2"
    write_identity(busy, ident)
    assert default_out_dir("m.h5", "tabor", parent=tmp_path, identity=ident) == busy


# ----------------------------------------------------------------------------- 5. calibration honesty


def test_probabilities_are_provisional_outside_their_fit(tmp_path):
    import json

    from tabor_tf.calibration import DEFAULT_PATH, decision_rule, probability_text, report_block

    gtsrb = {"input_shape": [32, 32, 3], "num_classes": 43}
    mnist = {"input_shape": [28, 28, 1], "num_classes": 10}
    shipped = report_block("tabor", 5.0, model=gtsrb)  # fitted on the dev half, measured on 11 test models
    auc, n = shipped["calibration"]["heldout_auc"], shipped["calibration"]["test_models"]
    assert shipped["calibration"]["validated"] and n >= 10
    assert f"AUC {auc:.2f} on {n} other test models" in probability_text({"trojan_probability": shipped})
    assert "earlier decision rule" not in probability_text({"trojan_probability": shipped})  # refitted (session 17)
    imagenet = report_block("tabor", 5.0, model={"input_shape": [224, 224, 3], "num_classes": 1000})
    assert not imagenet["calibration"]["validated"]  # no model like it was in the fit or the test split
    assert "224x224x3 input, 1000 classes" in probability_text({"trojan_probability": imagenet})
    good = json.loads(open(DEFAULT_PATH, encoding="utf-8").read())  # the same file, as if it separated well
    good["methods"]["tabor"].update(heldout_auc=0.9, test_models=10,  # on 10 test models
                                    domain={"input_shapes": [[32, 32, 3]], "num_classes": [43]},
                                    decision_rule=decision_rule("tabor"))  # ... and were fitted under today's rule
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(good), encoding="utf-8")
    inside = report_block("tabor", 5.0, model=gtsrb, path=path)
    assert inside["calibration"]["validated"] and "PROVISIONAL" not in probability_text({"trojan_probability": inside})
    outside = report_block("tabor", 5.0, model=mnist, path=path)
    assert not outside["calibration"]["validated"]
    text = probability_text({"trojan_probability": outside})
    assert text.count("PROVISIONAL") == 1 and "28x28x1 input, 10 classes" in text and "AUC 1.00" not in text
    good["methods"]["tabor"]["decision_rule"] = None  # fitted on indices of an earlier rule
    path.write_text(json.dumps(good), encoding="utf-8")
    earlier = report_block("tabor", 5.0, model=gtsrb, path=path)
    assert "earlier decision rule" in probability_text({"trojan_probability": earlier})
    assert decision_rule("tabor") != decision_rule("nc")
    nc = report_block("nc", 5.0, model=gtsrb)  # its held-out AUC (0.12) is no better than chance
    assert not nc["calibration"]["validated"]
    assert "PROVISIONAL" in probability_text({"trojan_probability": nc})


# ----------------------------------------------------------------------------- 9. small honesty fixes


def test_compare_marks_tabor_faithful_only_with_its_defaults():
    from tabor_tf.compare import tabor_is_default
    from tabor_tf.scanning import make_config

    assert tabor_is_default(make_config("tabor", None, None, (32, 32, 3)), (32, 32, 3))
    assert not tabor_is_default(make_config("tabor", None, {"steps": 10}, (32, 32, 3)), (32, 32, 3))
    assert not tabor_is_default(make_config("tabor", "fast", None, (32, 32, 3)), (32, 32, 3))


def test_banner_and_label_table_show_the_same_sign(tmp_path):
    from tabor_tf.html_report import render_report_html
    from tabor_tf.outliers import mad_test
    from tabor_tf.report import ReportContext, build_report
    from tabor_tf.results import LabelResult, ScanResult

    scores = [5.0, 5.2, 4.8, 5.1, 4.9, 0.4]
    labels = [LabelResult(k, np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.float32), s, 0.5, 1.0, 1,
                          "max_steps", 0.0) for k, s in enumerate(scores)]
    scan = ScanResult("tabor", labels, mad_test(scores), 1.0, num_classes=6)
    ctx = ReportContext(model={"path": "m.h5", "input_shape": [4, 4, 3], "num_classes": 6}, data={}, preprocess={})
    report = build_report(scan, ctx)
    flagged = next(e for e in report["labels"] if e["label"] == 5)
    assert flagged["anomaly_index"] == pytest.approx(report["anomaly_index"]) and flagged["anomaly_index"] > 2
    html = render_report_html(report, tmp_path)
    banner = re.search(r"<small>anomaly index ([-0-9.]+)", html)
    row = re.search(r"<tr[^>]*><td>5</td><td>[^<]*</td><td>([^<]*)</td>", html)
    assert banner and row and float(banner.group(1)) > 2
    assert float(row.group(1)) == pytest.approx(float(banner.group(1)), abs=0.01)  # same number, same sign


def test_l1_plot_axis_never_goes_negative():
    from tabor_tf.html_report import anomaly_svg

    points = [(k, s, k == 0) for k, s in enumerate([0.5, 3.0, 30.0, 4.0, 60.0, 2.0])]  # wide MAD: band < 0
    svg = anomaly_svg(points, median=3.5, mad=20.0, threshold=2.0, score_name="mask L1 norm", floor=0.0)
    ticks = [float(v) for v in re.findall(r'text-anchor="end">(-?[0-9.]+)</text>', svg)]
    assert len(ticks) == 5 and min(ticks) >= 0.0
    free = anomaly_svg(points, median=3.5, mad=20.0, threshold=2.0)  # an unbounded score keeps its range
    assert min(float(v) for v in re.findall(r'text-anchor="end">(-?[0-9.]+)</text>', free)) < 0


def test_option_errors_come_before_any_loading(tmp_path, capsys):
    missing_model, missing_data = str(tmp_path / "none.h5"), str(tmp_path / "none.npz")
    assert main(["scan", missing_model, "--data", missing_data, "--seeds", "0"]) == EXIT_ERROR
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["scan", missing_model, "--data", missing_data, "--labels", "0,1"]) == EXIT_ERROR
    assert "at least 3 labels" in capsys.readouterr().err
    assert main(["scan", missing_model, "--data", missing_data, "--labels", "0-x"]) == EXIT_ERROR
    assert "--labels" in capsys.readouterr().err


def test_labels_out_of_range_fail_before_the_data_loads(tiny_clean_victim, tmp_path, capsys):
    rc = main(["scan", tiny_clean_victim.model_path, "--data", str(tmp_path / "none.npz"), "--labels", "0-12",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == EXIT_ERROR and "out of range" in err and "none.npz" not in err


def test_info_and_scan_share_model_version():
    parser = build_parser()
    assert parser.parse_args(["info", "m", "--model-version", "3"]).model_version == 3
    assert parser.parse_args(["scan", "m", "--model-version", "3"]).model_version == 3


def test_cli_stderr_has_no_tensorflow_start_up_lines(tmp_path):
    """A gate's log shows tabor-tf's own lines only: no oneDNN notices, no cuInit ERROR on GPU-less hosts."""
    import os
    import subprocess
    import sys

    from tabor_tf.compare import find_demo_dir

    model = find_demo_dir() / "clean" / "model.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL")}
    proc = subprocess.run([sys.executable, "-m", "tabor_tf", "info", str(model)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0 and re.search(r"^classes\s+43$", proc.stdout, re.M)
    assert proc.stderr == ""


def test_auto_label_order_follows_the_model_when_folders_are_unpadded(tmp_path):
    """43 class folders named 0..42: Keras's string order would put 10 before 2; the demo model was
    trained with label = class number, so auto takes int(name), by clean accuracy, and says so."""
    import cv2

    from tabor_tf.compare import find_demo_dir
    from tabor_tf.errors import DataError
    from tabor_tf.scanning import prepare
    from tabor_tf.synthetic import make_signs

    x, y = make_signs(172, seed=90_210, size=32, num_classes=43)
    root = tmp_path / "signs"
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    model = find_demo_dir() / "clean" / "model.h5"
    prepared = prepare(model, root, preprocess="unit", max_samples=0)
    assert prepared.data.label_order == "numeric" and prepared.check.clean_accuracy > 0.9
    assert any("labelled by int(folder name)" in n for n in prepared.data.notes)
    assert prepared.context(0).data["label_order"] == "numeric"
    with pytest.raises(DataError, match=r"below the floor.*--label-order"):
        prepare(model, root, preprocess="unit", max_samples=0, label_order="keras")
