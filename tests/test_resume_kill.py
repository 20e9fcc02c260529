"""Interruptions with a real kill: ``tabor-tf scan`` is started as a subprocess, SIGKILLed once it has
written a checkpoint, and the same command run again must end with the report of an
uninterrupted run (same flagged labels, same per-label scores and steps).

TABOR checkpoints the engine's whole state at round ends (``--set checkpoint_seconds=0``: every
round); Neural Cleanse checkpoints each finished label. Both resume deterministically: the steps
after the checkpoint are the ones an uninterrupted run takes (same variables, Adam state, batch
order), so the scores are compared exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TABOR_SETS = ["steps=100", "round_steps=5", "min_rounds=20", "checkpoint_seconds=0", "eval_images=64"]
NC_SETS = ["steps=30", "mini_batch=2", "batch_size=16", "patience=2", "early_stop_patience=4"]
LABELS = "0-5,7"


def _command(victim, out: Path, method: str, sets) -> list:
    cmd = [sys.executable, "-m", "tabor_tf", "scan", victim.model_path, "--data", victim.data_path,
           "--preprocess", victim.preprocess, "--method", method, "--out", str(out), "--max-samples", "200",
           "--labels", LABELS, "--quiet", "--no-html"]
    if method == "tabor":
        cmd += ["--preset", "fast"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    return env


def _run(cmd) -> dict:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    report = Path(cmd[cmd.index("--out") + 1]) / "report.json"
    # --labels scans a subset: a partial scan's verdict is inconclusive (exit 3), never clean
    assert proc.returncode == 3 and report.is_file(), proc.stderr[-3000:] + proc.stdout[-2000:]
    return json.loads(report.read_text())


def _kill_when(cmd, ready, timeout=300.0) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true (polled), and wait for it to die."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail("the scan finished before a checkpoint appeared: nothing was interrupted")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared in time")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _compare(resumed: dict, whole: dict) -> None:
    assert resumed["verdict"] == whole["verdict"]
    assert resumed["flagged_labels"] == whole["flagged_labels"]
    assert resumed["anomaly_index"] == pytest.approx(whole["anomaly_index"], abs=1e-9)
    for a, b in zip(resumed["labels"], whole["labels"]):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-9), a["label"]
        assert a["steps"] == b["steps"] and a["stop_reason"] == b["stop_reason"]
        assert a["l1"] == pytest.approx(b["l1"], abs=1e-6)


def test_tabor_scan_killed_mid_search_resumes_to_the_uninterrupted_report(tiny_infected_victim, tmp_path):
    whole = _run(_command(tiny_infected_victim, tmp_path / "whole", "tabor", TABOR_SETS))
    out = tmp_path / "killed"
    cmd = _command(tiny_infected_victim, out, "tabor", TABOR_SETS)
    state = out / ".checkpoint" / "tabor" / "tabor_engine_state.npz"

    def mid_search():
        if not state.is_file():
            return False
        try:
            with np.load(state) as z:  # written atomically: a visible file is always complete
                return json.loads(str(z["meta"]))["steps_done"] >= 15
        except (OSError, ValueError, KeyError):
            return False

    _kill_when(cmd, mid_search)
    assert not (out / "report.json").exists()
    with np.load(state) as z:
        stopped_at = json.loads(str(z["meta"]))["steps_done"]
    assert 15 <= stopped_at < 100  # a real interruption in the middle of the trigger search
    resumed = _run(cmd)
    _compare(resumed, whole)
    assert f"trigger search resumed at step {stopped_at} from {state}" in resumed["notes"]
    assert not state.exists()  # the state file is removed once the triggers are saved


def test_neural_cleanse_scan_killed_between_labels_resumes_to_the_uninterrupted_report(tiny_infected_victim,
                                                                                      tmp_path):
    whole = _run(_command(tiny_infected_victim, tmp_path / "whole", "nc", NC_SETS))
    out = tmp_path / "killed"
    cmd = _command(tiny_infected_victim, out, "nc", NC_SETS)
    ckpt = out / ".checkpoint" / "neural_cleanse"
    _kill_when(cmd, lambda: len(list(ckpt.glob("nc_label_*.json"))) >= 2)
    assert not (out / "report.json").exists()
    done_before = len(list(ckpt.glob("nc_label_*.json")))
    assert 2 <= done_before < 7
    resumed = _run(cmd)
    _compare(resumed, whole)
    assert sum("reused" in n for n in resumed["notes"]) == done_before
