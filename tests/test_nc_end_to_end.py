"""Neural Cleanse end to end: detection on tiny victims, checkpoints, progress, label order."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_nc_reverse import clean_images, patch_victim  # noqa: E402  (tiny linear victims)

from neural_cleanse_baseline import METHOD, preset, scan  # noqa: E402
from tabor_tf.errors import DataError, TaborError  # noqa: E402

PLUMBING = dict(steps=12, mini_batch=2, batch_size=8, patience=2, early_stop_patience=3, init_cost=0.05)


def test_scan_plumbing_progress_order_and_result():
    events = []
    cfg = preset("gtsrb", suspected_target=2, **PLUMBING)
    res = scan(patch_victim(), clean_images(24), preprocess="raw", config=cfg, seed=1, progress=events.append)
    assert res.method == METHOD and [r.label for r in res.labels] == [0, 1, 2, 3]
    assert res.settings["labels_order"] == [2, 0, 1, 3] and res.settings["seed"] == 1
    assert res.settings["patience"] == 2 and res.settings["preset"] == "gtsrb"
    # one event per step of each label, then one per finished label, in the reference order
    done = [e for e in events if e.message.startswith("label")]
    assert [e.label for e in done] == [2, 0, 1, 3] and [e.labels_done for e in done] == [1, 2, 3, 4]
    for r in res.labels:
        steps = [e.step for e in events if e.label == r.label and not e.message.startswith("label")]
        assert steps == list(range(1, r.steps + 1))
        assert r.mask.shape == (6, 6) and r.pattern.shape == (6, 6, 3)
        assert r.score == pytest.approx(r.l1) and r.l1 == pytest.approx(float(r.mask.sum()), rel=1e-5)
        assert r.stop_reason in ("early_stop", "max_steps") and r.seconds > 0
        assert {"final_cost", "reg_best", "reached_threshold", "l1_png8"} <= set(r.parts)
        json.dumps(r.summary())
    assert res.mad.median == pytest.approx(float(np.median([r.l1 for r in res.labels])))
    assert res.clean_accuracy is None  # plain array: no labels


def test_checkpoints_resume_and_are_invalidated_by_other_settings(tmp_path):
    victim, x = patch_victim(), clean_images(24)
    cfg = preset("gtsrb", **PLUMBING)
    first = scan(victim, x, preprocess="raw", labels=[0, 1, 3], config=cfg, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"nc_label_00{k}.json" for k in (0, 1, 3)]
    events = []
    # a different suspected target / MAD threshold reorders or re-decides, but reuses the triggers
    again = scan(victim, x, preprocess="raw", labels=[0, 1, 3], checkpoint_dir=tmp_path, progress=events.append,
                 config=preset("gtsrb", suspected_target=3, mad_threshold=3.0, **PLUMBING))
    assert all(e.message.startswith("label") for e in events)  # no optimisation step ran
    for a, b in zip(first.labels, again.labels):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.l1, a.steps, a.attack_success) == (b.l1, b.steps, b.attack_success)
    assert sum("reused" in n for n in again.notes) == 3
    # another seed changes the search: nothing is reused
    events.clear()
    scan(victim, x, preprocess="raw", labels=[0, 1, 3], config=cfg, seed=9, checkpoint_dir=tmp_path,
         progress=events.append)
    assert any(not e.message.startswith("label") for e in events)


def test_interrupted_scan_resumes_from_finished_labels(tmp_path):
    victim, x = patch_victim(), clean_images(24)
    cfg = preset("gtsrb", **PLUMBING)
    full = scan(victim, x, preprocess="raw", config=cfg)

    class Stop(Exception):
        pass

    def stop_in_label_2(e):
        if e.label == 2 and not e.message.startswith("label"):
            raise Stop

    with pytest.raises(Stop):
        scan(victim, x, preprocess="raw", config=cfg, checkpoint_dir=tmp_path, progress=stop_in_label_2)
    assert len(list(tmp_path.glob("*.json"))) == 2
    resumed = scan(victim, x, preprocess="raw", config=cfg, checkpoint_dir=tmp_path)
    for a, b in zip(full.labels, resumed.labels):  # per-label seeds: same as an uninterrupted scan
        np.testing.assert_allclose(a.mask, b.mask, atol=1e-6)
    assert resumed.flagged_labels == full.flagged_labels


def test_bad_input_is_a_one_line_error():
    victim = patch_victim()
    with pytest.raises(DataError, match="model expects"):
        scan(victim, np.zeros((4, 5, 5, 3), np.float32), preprocess="raw", config=preset("gtsrb", **PLUMBING))
    with pytest.raises(TaborError, match="at least 3 labels"):
        scan(victim, clean_images(8), preprocess="raw", labels=[0, 1], config=preset("gtsrb", **PLUMBING))
    with pytest.raises(TaborError, match="out of range"):
        scan(victim, clean_images(8), preprocess="raw", labels=[0, 1, 9], config=preset("gtsrb", **PLUMBING))


# ----- detection on the tiny zoo victims (tests/conftest.py) ----------------------------------
# Reduced settings keep this around a minute on two CPU cores: 400 clean images, steps of 4
# batches of 32 (not 31), at most 300 steps; the schedule is the faithful gtsrb one (patience 5,
# early-stop patience 25: shorter ones leave the clean model's norms too noisy for 10 labels).
E2E = dict(steps=300, mini_batch=4)
E2E_IMAGES = 400


def _scan_victim(tiny, **overrides):
    from tabor_tf.data import load_clean_data
    from tabor_tf.loading import load_victim

    victim = load_victim(tiny.model_path)
    data = load_clean_data(tiny.data_path, limit=E2E_IMAGES, seed=0)
    settings = dict(E2E)
    settings.update(overrides)
    return scan(victim, data, preprocess=tiny.preprocess, config=preset("gtsrb", **settings), seed=0)


def test_infected_tiny_victim_target_is_flagged_and_its_mask_overlaps_the_trigger(tiny_infected_victim):
    from tabor_tf.fidelity import trigger_fidelity
    from tabor_tf.zoo.card import true_mask

    res = _scan_victim(tiny_infected_victim)
    print("\ninfected:", res.flagged_labels, f"index {res.mad.anomaly_index:.2f} median {res.mad.median:.1f}",
          [(r.label, round(r.l1, 1), r.steps) for r in res.labels], f"{res.seconds:.0f}s")
    assert res.verdict == "infected"
    assert res.flagged_labels[0] == 7 and res.mad.anomaly_index > 2
    r7 = res.by_label(7)
    assert r7.l1 == min(r.l1 for r in res.labels) and r7.attack_success > 0.9
    fid = trigger_fidelity(r7.mask, true_mask(tiny_infected_victim.card_path, 7))
    print("fidelity", fid)
    assert fid["precision"] > 0.3 and fid["recall"] > 0.3
    assert res.clean_accuracy > 0.9


def test_clean_tiny_victim_is_not_flagged(tiny_clean_victim):
    res = _scan_victim(tiny_clean_victim)
    print("\nclean:", res.flagged_labels, f"index {res.mad.anomaly_index:.2f} median {res.mad.median:.1f}",
          [(r.label, round(r.l1, 1), r.steps) for r in res.labels], f"{res.seconds:.0f}s")
    assert res.verdict == "clean" and res.flagged_labels == []
    assert res.mad.anomaly_index < 2
