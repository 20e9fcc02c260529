"""``tabor-tf scan``: exit codes, report.json schema and html on tiny victims; option parsing; terminal output."""

import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tabor_tf.cli import main
from tabor_tf.errors import TaborError
from tabor_tf.progress import ProgressEvent
from tabor_tf.report import SCHEMA_VERSION
from tabor_tf.tabor.presets import preset
from tabor_tf.scanning import default_out_dir, parse_labels, parse_overrides, unique_out_dir
from tabor_tf.terminal import ProgressBar, progress_fraction, summary_lines

# tiny budgets: the point is the command's behaviour, not the detectors' accuracy
NC_FAST = ["--method", "nc", "--set", "mini_batch=3", "--set", "steps=30", "--max-samples", "300"]
TABOR_FAST = ["--preset", "fast", "--set", "steps=40", "--set", "eval_images=64", "--max-samples", "300"]
# the clean verdict needs the non-target triggers to settle: the fast preset's own budget
TABOR_VERDICT = ["--preset", "fast", "--set", "eval_images=64", "--max-samples", "300"]
TOP_KEYS = ("schema_version", "tool_version", "method", "model", "data", "preprocess", "seed", "settings",
            "verdict", "flagged_labels", "anomaly_index", "mad", "seconds", "created", "labels")


class Ids(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.ids = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k == "id":
                self.ids.add(v)


def check_report(out: Path, victim, method: str) -> dict:
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in TOP_KEYS:
        assert key in report, key
    assert report["schema_version"] == SCHEMA_VERSION and report["method"] == method
    assert report["model"]["sha256"] and len(report["model"]["sha256"]) == 64
    assert report["model"]["input_shape"] == [32, 32, 3] and report["model"]["num_classes"] == victim.num_classes
    assert report["data"]["samples"] == 300 and report["data"]["labelled"] is True
    assert report["preprocess"]["mode"] == victim.preprocess  # auto finds the training preprocessing
    assert report["preprocess"]["clean_accuracy"] > 0.8
    assert report["verdict"] in ("clean", "infected")
    assert (report["verdict"] == "infected") == bool(report["flagged_labels"])
    assert [e["label"] for e in report["labels"]] == list(range(victim.num_classes))
    for e in report["labels"]:
        for kind in ("mask", "pattern", "fusion"):
            assert (out / e["files"][f"{kind}_png"]).is_file()
            arr = np.load(out / e["files"][f"{kind}_npy"])
            assert arr.shape[:2] == (32, 32)
        assert 0.0 <= e["attack_success"] <= 1.0 and e["steps"] >= 1
    ids = Ids((out / "report.html").read_text(encoding="utf-8")).ids
    assert all(f"flagged-{k}" in ids for k in report["flagged_labels"])
    return report


def test_scan_infected_exits_1(tiny_infected_victim, tmp_path, capsys):
    v = tiny_infected_victim
    out = tmp_path / "nc-report"
    rc = main(["scan", v.model_path, "--data", v.data_path, *NC_FAST, "--out", str(out)])
    captured = capsys.readouterr()
    report = check_report(out, v, "neural_cleanse")
    assert rc == 1 and report["verdict"] == "infected"
    assert v.targets[0] in report["flagged_labels"]
    assert "INFECTED" in captured.out and "report.json" in captured.out
    assert f"preprocess   {v.preprocess}" in captured.err  # the chosen preprocessing is shown before the scan
    phases = report["settings"]["phase_seconds"]  # Neural Cleanse: its search, then the completion of its flags
    assert set(phases) == {"search", "completion"} and phases["search"] > 0 and phases["completion"] > 0
    assert sum(phases.values()) <= report["seconds"] + 0.01


def test_scan_clean_exits_0_and_json(tiny_clean_victim, tmp_path, capsys):
    v = tiny_clean_victim
    out = tmp_path / "tabor-report"
    rc = main(["scan", v.model_path, "--data", v.data_path, *TABOR_VERDICT, "--out", str(out), "--json", "--quiet"])
    captured = capsys.readouterr()
    report = check_report(out, v, "tabor")
    assert rc == 0 and report["verdict"] == "clean" and report["flagged_labels"] == []
    assert json.loads(captured.out) == report  # --json: stdout is exactly report.json
    assert captured.err == ""  # --quiet: no progress, no summary
    assert report["settings"]["steps"] == preset("fast").steps and report["settings"]["preset"] == "fast"
    phases = report["settings"]["phase_seconds"]  # where the scan's time went, completion included
    assert {"search", "scoring", "confirmation", "completion"} <= set(phases) and sum(phases.values()) <= report["seconds"] + 0.01  # ms rounding
    parts = report["labels"][0]["parts"]
    for key in ("A", "sparsity", "smoothness", "attack", "crop", "explanation"):
        assert key in parts


@pytest.mark.parametrize("extra, message", [
    (["--labels", "3-12"], "out of range"),
    (["--labels", "1,x"], "--labels"),
    (["--set", "no_such_setting=1"], "valid keys"),
    (["--set", "steps=many"], "int"),
    (["--preprocess", "bgrx"], "preprocessing mode"),
    (["--preset", "huge"], "preset"),
])
def test_scan_usage_errors_exit_2(tiny_clean_victim, tmp_path, capsys, extra, message):
    v = tiny_clean_victim
    rc = main(["scan", v.model_path, "--data", v.data_path, *TABOR_FAST, "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_scan_input_errors_exit_2(tiny_clean_victim, tmp_path, capsys):
    v = tiny_clean_victim
    # synthetic data makes 43 classes; this model has 10
    assert main(["scan", v.model_path, "--data", "synthetic", "--quiet"]) == 2
    assert "43" in capsys.readouterr().err
    # data of the wrong image size
    small = tmp_path / "small.npz"
    np.savez(small, x=np.zeros((20, 16, 16, 3), np.uint8), y=np.zeros(20, np.int64))
    assert main(["scan", v.model_path, "--data", str(small), "--quiet"]) == 2
    assert "tabor-tf: error:" in capsys.readouterr().err
    # an output folder that cannot be created (a file is in the way): error before the scan starts
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["scan", v.model_path, "--data", v.data_path, *TABOR_FAST, "--out", str(blocker / "o"),
                 "--quiet"]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    # no --data at all
    assert main(["scan", v.model_path]) == 2
    assert "--data" in capsys.readouterr().err


def test_console_script_missing_model_exit_2(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "tabor_tf", "scan", str(tmp_path / "nope.h5"), "--data",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "model not found" in proc.stderr and "Traceback" not in proc.stderr


def test_parse_labels_and_overrides():
    assert parse_labels("0,3,5-9") == [0, 3, 5, 6, 7, 8, 9]
    assert parse_labels(" 4 , 2,2 ") == [2, 4]
    assert parse_labels(None) is None and parse_labels("all") is None
    for bad in ("3-1", "a", "-2"):
        with pytest.raises(TaborError):
            parse_labels(bad)
    nc = parse_overrides(["steps=50", "early_stop=false", "init_cost=1e-2", "suspected_target=none"], "nc")
    assert nc == {"steps": 50, "early_stop": False, "init_cost": 0.01, "suspected_target": None}
    assert type(nc["steps"]) is int and type(nc["init_cost"]) is float
    tabor = parse_overrides(["pattern-regularizer=l1", "l6=0.5"], "tabor")
    assert tabor == {"pattern_regularizer": "l1", "l6": 0.5}
    with pytest.raises(TaborError, match="KEY=VALUE"):
        parse_overrides(["steps"], "tabor")
    with pytest.raises(TaborError, match="bool"):
        parse_overrides(["early_stop=maybe"], "nc")


def test_default_out_dir_never_reuses_a_finished_report(tmp_path):
    first = default_out_dir("/models/victim.h5", "nc", parent=tmp_path)
    assert first.name == "scan-victim-nc"
    first.mkdir()
    (first / "report.json").write_text("{}")
    second = default_out_dir("/models/victim.h5", "nc", parent=tmp_path)
    assert second.name == "scan-victim-nc-2"
    # an interrupted scan (checkpoint, no report) is resumed in place
    (second / ".checkpoint").mkdir(parents=True)
    assert default_out_dir("/models/victim.h5", "nc", parent=tmp_path) == second
    assert unique_out_dir(tmp_path / "scan-victim-nc", resume_interrupted=False).name == "scan-victim-nc-3"
    assert default_out_dir("/serving/resnet/", "tabor", parent=tmp_path).name == "scan-resnet-tabor"


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def ev(done, total, step, max_steps, label=None, method="neural_cleanse"):
    return ProgressEvent(method=method, labels_done=done, labels_total=total, step=step, max_steps=max_steps,
                         label=label)


def test_progress_fraction():
    assert progress_fraction(ev(0, 10, 0, 100, label=0)) == 0.0
    assert progress_fraction(ev(2, 10, 50, 100, label=2)) == pytest.approx(0.25)  # one label in work
    assert progress_fraction(ev(2, 10, 50, 100, label=None)) == pytest.approx(0.6)  # all remaining at once
    assert progress_fraction(ev(10, 10, 100, 100)) == 1.0
    assert progress_fraction(ev(3, 10, 40, 100, label=2), label_finished=True) == pytest.approx(0.3)


def test_progress_bar_plain_lines_when_not_a_terminal():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar("NC", stream=out, clock_fn=clock, plain_every=30)
    bar(ev(0, 4, 1, 10, label=0))  # first line
    clock.t = 2
    bar(ev(0, 4, 5, 10, label=0))  # too soon, same label: no line
    clock.t = 10
    bar(ev(1, 4, 10, 10, label=0))  # a label finished: line
    clock.t = 11
    bar(ev(1, 4, 2, 10, label=1))  # too soon after the last line
    clock.t = 45
    bar(ev(1, 4, 8, 10, label=1))  # 30 s passed: line
    clock.t = 46
    bar(ev(4, 4, 10, 10, label=3))  # the end always prints
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()
    assert lines[1].startswith("NC [") and "1/4 labels" in lines[1] and "0:10 elapsed" in lines[1]
    assert "4/4 labels" in lines[-1]
    # estimate: 1 of 4 labels done after 10 s -> 30 s left
    assert "~0:30 left" in lines[1]


def test_progress_bar_never_estimates_past_the_time_budget():
    clock = FakeClock()
    bar = ProgressBar("TABOR", stream=io.StringIO(), clock_fn=clock, deadline=100.0)
    clock.t = 10
    assert bar.estimate_left(ev(0, 4, 0, 400, label=None)) == pytest.approx(90.0)  # nothing done yet: the budget
    bar(ev(0, 4, 8, 400))  # 2% done in 10 s: the share done says ~490 s more
    assert bar.estimate_left(bar.last_event) == pytest.approx(90.0)
    clock.t = 120
    assert bar.estimate_left(bar.last_event) == 0.0
    clock.t = 0
    free = ProgressBar("TABOR", stream=io.StringIO(), clock_fn=clock)
    clock.t = 10
    free(ev(0, 4, 8, 400))
    assert free.estimate_left(free.last_event) == pytest.approx(490.0)


def test_progress_bar_tty_redraws_and_quiet_is_silent():
    clock, tty = FakeClock(), Tty()
    bar = ProgressBar("TABOR", stream=tty, clock_fn=clock)
    for i in range(1, 6):
        clock.t = i
        bar(ev(0, 5, i * 10, 50, method="tabor"))
    bar.close()
    text = tty.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and "5/5" not in text
    quiet = io.StringIO()
    bar = ProgressBar("x", stream=quiet, quiet=True)
    bar(ev(1, 2, 1, 1))
    bar.close()
    assert quiet.getvalue() == "" and bar.last_event is not None


def test_summary_lines():
    report = {"method": "tabor", "verdict": "infected", "flagged_labels": [33, 4], "anomaly_index": 3.456,
              "mad": {"threshold": 2.0}, "preprocess": {"mode": "raw", "clean_accuracy": 0.9712}, "seconds": 125.0}
    text = "\n".join(summary_lines(report, "out/report.json"))
    for piece in ("INFECTED", "33, 4", "3.46", "97.1%", "raw", "2 min 05 s", "out/report.json"):
        assert piece in text
    report.update(verdict="clean", flagged_labels=[], anomaly_index=None)
    text = "\n".join(summary_lines(report))
    assert "CLEAN" in text and "none" in text and "infinite" in text
    note = "label(s) 2 not flagged: the anomaly index averaged over fresh starts (seeds 1, 2) is not above the threshold"
    report.update(notes=[note, "triggers of 43 labels reused from x"])
    lines = summary_lines(report)
    assert f"fresh starts     {note}" in lines and not any("reused" in ln for ln in lines)


def test_summary_names_the_completed_trigger():
    report = {"method": "tabor", "verdict": "infected", "flagged_labels": [7], "anomaly_index": 4.0,
              "mad": {"threshold": 2.0}, "preprocess": {"mode": "unit"}, "seconds": 3.0,
              "labels": [{"label": 7, "flagged": True, "l1": 4.0, "parts": {"completion": {"l1": 15.5,
                                                                                         "accepted_rounds": 2}}},
                         {"label": 3, "flagged": False, "l1": 60.0, "parts": {}}]}
    lines = [ln for ln in summary_lines(report) if ln.startswith("whole trigger")]
    assert lines == ["whole trigger    label 7: mask L1 4.0 -> 15.5 after 2 peel round(s) (label_007_completed_*)"]
    report["labels"][0]["l1"] = 98.9
    report["labels"][0]["parts"]["completion"].update(l1=7.3, accepted_rounds=0, prune={"l1": 7.3, "accepted": True})
    lines = [ln for ln in summary_lines(report) if ln.startswith("whole trigger")]
    assert lines == ["whole trigger    label 7: mask L1 98.9 -> pruned to 7.3, 7.3 after 0 peel round(s)"
                     " (label_007_completed_*)"]
