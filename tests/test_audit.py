"""``tabor-tf audit``: TF Serving versions, folders with a corrupt file, manifests, reuse of earlier scans."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from tabor_tf.audit import AuditItem, discover, exit_status, read_manifest
from tabor_tf.cli import main

# tiny Neural Cleanse budget: the point is the audit's behaviour, not the detector's accuracy
NC_FAST = ["--method", "nc", "--set", "mini_batch=2", "--set", "steps=12", "--set", "batch_size=16",
           "--max-samples", "200", "--no-html", "--quiet"]


@pytest.fixture(scope="module")
def serving(tiny_clean_victim, tiny_infected_victim, tmp_path_factory):
    """``signs/1`` = the clean victim, ``signs/2`` = the infected one, as SavedModels (TF Serving layout)."""
    import keras

    base = tmp_path_factory.mktemp("serving") / "signs"
    for version, victim in ((1, tiny_clean_victim), (2, tiny_infected_victim)):
        keras.models.load_model(victim.model_path, compile=False).export(str(base / str(version)), verbose=False)
    return base


def _summary(out: Path) -> dict:
    return json.loads((out / "audit.json").read_text(encoding="utf-8"))


def test_serving_all_versions_then_latest_and_reuse(serving, tiny_clean_victim, tmp_path, capsys):
    data = tiny_clean_victim.data_path
    out = tmp_path / "audit"
    rc = main(["audit", str(serving), "--data", data, *NC_FAST, "--out", str(out)])
    summary = _summary(out)
    ids = [e["id"] for e in summary["models"]]
    assert ids == ["signs-v1", "signs-v2"]
    assert all(e["status"] == "scanned" for e in summary["models"])
    for e in summary["models"]:
        report = json.loads((out / e["id"] / "report.json").read_text())
        assert report["model"]["version"] == e["version"]
        assert report["audit"]["model_sha256"] == e["model_sha256"] and len(e["model_sha256"]) == 64
        assert report["verdict"] == e["verdict"] and report["flagged_labels"] == e["flagged_labels"]
        assert e["seconds"] > 0
        if e["anomaly_index"] is not None:  # the calibrated probability rises with the index
            assert 0.0 < e["trojan_probability"] < 1.0
    probs = sorted((e["anomaly_index"], e["trojan_probability"]) for e in summary["models"])
    assert probs[0][1] <= probs[-1][1]
    # Neural Cleanse's shipped calibration (held-out AUC 0.12 on its zoo) is provisional, and says why
    assert summary["calibration"]["provisional"] is True
    assert any("AUC" in r for r in summary["calibration"]["provisional_reasons"])
    assert all(e["probability_validated"] is False for e in summary["models"])
    assert rc == (1 if any(e["verdict"] == "infected" for e in summary["models"]) else 0) == summary["exit_status"]
    md = (out / "audit.md").read_text()
    assert "signs-v1" in md and "signs-v2" in md and "| model | verdict |" in md
    capsys.readouterr()

    # the same audit again: nothing rescanned, same verdicts, and it says so
    rc2 = main(["audit", str(serving), "--data", data, *NC_FAST, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert rc2 == rc
    assert [e["status"] for e in again["models"]] == ["reused", "reused"]
    assert again["counts"]["reused"] == 2
    assert [e["verdict"] for e in again["models"]] == [e["verdict"] for e in summary["models"]]
    assert again["seconds"] < summary["seconds"] / 3

    # a changed setting is a new scan; --versions latest scans only version 2
    rc3 = main(["audit", str(serving), "--data", data, *NC_FAST, "--set", "steps=13", "--versions", "latest",
                "--out", str(out), "--json"])
    latest = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in latest["models"]] == ["signs-v2"]
    assert latest["models"][0]["status"] == "scanned"
    assert rc3 in (0, 1)


def test_folder_with_a_corrupt_file_reports_the_others(tiny_clean_victim, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_clean_victim.model_path, folder / "good.h5")
    (folder / "broken.keras").write_bytes(b"PK\x03\x04 this zip is cut short")
    (folder / "notes.txt").write_text("not a model")
    out = tmp_path / "audit"
    rc = main(["audit", str(folder), "--data", tiny_clean_victim.data_path, *NC_FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    summary = _summary(out)
    by_id = {e["id"]: e for e in summary["models"]}
    assert set(by_id) == {"good", "broken"}
    assert by_id["broken"]["status"] == "error" and "broken.keras" in by_id["broken"]["error"]
    assert by_id["good"]["status"] == "scanned" and by_id["good"]["verdict"] in ("clean", "infected")
    assert (out / "good" / "report.json").is_file()
    assert summary["errors"] == ["broken"] and summary["exit_status"] == 2
    assert "tabor-tf: error: broken:" in err and "Traceback" not in err
    assert "error" in (out / "audit.md").read_text()


def test_manifests_json_and_csv(tiny_clean_victim, tmp_path):
    v = tiny_clean_victim
    root = tmp_path / "job"
    (root / "m").mkdir(parents=True)
    shutil.copy(v.model_path, root / "m" / "a.h5")
    shutil.copy(v.data_path, root / "clean.npz")
    rows = [{"model": "m/a.h5", "data": "clean.npz", "preprocess": "unit", "labels": "0-4"},
            {"model": "m/missing.h5", "data": "clean.npz"}]
    (root / "jobs.json").write_text(json.dumps(rows))
    with open(root / "jobs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["model", "data", "preprocess", "labels"])
        w.writeheader()
        w.writerows([dict({"preprocess": "", "labels": ""}, **r) for r in rows])
    items_json = read_manifest(root / "jobs.json")
    items_csv = read_manifest(root / "jobs.csv")
    assert [i.model_id for i in items_json] == ["a", "missing"] == [i.model_id for i in items_csv]
    assert items_json[0].path == str(root / "m" / "a.h5") and items_json[0].data == str(root / "clean.npz")
    assert items_json[0].preprocess == "unit" == items_csv[0].preprocess and items_json[0].labels == "0-4"
    assert items_csv[1].preprocess is None

    out = tmp_path / "audit"
    rc = main(["audit", str(root / "jobs.json"), *NC_FAST, "--out", str(out)])
    summary = _summary(out)
    a, missing = summary["models"]
    assert rc == 2 and missing["status"] == "error" and "model not found" in missing["error"]
    report = json.loads((out / "a" / "report.json").read_text())
    assert [e["label"] for e in report["labels"]] == [0, 1, 2, 3, 4]  # the manifest's labels
    assert report["preprocess"]["mode"] == "unit"
    rc_csv = main(["audit", str(root / "jobs.csv"), *NC_FAST, "--out", str(tmp_path / "audit-csv")])
    assert rc_csv == 2 and _summary(tmp_path / "audit-csv")["models"][0]["status"] == "scanned"


def test_discovery_and_exit_precedence(tmp_path, capsys):
    with pytest.raises(Exception, match="no models found"):
        discover(tmp_path)
    assert main(["audit", str(tmp_path / "nope"), "--data", "x.npz", "--quiet"]) == 2
    assert "audit path not found" in capsys.readouterr().err
    (tmp_path / "x.keras").write_bytes(b"")
    (tmp_path / "x.h5").write_bytes(b"")
    assert [i.model_id for i in discover(tmp_path, data="d")] == ["x", "x-2"]
    zoo = tmp_path / "zoo"
    (zoo / "victim-a").mkdir(parents=True)
    (zoo / "victim-a" / "weights.keras").write_bytes(b"")
    (zoo / "victim-b").mkdir()
    (zoo / "victim-b" / "card.json").write_text(json.dumps({"model_file": "net.h5"}))
    (zoo / "victim-b" / "net.h5").write_bytes(b"")
    (zoo / "victim-b" / "other.h5").write_bytes(b"")
    (zoo / "no-model").mkdir()
    found = discover(zoo, data="d", versions="latest")
    assert [(i.model_id, Path(i.path).name) for i in found] == [("victim-a", "weights.keras"), ("victim-b", "net.h5")]
    with pytest.raises(Exception, match="--versions"):
        discover(zoo, versions="newest")

    def s(*pairs):
        return {"models": [{"status": st, "verdict": vd} for st, vd in pairs]}

    assert exit_status(s(("scanned", "clean"), ("reused", "clean"))) == 0
    assert exit_status(s(("scanned", "clean"), ("scanned", "infected"))) == 1
    assert exit_status(s(("scanned", "infected"), ("error", None))) == 2  # unscannable wins
    assert AuditItem("m", "/b", "d", version=3).model_dir() == Path("/b/3")


def test_audit_usage_errors_exit_2(tiny_clean_victim, tmp_path, capsys):
    v = tiny_clean_victim
    before = (Path(v.model_path).read_bytes(), Path(v.data_path).read_bytes())
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    cases = [
        (["--out", str(blocker / "out")], "cannot write"),
        (["--set", "no_such_setting=1"], "valid keys"),
        (["--seeds", "0"], "--seeds"),
        (["--preprocess", "bgrx"], "preprocessing mode"),
    ]
    for extra, message in cases:
        rc = main(["audit", v.model_path, "--data", v.data_path, *NC_FAST, "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "o" / "audit.json").exists()
    assert (Path(v.model_path).read_bytes(), Path(v.data_path).read_bytes()) == before


def test_interrupted_audit_resumes_without_rescanning(tiny_clean_victim, tmp_path):
    import contextlib

    from tabor_tf.audit import AuditSettings, run_audit

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("a.h5", "b.h5"):
        shutil.copy(tiny_clean_victim.model_path, folder / name)
    items = discover(folder, data=tiny_clean_victim.data_path)
    settings = AuditSettings(method="neural_cleanse", overrides=(("batch_size", 16), ("mini_batch", 2), ("steps", 8)),
                             max_samples=200, html=False)
    out = tmp_path / "audit"

    def ctrl_c_on_b(item, seed):
        if item.model_id == "b":
            raise KeyboardInterrupt
        return contextlib.nullcontext(None)

    with pytest.raises(KeyboardInterrupt):
        run_audit(items, out, settings, progress_for=ctrl_c_on_b)
    partial = _summary(out)
    assert partial["complete"] is False and partial["exit_status"] is None
    assert [e["status"] for e in partial["models"]] == ["scanned", "pending"]
    assert "still running or interrupted" in (out / "audit.md").read_text()
    summary = run_audit(items, out, settings)
    assert [e["status"] for e in summary["models"]] == ["reused", "scanned"]
    assert summary["complete"] is True and summary["exit_status"] in (0, 1)
