"""``--seeds N``: per-seed verdicts, agreement and majority, on a tiny infected victim and on constructed lists."""

import argparse
import json

import pytest

from tabor_tf.cli import main
from tabor_tf.errors import TaborError
from tabor_tf.stability import add_seed_arguments, exit_code, run_scan_with_seeds, seed_list, stability_lines, summarise

NC_SETTINGS = {"mini_batch": 3, "steps": 30}


def _r(seed, verdict, flagged=()):
    return {"seed": seed, "verdict": verdict, "flagged_labels": list(flagged), "anomaly_index": 1.0}


def test_summarise_agreement_majority_and_ties():
    s = summarise([_r(0, "infected", [7]), _r(1, "infected", [7]), _r(2, "clean"), _r(3, "infected", [7, 2])])
    assert s["majority_verdict"] == "infected" and s["verdict_agreement"] == 0.75
    assert s["majority_flagged"] == [7] and s["flagged_agreement"] == 0.5
    assert s["seeds"] == [0, 1, 2, 3] and not s["unanimous"] and exit_code(s) == 1
    tie = summarise([_r(0, "clean"), _r(1, "infected", [3])])
    assert tie["majority_verdict"] == "infected" and tie["verdict_agreement"] == 0.5  # a tie does not pass
    same = summarise([_r(5, "clean"), _r(6, "clean")])
    assert same["unanimous"] and same["majority_flagged"] == [] and exit_code(same) == 0
    assert s["label_flag_rate"] == {"2": 0.25, "7": 0.75} and s["consensus_flagged"] == [7]
    # each seed adds a different extra label: no flagged set repeats, the consensus is the target
    varied = summarise([_r(0, "infected", [7, 20]), _r(1, "infected", [7, 33]), _r(2, "infected", [7])])
    assert varied["flagged_agreement"] == pytest.approx(1 / 3) and varied["consensus_flagged"] == [7]
    assert "flagged by most seeds: {7}" in stability_lines(varied)[-1]
    assert same["consensus_flagged"] == [] and same["label_flag_rate"] == {}
    assert seed_list(4, 3) == [4, 5, 6]
    with pytest.raises(TaborError):
        seed_list(0, 0)
    with pytest.raises(ValueError):
        summarise([])
    parser = argparse.ArgumentParser()
    add_seed_arguments(parser)
    assert parser.parse_args(["--seeds", "3"]).seeds == 3 and parser.parse_args([]).seeds == 1


def test_seeds_on_a_tiny_infected_victim(tiny_infected_victim, tmp_path):
    v = tiny_infected_victim
    summary = run_scan_with_seeds(2, 10, tmp_path / "s", model_path=v.model_path, data_path=v.data_path,
                                  method="nc", overrides=NC_SETTINGS, max_samples=300, html=False)
    assert summary["seeds"] == [10, 11]
    for entry in summary["per_seed"]:
        report = json.loads((tmp_path / "s" / f"seed-{entry['seed']}" / "report.json").read_text())
        assert report["seed"] == entry["seed"] and report["verdict"] == entry["verdict"]
        assert report["flagged_labels"] == entry["flagged_labels"]
    assert summary["majority_verdict"] == "infected" and 7 in summary["majority_flagged"]
    # the agreement is the share of seeds that gave the majority verdict (with 2 seeds: 0.5 or 1.0)
    agreeing = sum(e["verdict"] == summary["majority_verdict"] for e in summary["per_seed"])
    assert agreeing >= 1 and summary["verdict_agreement"] == agreeing / 2
    on_disk = json.loads((tmp_path / "s" / "stability.json").read_text())
    assert on_disk["per_seed"] == summary["per_seed"]


def test_audit_with_seeds(tiny_infected_victim, tmp_path, capsys):
    v = tiny_infected_victim
    out = tmp_path / "audit"
    args = ["audit", v.model_path, "--data", v.data_path, "--method", "nc", "--set", "mini_batch=3",
            "--set", "steps=30", "--max-samples", "300", "--seeds", "2", "--seed", "3", "--no-html", "--quiet",
            "--out", str(out), "--json"]
    rc = main(args)
    summary = json.loads(capsys.readouterr().out)
    (entry,) = summary["models"]
    assert entry["stability"]["seeds"] == [3, 4] and len(entry["per_seed"]) == 2
    assert entry["verdict"] == "infected" and 7 in entry["flagged_labels"] and rc == 1
    assert (out / entry["id"] / "seed-3" / "report.json").is_file()
    assert (out / entry["id"] / "stability.json").is_file()
    assert "% of seeds" in (out / "audit.md").read_text()
    assert main(args) == 1  # rerun: reused, not rescanned
    assert json.loads(capsys.readouterr().out)["models"][0]["status"] == "reused"


def test_scan_wiring_helper_with_the_scan_options(tiny_infected_victim, tmp_path, capsys):
    """What ``scan --seeds 2`` does once the lead adds the 3 lines: scan's own parser + add_seed_arguments."""
    from tabor_tf.commands import scan as scan_cmd
    from tabor_tf.scanning import parse_overrides, prepare
    from tabor_tf.stability import run_seeds_for_scan

    v = tiny_infected_victim
    parser = argparse.ArgumentParser()
    scan_cmd.add_arguments(parser)
    if not any(a.dest == "seeds" for a in parser._actions):
        add_seed_arguments(parser)
    args = parser.parse_args([v.model_path, "--data", v.data_path, "--method", "nc", "--set", "mini_batch=2",
                              "--set", "steps=10", "--seeds", "2", "--seed", "7", "--no-html", "--json"])
    prepared = prepare(args.model, args.data, max_samples=200)
    rc = run_seeds_for_scan(args, method="neural_cleanse", labels=None,
                            overrides=parse_overrides(args.overrides, "nc"), prepared=prepared, out_dir=tmp_path)
    summary = json.loads(capsys.readouterr().out)
    assert summary["seeds"] == [7, 8] and rc == (1 if summary["majority_verdict"] == "infected" else 0)
    assert (tmp_path / "seed-8" / "report.json").is_file() and (tmp_path / "stability.json").is_file()
