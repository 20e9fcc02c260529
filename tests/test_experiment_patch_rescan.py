"""``tabor-tf experiment patch-rescan`` (paper Figure 8) on a tiny victim with two triggers to ONE
target: scan, patch by unlearning, rescan, for both methods with small budgets; the outputs, the
Markdown matching the JSON, resuming without redoing finished stages, and input errors."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import _build, tiny_spec
from tabor_tf.cli import main

BUDGET = ["--max-samples", "300", "--tabor-preset", "fast", "--set-tabor", "steps=60", "--set-tabor", "eval_images=64",
          "--set-nc", "steps=20", "--set-nc", "mini_batch=2", "--quiet"]


@pytest.fixture(scope="module")
def same_target_victim(tiny_signs, tiny_signs_path, tmp_path_factory):
    """White 4x4 square bottom-right -> 7 and the 6x6 logo icon top-left -> 7 (10% poisoned each)."""
    from tabor_tf.zoo import Backdoor, TriggerSpec

    bds = [Backdoor(TriggerSpec("square", 4, "bottom-right"), 7), Backdoor(TriggerSpec("icon", 6, "top-left"), 7)]
    spec = tiny_spec("tiny-two-triggers-one-target", bds, poison_rate=0.1)
    return _build(spec, tiny_signs, tiny_signs_path, tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def experiment(same_target_victim, tmp_path_factory):
    """One full run through the CLI -> ``(out folder, argv, result JSON)``."""
    out = tmp_path_factory.mktemp("patch-rescan") / "run"
    v = same_target_victim
    argv = ["experiment", "patch-rescan", v.model_path, "--data", v.data_path, "--truth", v.card_path,
            "--out", str(out), "--methods", "tabor", "nc", *BUDGET]
    assert main(argv) == 0
    return out, argv, json.loads((out / "patch_rescan.json").read_text())


def test_pipeline_end_to_end(experiment, same_target_victim):
    out, _, result = experiment
    assert result["methods"] == ["tabor", "neural_cleanse"]
    assert [t["name"] for t in result["triggers"]] == ["A", "B"] and not result["one_trigger"]
    assert {t["target"] for t in result["triggers"]} == {7}
    assert result["original"]["clean_accuracy"] > 0.9
    assert min(result["original"]["attack_success"].values()) > 0.9  # both real triggers work before
    for m in result["methods"]:
        entry = result["results"][m]
        assert 7 in entry["scan1"]["flagged_labels"], m
        patch = entry["patch"]
        assert patch["labels"] == entry["scan1"]["flagged_labels"]
        # the restored trigger is unlearned: its attack success falls, and so does the real trigger it matches
        before, after = patch["restored_attack_success"]["before"], patch["restored_attack_success"]["after"]
        assert after[0] < 0.5 * before[0], (m, before, after)
        best = next(e["best"] for e in entry["scan1"]["targets"] if e["target"] == 7)
        assert patch["attack_success"]["after"][best] < patch["attack_success"]["before"][best]
        assert patch["attack_success"]["before"] == result["original"]["attack_success"]
        assert patch["clean_accuracy"]["after"] > 0.5
        assert entry["rescan"]["report_dir"] and entry["second_trigger_found"] in (True, False)
        assert entry["second_trigger_found"] == (7 in entry["rescan"]["flagged_labels"])
        assert set(entry["scan1"]["targets"][0]["f1"]) == {"A", "B"}
        folder = out / {"tabor": "tabor", "neural_cleanse": "nc"}[m]
        assert (folder / "scan1" / "report.json").is_file() and (folder / "rescan" / "report.json").is_file()
        assert (folder / "patched.h5").is_file()
    records = sorted(p.stem for p in (out / "records").glob("*.json"))
    assert records == ["nc-patch", "nc-rescan", "nc-scan1", "original", "tabor-patch", "tabor-rescan", "tabor-scan1"]
    # the input model is never modified
    from tabor_tf.loading.files import sha256_path

    assert sha256_path(same_target_victim.model_path) == result["model_sha256"]


def _md_tables(markdown: str) -> dict:
    """``{section title: [[cells], ...]}`` of the Markdown's method tables (header row excluded)."""
    tables, title = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif title and line.startswith("| ") and not line.startswith("| stage"):
            tables[title].append([c.strip() for c in line.strip().strip("|").split("|")])
    return tables


def test_markdown_matches_json(experiment):
    out, _, result = experiment
    markdown = (out / "patch_rescan.md").read_text()
    tables = _md_tables(markdown)
    assert len(tables) == 2
    for (title, rows), m in zip(tables.items(), result["methods"]):
        assert title.startswith(result["results"][m]["title"])
        expected = result["rows"][m]
        assert [r[0] for r in rows] == ["scan 1", "rescan"] == [e["stage"] for e in expected]
        for cells, e in zip(rows, expected):
            assert cells[2] == (", ".join(map(str, e["flagged_labels"])) or "none")
            f1a, f1b, acc, asa, asb = cells[4:9]
            assert float(f1a) == pytest.approx(e["f1"]["A"], abs=0.006)
            assert float(f1b) == pytest.approx(e["f1"]["B"], abs=0.006)
            for cell, value in ((acc, e["clean_accuracy"]), (asa, e["attack_success"]["A"]),
                                (asb, e["attack_success"]["B"])):
                assert float(cell.rstrip("%")) == pytest.approx(100 * value, abs=0.06)
        # the rows agree with the stage records they come from
        entry = result["results"][m]
        assert expected[0]["clean_accuracy"] == result["original"]["clean_accuracy"]
        assert expected[1]["attack_success"] == entry["patch"]["attack_success"]["after"]
        assert expected[1]["flagged_labels"] == entry["rescan"]["flagged_labels"]
    found = [result["results"][m]["second_trigger_found"] for m in result["methods"]]
    assert markdown.count("second trigger found: ") == 2
    for f in found:
        assert f"second trigger found: {'yes' if f else 'no'}" in markdown
    assert "budget-reduced, NOT the faithful baseline" in markdown  # NC ran with --set-nc


def test_rerun_skips_finished_stages(experiment, monkeypatch, capsys):
    import tabor_tf.scanning as scanning
    import tabor_tf.unlearning as unlearning

    out, argv, first = experiment
    calls = []
    real_scan, real_patch = scanning.run_scan, unlearning.patch_from_report

    def counting_scan(*a, **k):
        calls.append(("scan", k.get("method")))
        return real_scan(*a, **k)

    def counting_patch(*a, **k):
        calls.append(("patch", None))
        return real_patch(*a, **k)

    monkeypatch.setattr(scanning, "run_scan", counting_scan)
    monkeypatch.setattr(unlearning, "patch_from_report", counting_patch)
    capsys.readouterr()
    assert main(argv) == 0
    assert calls == []  # nothing redone
    again = json.loads((out / "patch_rescan.json").read_text())
    for key in ("results", "rows", "original", "triggers"):
        assert again[key] == first[key]
    assert "second trigger found" in capsys.readouterr().out
    # an interruption before NC's rescan finished: only that stage is redone
    (out / "records" / "nc-rescan.json").unlink()
    shutil.rmtree(out / "nc" / "rescan")
    assert main(argv) == 0
    assert calls == [("scan", "neural_cleanse")]
    again = json.loads((out / "patch_rescan.json").read_text())
    assert again["results"]["tabor"] == first["results"]["tabor"]
    assert again["results"]["neural_cleanse"]["patch"] == first["results"]["neural_cleanse"]["patch"]


def test_errors(same_target_victim, tmp_path, capsys):
    v = same_target_victim
    card = json.loads(Path(v.card_path).read_text())
    clean = tmp_path / "clean-card"
    clean.mkdir()
    (clean / "card.json").write_text(json.dumps(dict(card, backdoors=[], blind_spot=False)))
    base = ["experiment", "patch-rescan", v.model_path, "--data", v.data_path, "--out", str(tmp_path / "o")]
    cases = [
        (["--truth", str(clean)], "clean"),
        (["--truth", v.card_path, "--holdout", "0"], "--holdout"),
        (["--truth", v.card_path, "--methods", "foo"], "--methods"),
        (["--truth", v.card_path, "--set-nc", "nope=1"], "nope"),
        (["--truth", v.card_path, "--epochs", "0"], "--epochs"),
    ]
    for extra, word in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert "tabor-tf: error:" in err and word in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "patch_rescan.json").exists()


def test_completed_trigger_redoes_only_the_patch_and_rescan(experiment, monkeypatch):
    """--trigger completed unlearns the completed trigger: the scans are reused, the patch is redone
    with that kind, and the setting is recorded in the JSON and the Markdown."""
    from tabor_tf import scanning, unlearning

    out, argv, first = experiment
    kinds, scans = [], []
    real_patch, real_scan = unlearning.patch_from_report, scanning.run_scan

    def recording_patch(*a, **k):
        kinds.append(k.get("trigger"))
        return real_patch(*a, **k)

    def recording_scan(*a, **k):
        scans.append(k.get("method"))
        return real_scan(*a, **k)

    monkeypatch.setattr(unlearning, "patch_from_report", recording_patch)
    monkeypatch.setattr(scanning, "run_scan", recording_scan)
    tabor_only = [a for a in argv if a != "nc"]
    assert main([*tabor_only, "--trigger", "completed"]) == 0
    again = json.loads((out / "patch_rescan.json").read_text())
    assert kinds == ["completed"] and scans == ["tabor"]  # scan 1 reused, the rescan of the new patch redone
    assert again["settings"]["trigger"] == "completed" and again["methods"] == ["tabor"]
    assert again["results"]["tabor"]["scan1"] == first["results"]["tabor"]["scan1"]
    assert "restored trigger unlearned: completed" in (out / "patch_rescan.md").read_text()
    assert main([*tabor_only, "--trigger", "whole"]) == 2


def test_outcome_and_registry():
    from tabor_tf.experiments import patch_rescan as pr

    trig = [{"name": "A", "target": 7}, {"name": "B", "target": 7}, {"name": "C", "target": 2}]
    entry = {"patch": {"labels": [7, 2]}, "rescan": {"flagged_labels": [7]}}
    assert pr.outcome(entry, trig) == {"patched_targets": [7, 2], "found_again": {"7": True, "2": False},
                                       "second_trigger_found": True}
    only_one = {"patch": {"labels": [2]}, "rescan": {"flagged_labels": [2]}}  # target 2 has one real trigger
    assert pr.outcome(only_one, trig)["second_trigger_found"] is None
    assert pr.outcome({"patch": None, "rescan": None}, trig)["second_trigger_found"] is None
    assert pr.NAME == "patch-rescan" and callable(pr.run) and callable(pr.add_arguments)
    from tabor_tf.commands.experiment import experiment_modules

    assert pr.NAME in {mod.NAME for mod in experiment_modules()}
