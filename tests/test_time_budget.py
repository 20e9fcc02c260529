"""``scan --time-budget``: the scan ends on time with the best verdict reached, marked time-limited,
never CLEAN; the same command resumes the search (issue 14)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tabor_tf.cli import EXIT_INCONCLUSIVE, main

# a search that never converges by itself: only the deadline can end it
ENDLESS_TABOR = ["--preset", "fast", "--set", "steps=100000", "--set", "min_rounds=100000", "--set",
                 "eval_images=64", "--max-samples", "200", "--preprocess", "unit", "--no-html"]
SLOW_NC = ["--method", "nc", "--set", "mini_batch=4", "--set", "steps=300", "--set", "early_stop=false",
           "--max-samples", "200",
           "--preprocess", "unit", "--no-html"]
SLACK = 6.0  # seconds past the budget a scan may take (process start-up, the last label's scoring)


def _report(out) -> dict:
    return json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))


def test_tabor_ends_on_time_never_clean_and_resumes(tiny_clean_victim, tmp_path, capsys):
    v, out, budget = tiny_clean_victim, tmp_path / "tb", 25.0
    args = ["scan", v.model_path, "--data", v.data_path, *ENDLESS_TABOR, "--out", str(out), "--time-budget",
            str(budget)]
    started = time.monotonic()
    rc = main(args)
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    stdout = captured.out
    report = _report(out)
    assert elapsed <= budget + SLACK, elapsed
    # the estimate came before the search, and said the budget would not cover it
    assert "estimate     at most ~" in captured.err and "expect a partial answer" in captured.err
    assert report["time_limited"] and "time budget ended the trigger search" in report["time_limited"]
    stops = {e["stop_reason"] for e in report["labels"]}
    assert stops == {"time_budget"}
    assert report["verdict"] in ("infected", "inconclusive") and rc == (1 if report["verdict"] == "infected" else 3)
    assert "TIME-LIMITED" in stdout
    if report["verdict"] == "inconclusive":
        assert any("no label is an outlier yet" in r for r in report["inconclusive_reasons"])
    first_steps = max(e["steps"] for e in report["labels"])
    assert first_steps >= 10

    # the same command resumes the search where it stopped (the time-limited report is not final)
    rc2 = main(args)
    assert "resuming" in capsys.readouterr().err
    again = _report(out)
    assert max(e["steps"] for e in again["labels"]) > first_steps
    assert rc2 in (1, EXIT_INCONCLUSIVE)


def test_nc_ends_on_time_with_a_partial_inconclusive_result(tiny_clean_victim, tmp_path, capsys):
    v, out, budget = tiny_clean_victim, tmp_path / "nc", 20.0
    started = time.monotonic()
    rc = main(["scan", v.model_path, "--data", v.data_path, *SLOW_NC, "--out", str(out), "--time-budget",
               str(budget)])
    elapsed = time.monotonic() - started
    capsys.readouterr()
    report = _report(out)
    assert elapsed <= budget + SLACK, elapsed
    assert rc == EXIT_INCONCLUSIVE and report["verdict"] == "inconclusive"
    assert report["coverage"]["partial"] and 3 <= report["coverage"]["labels_scanned"] < 10
    assert "time budget ended the scan after" in report["time_limited"]
    assert any("(the time budget ended the scan)" in r for r in report["inconclusive_reasons"])
    stops = [e["stop_reason"] for e in report["labels"]]
    assert set(stops) <= {"max_steps", "time_budget"}
    if "time_budget" in stops:  # a label cut short is named, and never checkpointed as finished
        assert "were cut short before their last step" in report["time_limited"]
        saved = {p.stem for p in out.rglob("nc_label_*.json")}
        cut = [e["label"] for e in report["labels"] if e["stop_reason"] == "time_budget"]
        assert not any(f"nc_label_{k:03d}" in saved for k in cut)


def test_nc_first_three_labels_share_the_time_left():
    from neural_cleanse_baseline.detector import SCORING_RESERVE, _label_stop_at

    assert _label_stop_at(None, 0, 5.0) is None
    usable = 30.0 * (1 - SCORING_RESERVE)
    assert _label_stop_at(130.0, 0, 100.0) == pytest.approx(100.0 + usable / 3)
    assert _label_stop_at(130.0, 2, 100.0) == pytest.approx(100.0 + usable)
    assert _label_stop_at(130.0, 7, 100.0) == pytest.approx(100.0 + usable)  # later labels: up to the deadline
    assert _label_stop_at(90.0, 0, 100.0) == pytest.approx(100.0)  # already past it: stop after one step


def test_time_limited_verdicts():
    from tabor_tf.outliers import mad_test
    from tabor_tf.results import LabelResult, ScanResult

    def result(scores):
        labels = [LabelResult(k, np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.float32), s, 0.0, 0.0, 1,
                              "time_budget", 0.0) for k, s in enumerate(scores)]
        return ScanResult("tabor", labels, mad_test(scores), 1.0, num_classes=len(scores),
                          time_limited="the time budget ended the trigger search at step 50 of 400")

    assert result([5.0, 5.1, 4.9, 5.0, 0.5]).verdict == "infected"  # the evidence is already there
    cut = result([5.0, 5.1, 4.9, 5.0, 4.8])
    assert cut.verdict == "inconclusive" and "no label is an outlier yet" in cut.inconclusive_reasons[0]


def test_a_time_limited_report_folder_resumes_only_the_same_scan(tmp_path):
    from tabor_tf.errors import TaborError
    from tabor_tf.output_folder import CHECKPOINT_DIR, claim

    ident = {"model_sha256": "a" * 64, "seed": 0}
    folder = tmp_path / "run"
    assert claim(folder, ident) == "new"
    (folder / CHECKPOINT_DIR / "tabor").mkdir(parents=True)
    (folder / CHECKPOINT_DIR / "tabor" / "tabor_engine_state.npz").write_bytes(b"state")
    (folder / "report.json").write_text(json.dumps({"verdict": "inconclusive", "time_limited": "cut"}))
    assert claim(folder, ident) == "resume"
    with pytest.raises(TaborError, match="already holds"):
        claim(folder, dict(ident, seed=1))
    (folder / "report.json").write_text(json.dumps({"verdict": "clean", "time_limited": None}))
    with pytest.raises(TaborError, match="already holds a finished"):
        claim(folder, ident)


def test_time_budget_option_errors(tmp_path, capsys):
    missing = str(tmp_path / "none.h5")
    assert main(["scan", missing, "--data", "synthetic", "--time-budget", "0"]) == 2
    assert "--time-budget must be a positive number" in capsys.readouterr().err
    assert main(["scan", missing, "--data", "synthetic", "--time-budget", "10", "--seeds", "2"]) == 2
    assert "cannot be combined with --seeds" in capsys.readouterr().err
