"""TABOR end to end on the tiny victims of conftest: detection, result contents, checkpoints, errors."""

import json

import numpy as np
import pytest

from tabor_tf.data import load_clean_data
from tabor_tf.errors import DataError, TaborError
from tabor_tf.loading import load_victim
from tabor_tf.tabor import METHOD, TERM_NAMES, preset, scan
from tabor_tf.tabor.quality import PART_NAMES

SEED = 0


def fast(**kw):
    return preset("fast", **kw)


def load(v, limit=300):
    return load_victim(v.model_path), load_clean_data(v.data_path, limit=limit, seed=0)


def test_infected_model_flags_its_target(tiny_infected_victim):
    victim, data = load(tiny_infected_victim)
    events = []
    res = scan(victim, data, preprocess=tiny_infected_victim.preprocess, config=fast(), seed=SEED,
               progress=events.append)
    assert res.method == METHOD and res.verdict == "infected"
    assert res.flagged_labels == tiny_infected_victim.targets == [7]
    target = res.by_label(7)
    assert target.attack_success > 0.9 and target.score == min(r.score for r in res.labels)
    # the restored trigger sits on the true one (bottom-right 4x4 square with a 1 px margin)
    assert target.mask[26:31, 26:31].sum() > 0.5 * target.mask.sum()
    # every label reports the five parts of A, its lambdas and its terms
    for r in res.labels:
        assert set(PART_NAMES) <= set(r.parts) and r.parts["A"] == pytest.approx(r.score)
        assert r.score == pytest.approx(sum(r.parts[k] for k in PART_NAMES))
        assert set(r.parts["lambdas"]) == set(TERM_NAMES) and set(r.parts["terms"]) == set(TERM_NAMES)
        assert r.l1 == pytest.approx(float(r.mask.sum()), rel=1e-4) and r.steps > 0
        json.dumps(r.summary())
    assert res.settings["preset"] == "fast" and res.settings["seed"] == SEED
    assert res.settings["image_steps"] > 0 and res.clean_accuracy > 0.9
    # where the time went: every phase timed, the phases within the scan's wall time, the search the largest
    phases = res.settings["phase_seconds"]
    assert set(phases) == {"preparation", "search", "scoring", "confirmation"}
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= res.seconds + 0.01
    assert phases["search"] > 0 and phases["confirmation"] > 0  # target 7 was confirmed from fresh starts
    assert events and events[-1].labels_done == 10 and {e.method for e in events} == {METHOD}


def test_clean_model_flags_nothing(tiny_clean_victim):
    victim, data = load(tiny_clean_victim)
    res = scan(victim, data, preprocess=tiny_clean_victim.preprocess, config=fast(), seed=SEED)
    assert res.verdict == "clean" and res.flagged_labels == []


def test_two_targets_are_both_flagged(tiny_two_target_victim):
    victim, data = load(tiny_two_target_victim)
    res = scan(victim, data, preprocess=tiny_two_target_victim.preprocess, config=fast(), seed=SEED)
    assert set(tiny_two_target_victim.targets) <= set(res.flagged_labels)


def test_checkpoint_reuse_unlabelled_data_and_input_errors(tiny_infected_victim, tmp_path):
    victim, data = load(tiny_infected_victim, limit=120)
    cfg = fast(steps=16, round_steps=8, eval_images=60)
    first = scan(victim, data.x, preprocess="unit", labels=[0, 7, 3], config=cfg, checkpoint_dir=tmp_path)
    assert res_labels(first) == [0, 3, 7] and first.clean_accuracy is None  # plain array: no labels
    assert first.settings["reference_labels"] == "model predictions"
    events = []
    # another metric setting reuses the triggers: no optimisation round runs again
    again = scan(victim, data.x, preprocess="unit", labels=[7, 0, 3], checkpoint_dir=tmp_path, progress=events.append,
                 config=fast(steps=16, round_steps=8, eval_images=60, mad_threshold=3.0))
    assert all(e.message.startswith("label") for e in events) and any("reused" in n for n in again.notes)
    for a, b in zip(first.labels, again.labels):
        np.testing.assert_array_equal(a.mask, b.mask)
    # the floor under the few-label MAD is a decision setting too; where it sets the scale, the scan says so
    floored = scan(victim, data.x, preprocess="unit", labels=[0, 7, 3], checkpoint_dir=tmp_path,
                   config=fast(steps=16, round_steps=8, eval_images=60, mad_floor=1000.0))
    assert any("reused" in n for n in floored.notes) and floored.flagged_labels == []
    assert floored.mad.mad == floored.mad.floor == 1000.0 and floored.mad.side == "both"
    assert any("agree closely" in n and "mad_floor" in n for n in floored.notes)
    assert [r.score for r in floored.labels] == [r.score for r in first.labels]
    with pytest.raises(DataError, match="shape"):
        scan(victim, data.x[:, :16], preprocess="unit", config=cfg)
    with pytest.raises(TaborError, match="at least 3"):
        scan(victim, data.x, preprocess="unit", labels=[1, 2], config=cfg)
    with pytest.raises(TaborError, match="auto"):
        scan(victim, data.x, preprocess="auto", config=cfg)
    with pytest.raises(TaborError, match="out of range"):
        scan(victim, data.x, preprocess="unit", labels=[0, 1, 10], config=cfg)
    with pytest.raises(TaborError, match="unknown TABOR setting"):
        preset("fast", stepz=3)


def res_labels(res):
    return [r.label for r in res.labels]


def test_scan_on_black_background_data_can_run_without_r4(tiny_clean_victim, tmp_path):
    """With ``overlay_on_black_background=drop`` a scan on data whose background is black switches R4
    off (l6 = 0), says so in its notes, and its saved triggers are those of an explicit ``l6=0`` scan
    (same fingerprint: reused); the default keeps R4 on the same data."""
    victim, data = load(tiny_clean_victim, limit=60)
    dark = data.x.copy()
    dark[:, :, :20] = 0.0  # the left 20 columns black (>= half of the pixels)
    cfg = fast(steps=10, round_steps=5, eval_images=30, overlay_on_black_background="drop")
    res = scan(victim, dark, preprocess="unit", labels=[0, 1, 2], config=cfg, checkpoint_dir=tmp_path)
    assert res.settings["l6"] == 0.0 and any("R4" in n and "switched off" in n for n in res.notes)
    assert all(r.parts["lambdas"]["overlay"] == 0.0 for r in res.labels)
    explicit = scan(victim, dark, preprocess="unit", labels=[0, 1, 2], checkpoint_dir=tmp_path,
                    config=fast(steps=10, round_steps=5, eval_images=30, l6=0.0))
    assert any("reused" in n for n in explicit.notes)
    kept = scan(victim, dark, preprocess="unit", labels=[0, 1, 2], checkpoint_dir=tmp_path,
                config=fast(steps=10, round_steps=5, eval_images=30))
    assert kept.settings["l6"] == cfg.l6 > 0 and not any("switched off" in n for n in kept.notes)
    assert not any("reused" in n for n in kept.notes)
    plain = scan(victim, data.x, preprocess="unit", labels=[0, 1, 2], config=cfg)
    assert plain.settings["l6"] == cfg.l6 and not any("switched off" in n for n in plain.notes)
