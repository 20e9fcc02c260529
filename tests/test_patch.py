"""Patch then rescan (issue 4): unlearn ONE restored trigger of the two-target tiny victim with
``tabor-tf patch``, check that backdoor weakens while the other keeps working, and that a rescan
of the patched model still finds the other target. Also the patch command's input errors."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tabor_tf.cli import main
from tabor_tf.errors import TaborError

SCAN = dict(method="tabor", preset="fast", seed=0, max_samples=300, html=False)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_target_scan(tiny_two_target_victim, tmp_path_factory):
    from tabor_tf.scanning import run_scan

    out = tmp_path_factory.mktemp("scan-two-targets")
    result, report = run_scan(tiny_two_target_victim.model_path, tiny_two_target_victim.data_path, out_dir=out,
                              preprocess=tiny_two_target_victim.preprocess, **SCAN)
    assert report["preprocess"]["mode"] == "unit"
    assert set(tiny_two_target_victim.targets) <= set(report["flagged_labels"])
    return out, report


def test_patch_one_trigger_then_rescan_finds_the_other(tiny_two_target_victim, tiny_signs, two_target_scan,
                                                       tmp_path, capsys):
    from tabor_tf.data import load_clean_data
    from tabor_tf.scanning import run_scan
    from tabor_tf.unlearning import evaluate_backdoor, load_trainable
    from tabor_tf.zoo.card import load_card

    tiny = tiny_two_target_victim
    report_dir, report = two_target_scan
    first = next(k for k in report["flagged_labels"] if k in tiny.targets)  # most suspicious true target
    other = next(t for t in tiny.targets if t != first)
    card = load_card(tiny.card_path)
    true = {int(bd["target"]): (m, p, int(bd["target"]))
            for bd, m, p in zip(card.data["backdoors"], card.masks, card.patterns)}
    # fine-tuning data: 1000 labelled training images (800 fine-tune the model, 200 measure it)
    tune = tmp_path / "tune.npz"
    np.savez(tune, x=tiny_signs.x_train[:1000], y=tiny_signs.y_train[:1000])
    before_hash = _sha(tiny.model_path)
    patched = tmp_path / "patched.h5"
    status = main(["patch", tiny.model_path, "--report", str(report_dir), "--label", str(first),
                   "--data", str(tune), "--out", str(patched), "--quiet", "--json"])
    record = json.loads(capsys.readouterr().out)
    assert status == 0 and patched.is_file() and _sha(tiny.model_path) == before_hash
    assert record["labels"] == [first] and record["preprocess"] == "unit" and not record["warnings"]
    assert record["after"]["attack_success"][0] < 0.5 <= record["before"]["attack_success"][0]
    assert json.loads(Path(str(patched) + ".patch.json").read_text()) == record
    # the real triggers, measured on held-out clean images: the patched one falls, the other stays
    held = load_clean_data(tiny.data_path, limit=500, seed=1)
    trigs = [true[first], true[other]]
    was = evaluate_backdoor(load_trainable(tiny.model_path), held.x, held.y, tiny.preprocess, trigs)
    now = evaluate_backdoor(load_trainable(patched), held.x, held.y, tiny.preprocess, trigs)
    print(f"\npatched label {first}: attack success {was['attack_success']} -> {now['attack_success']}, "
          f"clean accuracy {was['clean_accuracy']:.3f} -> {now['clean_accuracy']:.3f}")
    assert now["attack_success"][0] < 0.5 * was["attack_success"][0]
    assert now["attack_success"][1] > 0.8 and was["attack_success"][1] > 0.9
    assert now["clean_accuracy"] > was["clean_accuracy"] - 0.06
    # a rescan of the patched model still finds the other backdoor
    _, rescan = run_scan(str(patched), tiny.data_path, out_dir=None, preprocess=tiny.preprocess, **SCAN)
    print(f"rescan flagged {rescan['flagged_labels']} (anomaly index {rescan['anomaly_index']})")
    assert other in rescan["flagged_labels"] and rescan["verdict"] == "infected"


def test_triggers_from_report_and_patch_errors(two_target_scan, tiny_two_target_victim, tmp_path, capsys):
    from tabor_tf.unlearning import triggers_from_report

    report_dir, report = two_target_scan
    triggers, loaded = triggers_from_report(report_dir)  # default: every flagged label, most suspicious first
    assert [t[2] for t in triggers] == report["flagged_labels"]
    mask, pattern, label = triggers_from_report(report_dir / "report.json", [2])[0][0]
    assert label == 2 and mask.shape == (32, 32) and pattern.shape == (32, 32, 3)
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and pattern.max() <= 255.0
    with pytest.raises(TaborError, match="not scanned"):
        triggers_from_report(report_dir, [42])
    # the completed (whole) trigger of a flagged label is what --trigger completed unlearns
    whole, _, _ = triggers_from_report(report_dir, [2], trigger="completed")[0][0]
    entry = next(e for e in report["labels"] if e["label"] == 2)
    assert np.array_equal(whole, np.load(report_dir / entry["files"]["completed_mask_npy"]))
    prune = entry["parts"]["completion"].get("prune") or {}
    if prune.get("accepted"):  # peeling started from the restored trigger's smallest working part
        assert prune["l1_before"] == pytest.approx(float(mask.sum()), rel=1e-3)
        assert prune["l1"] <= 0.5 * prune["l1_before"] + 1e-6 and float(whole.sum()) >= prune["l1"] - 1e-3
    else:
        assert np.all(whole >= mask - 1e-6)  # the union keeps the minimal trigger
    with pytest.raises(TaborError, match="trigger must be one of"):
        triggers_from_report(report_dir, [2], trigger="largest")
    # usage / input errors: one line, exit 2, nothing written
    model = tiny_two_target_victim.model_path
    cases = [
        ["--report", str(report_dir), "--data", tiny_two_target_victim.data_path, "--out", str(tmp_path / "p.pb")],
        ["--report", str(tmp_path / "nope"), "--data", tiny_two_target_victim.data_path,
         "--out", str(tmp_path / "p.h5")],
        ["--report", str(report_dir), "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "p.h5")],
        ["--report", str(report_dir), "--data", tiny_two_target_victim.data_path, "--out", model],
        ["--report", str(report_dir), "--data", tiny_two_target_victim.data_path, "--out", str(tmp_path / "p.h5"),
         "--label", "42"],
    ]
    for extra in cases:
        assert main(["patch", model, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert "tabor-tf: error:" in err and "Traceback" not in err
    assert not list(tmp_path.glob("p.*"))
    # unlabelled data cannot be used to unlearn
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, np.load(tiny_two_target_victim.data_path)["x"][:50])
    assert main(["patch", model, "--report", str(report_dir), "--data", str(unlabelled),
                 "--out", str(tmp_path / "p.h5")]) == 2
    assert "labelled" in capsys.readouterr().err


def test_split_holdout():
    from tabor_tf.commands.patch import split_holdout

    tune, held = split_holdout(100, 0.2, 0)
    assert len(held) == 20 and len(tune) == 80 and not set(tune) & set(held)
    assert sorted(np.concatenate([tune, held]).tolist()) == list(range(100))
    assert len(split_holdout(3, 0.01, 0)[1]) == 1 and len(split_holdout(10, 0.0, 0)[1]) == 0


def test_patch_summary_lines():
    from tabor_tf.commands.patch import summary_lines

    record = {"model_path": "p.h5", "labels": [7, 2], "fine_tune_images": 800, "eval_images": 200,
              "settings": {"epochs": 1, "fraction_with_trigger": 0.2},
              "before": {"clean_accuracy": 0.92, "attack_success": [0.99, 0.97]},
              "after": {"clean_accuracy": 0.915, "attack_success": [0.04, None]}}
    text = "\n".join(summary_lines(record))
    assert "label(s) 7, 2" in text and "800 images" in text and "92.0% -> 91.5%" in text
    assert "label 7: 99.0% -> 4.0%" in text and "label 2: 97.0% -> -" in text
