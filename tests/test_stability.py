"""``--seeds N``: per-seed verdicts, agreement and majority, on a tiny infected victim and on constructed lists."""

import argparse
import json

import numpy as np
import pytest

from tabor_tf.cli import main
from tabor_tf.errors import TaborError
from tabor_tf.stability import (add_seed_arguments, exit_code, pooled_decision, report_mad_side, run_scan_with_seeds,
                                seed_entry, seed_list, stability_lines, summarise)

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
    # without label scores to pool, the seeds' verdict is the majority's with the consensus labels
    assert varied["decided_by"] == "majority" and varied["verdict"] == "infected" and varied["flagged_labels"] == [7]
    assert same["verdict"] == "clean" and same["flagged_labels"] == []
    assert same["consensus_flagged"] == [] and same["label_flag_rate"] == {}
    assert seed_list(4, 3) == [4, 5, 6]
    with pytest.raises(TaborError):
        seed_list(0, 0)
    with pytest.raises(ValueError):
        summarise([])
    parser = argparse.ArgumentParser()
    add_seed_arguments(parser)
    assert parser.parse_args(["--seeds", "3"]).seeds == 3 and parser.parse_args([]).seeds == 1


# TABOR's A of labels 0..9 on the evaluation zoo's dev mnist28-resnet-two-targets (targets 1 and 8) and
# mnist28-resnet-clean-s0, seeds 0, 1, 2 (session 16 builds; docs/TABOR_CHOICES.md "Pooling the seeds")
TWO_TARGETS = [[-0.83, -6.49, -2.84, -3.73, -3.77, -1.29, -2.73, -2.50, -5.91, -1.34],
               [-0.66, -6.23, -2.92, -3.03, -3.89, -0.91, -3.12, -3.19, -5.73, -2.09],
               [-0.75, -6.79, -3.62, -4.08, -4.02, -1.67, -2.45, -3.20, -5.69, -3.23]]
CLEAN = [[-0.45, 0.02, -3.61, -4.18, -3.31, -3.49, -2.12, -2.76, -3.62, -3.62],
         [-0.32, 0.28, -4.04, -4.19, -3.26, -2.61, -1.49, -2.78, -3.57, -3.76],
         [-0.07, -0.04, -3.91, -4.13, -2.89, -2.98, -1.54, -2.44, -3.58, -3.50]]
TEN_LABEL_THRESHOLD = 2.0537


def _scored(seed, scores, flagged=(), verdict=None, threshold=TEN_LABEL_THRESHOLD, side="both", **extra):
    entry = _r(seed, verdict or ("infected" if flagged else "clean"), flagged)
    entry.update(scores={str(k): v for k, v in enumerate(scores)}, mad={"threshold": threshold, "side": side}, **extra)
    return entry


def test_pooled_scores_find_the_target_that_each_seed_masks():
    """Each seed flags only target 1: target 8's own low score widens the MAD it is measured with.
    Averaged over the seeds the labels' noise shrinks and both targets stand out."""
    per_seed = [_scored(s, a, [1]) for s, a in enumerate(TWO_TARGETS)]
    s = summarise(per_seed)
    assert s["majority_verdict"] == "infected" and s["consensus_flagged"] == [1]
    assert s["decided_by"] == "pooled" and s["verdict"] == "infected" and s["flagged_labels"] == [1, 8]
    assert s["pooled"]["anomaly_index"] > s["pooled"]["threshold"] and s["pooled"]["side"] == "both"
    assert s["pooled"]["scores"]["8"] == pytest.approx(np.mean([a[8] for a in TWO_TARGETS]))
    assert exit_code(s) == 1 and "flagged 1,8" in stability_lines(s)[-1]
    floored = [_scored(s, a, [1]) for s, a in enumerate(TWO_TARGETS)]
    for entry in floored:
        entry["mad"]["floor"] = 0.8  # TABOR's floor under the two-sided MAD: these labels spread more
    assert pooled_decision(floored)["floor"] == 0.8 and pooled_decision(floored)["flagged_labels"] == [1, 8]
    clean = summarise([_scored(s, a) for s, a in enumerate(CLEAN)])
    assert clean["verdict"] == "clean" and clean["flagged_labels"] == [] and exit_code(clean) == 0
    assert clean["pooled"]["anomaly_index"] < TEN_LABEL_THRESHOLD


def test_pooled_decision_falls_back_to_the_majority():
    two = [_scored(s, a, [1]) for s, a in enumerate(TWO_TARGETS)]
    assert pooled_decision(two)["flagged_labels"] == [1, 8]
    no_scores = [_r(0, "infected", [1]), *two[1:]]
    assert pooled_decision(no_scores) is None
    assert summarise(no_scores)["decided_by"] == "majority" and summarise(no_scores)["flagged_labels"] == [1]
    cut = [*two[:2], _scored(2, TWO_TARGETS[2], [1], time_limited=True)]  # --time-budget: half-optimised scores
    assert pooled_decision(cut) is None
    other_labels = [*two[:2], _scored(2, TWO_TARGETS[2][:9], [1])]
    assert pooled_decision(other_labels) is None
    assert pooled_decision([*two[:2], _scored(2, TWO_TARGETS[2], [1], threshold=2.6)]) is None
    assert pooled_decision([*two[:2], _scored(2, TWO_TARGETS[2], [1], side="low")]) is None
    other_floor = _scored(2, TWO_TARGETS[2], [1])
    other_floor["mad"]["floor"] = 0.8
    assert pooled_decision([*two[:2], other_floor]) is None
    nan = [*two[:2], _scored(2, [None] + TWO_TARGETS[2][1:], [1])]  # a non-finite score is written as null
    assert pooled_decision(nan) is None
    # an inconclusive seed (partial scan, low accuracy): the majority decides, never a pooled clean
    partial = [_scored(0, CLEAN[0], verdict="inconclusive"), _scored(1, CLEAN[1], verdict="inconclusive"),
               _scored(2, CLEAN[2])]
    s = summarise(partial)
    assert s["decided_by"] == "majority" and s["verdict"] == "inconclusive" and exit_code(s) == 3


def test_seed_entry_carries_scores_and_the_side_of_the_mad():
    labels = [{"label": k, "score": float(k)} for k in range(43)]
    tabor = {"method": "tabor", "verdict": "clean", "labels": labels, "settings": {"mad_side": "auto"},
             "mad": {"threshold": 2.6}}
    entry = seed_entry(0, tabor)
    assert entry["scores"]["42"] == 42.0 and entry["mad"] == {"threshold": 2.6, "side": "low", "floor": 0.0}
    floored = seed_entry(1, dict(tabor, labels=labels[:10], mad={"threshold": 2.05, "side": "both", "floor": 0.8}))
    assert floored["mad"] == {"threshold": 2.05, "side": "both", "floor": 0.8}
    assert not entry["time_limited"]
    assert report_mad_side(dict(tabor, labels=labels[:10])) == "both"  # auto: two-sided below 20 labels
    assert report_mad_side(dict(tabor, settings={"mad_side": "low"}, labels=labels[:10])) == "low"
    assert report_mad_side({"method": "neural_cleanse", "labels": labels}) == "both"
    assert report_mad_side(dict(tabor, mad={"threshold": 2.6, "side": "both"})) == "both"  # recorded side wins


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
    # the seeds' verdict: one MAD test on each label's L1 averaged over the two seeds' reports
    reports = [json.loads((tmp_path / "s" / f"seed-{s}" / "report.json").read_text()) for s in (10, 11)]
    assert all(r["mad"]["side"] == "both" for r in reports)
    mean_l1 = {str(lab["label"]): np.mean([r["labels"][i]["score"] for r in reports])
               for i, lab in enumerate(reports[0]["labels"])}
    assert summary["decided_by"] == "pooled" and summary["pooled"]["scores"] == pytest.approx(mean_l1)
    assert summary["verdict"] == "infected" and 7 in summary["flagged_labels"]


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
    assert entry["stability"]["decided_by"] == "pooled"
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
