"""The Neural Cleanse budget scheduler option (not faithful, off by default)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from test_nc_reverse import clean_images, patch_victim  # noqa: E402

from neural_cleanse_baseline import preset, scan  # noqa: E402

PLUMBING = dict(steps=12, mini_batch=2, batch_size=8, patience=2, early_stop_patience=3, init_cost=0.05)


def test_faithful_default_has_no_scheduler_and_the_option_is_named_as_unfaithful():
    assert preset("gtsrb").scheduler == "none" and preset("reference-defaults").scheduler == "none"
    cfg = preset("gtsrb-scheduled-unfaithful")
    assert cfg.scheduler == "retire" and cfg.preset == "gtsrb-scheduled-unfaithful"
    assert cfg.steps == preset("gtsrb").steps  # the same search for the labels that run in full


def test_scheduled_scan_retires_high_labels_and_runs_the_rest_exactly_as_the_faithful_scan(tmp_path):
    victim, x = patch_victim(), clean_images(24)
    faithful = scan(victim, x, preprocess="raw", config=preset("gtsrb", **PLUMBING), seed=1)
    cfg = preset("gtsrb", scheduler="retire", scheduler_warmup_steps=8, scheduler_margin=0.0,
                 scheduler_max_fraction=0.45, **PLUMBING)
    sched = scan(victim, x, preprocess="raw", config=cfg, seed=1, checkpoint_dir=tmp_path)
    reasons = {r.label: r.stop_reason for r in sched.labels}
    retired = [k for k, v in reasons.items() if v == "retired"]
    assert len(retired) == 1  # floor(0.45 * 4) labels at most
    for a, b in zip(faithful.labels, sched.labels):
        if b.stop_reason == "retired":
            assert b.steps == 8 and b.l1 >= faithful.mad.median  # a warm-up trigger, above the median
            assert b.l1 == max(r.l1 for r in sched.labels)  # the highest warm-up norm goes first
        else:  # run in full from the same seed: the faithful result
            np.testing.assert_allclose(a.mask, b.mask, atol=1e-6)
            assert a.steps == b.steps
    assert sched.flagged_labels == faithful.flagged_labels
    assert any("not faithful" in n for n in sched.notes)
    assert len(list((tmp_path / "warmup").glob("*.json"))) == 4  # warm-up results are checkpointed too
