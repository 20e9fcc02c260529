"""The TABOR budget scheduler: retirement rule on constructed score trajectories, and in the engine."""

import numpy as np
import pytest

from tabor_tf.outliers import mad_test
from tabor_tf.tabor import scheduler as sched
from tabor_tf.tabor.scheduler import RetireSettings, provisional_scores, retire


def test_nothing_retires_during_the_warm_up_or_below_the_margin():
    s = np.array([1.0, 2.0, 2.1, 2.2, 2.3, 2.4, 5.0])
    all_on = np.ones(7, bool)
    st = RetireSettings(warmup_rounds=4, margin=1.0, max_fraction=0.45)
    assert not retire(s, s, 10, all_on, all_on, np.zeros(7, bool), 3, st).any()
    out = retire(s, s, 10, all_on, all_on, np.zeros(7, bool), 4, st)
    assert out.tolist() == [False] * 6 + [True]  # only the label far above the median
    # the low outlier is never retired, whatever the margin
    assert not retire(s, s, 10, all_on, all_on, np.zeros(7, bool), 4, RetireSettings(1, 0.0, 0.45))[0]


def test_only_active_labels_that_reached_phi_retire_highest_first_within_the_cap():
    s = np.array([0.0, 0.8, 0.9, 1.0, 1.1, 1.2, 1.0, 0.9, 1.1, 1.0, 6.0, 7.0, 8.0, 9.0])
    k = len(s)
    active = np.ones(k, bool)
    reached = np.ones(k, bool)
    reached[13] = False  # the highest has not reached phi: a later success could still shrink it a lot
    active[12] = False  # converged already
    st = RetireSettings(warmup_rounds=1, margin=0.5, max_fraction=0.2)  # room for floor(0.2 * 14) = 2
    out = retire(s, s, 10, active, reached, np.zeros(k, bool), 5, st)
    assert np.flatnonzero(out).tolist() == [10, 11]
    # with one label already retired only one more fits, the highest eligible one
    earlier = np.zeros(k, bool)
    earlier[13] = True
    out = retire(s, s, 10, active & ~earlier, reached, earlier, 5, st)
    assert np.flatnonzero(out).tolist() == [11]


def test_a_label_still_shrinking_fast_is_not_retired():
    s = np.array([1.0, 2.0, 2.1, 2.2, 2.3, 2.4, 5.0])
    earlier = s.copy()
    earlier[6] = 8.0  # dropped by 3.0 in the last 5 rounds: one more such window takes it to 2.0
    st = RetireSettings(warmup_rounds=1, margin=1.0, max_fraction=0.45, window=5)
    on = np.ones(7, bool)
    assert not retire(s, earlier, 20, on, on, np.zeros(7, bool), 5, st).any()
    # 2 rounds left: at most 0.4 of a window's drop (5 - 1.2 = 3.8), still far above the median
    assert retire(s, earlier, 2, on, on, np.zeros(7, bool), 5, st)[6]
    np.testing.assert_allclose(sched.final_bound([5.0], [6.0], 10, 5), [3.0])


def test_provisional_score_is_the_log_l1_and_finite_for_empty_masks():
    np.testing.assert_allclose(provisional_scores([np.e, 1.0]), [1.0, 0.0])
    assert np.isfinite(provisional_scores([0.0])).all()
    with pytest.raises(ValueError):
        RetireSettings(max_fraction=0.5)


def _trajectories(seed, k=43, rounds=60, outliers=1):
    """Scores that shrink over rounds towards a per-label floor (like log mask L1 under TABOR)."""
    rng = np.random.default_rng(seed)
    final = rng.normal(3.5, 0.35, k)
    final[:outliers] = 2.0 - rng.uniform(0, 0.3, outliers)  # the backdoor targets end far below
    start = final + rng.uniform(1.0, 3.0, k)
    rate = rng.uniform(0.05, 0.2, k)
    r = np.arange(1, rounds + 1)[:, None]
    noise = rng.normal(0, 0.02, (rounds, k))
    return final[None] + (start - final)[None] * np.exp(-rate[None] * r) + noise


def _simulate(traj, settings):
    """Run the scheduler over a trajectory: retired labels keep the score of their retirement round."""
    rounds, k = traj.shape
    retired = np.zeros(k, bool)
    frozen = traj[0].copy()
    log = []
    for r in range(rounds):
        frozen[~retired] = traj[r][~retired]
        log.append(frozen.copy())
        earlier = log[max(0, len(log) - 1 - settings.window)]
        retired |= retire(frozen, earlier, rounds - r - 1, ~retired, np.ones(k, bool), retired, r + 1, settings)
    return frozen, retired


@pytest.mark.parametrize("seed", range(8))
def test_retiring_never_creates_flags_on_shrinking_trajectories(seed):
    traj = _trajectories(seed, outliers=1 + seed % 2)
    full = mad_test(traj[-1])
    scores, retired = _simulate(traj, RetireSettings(warmup_rounds=15, margin=1.0, max_fraction=0.45))
    scheduled = mad_test(scores)
    assert retired.sum() > 0  # the policy does save work here
    assert set(scheduled.flagged_labels) <= set(full.flagged_labels)
    # the planted outliers stay flagged; a borderline natural label may lose its flag (the MAD can grow)
    assert set(range(1 + seed % 2)) <= set(scheduled.flagged_labels)
    assert scheduled.median == pytest.approx(full.median)  # retired labels stay above the median
    assert scheduled.anomaly_index <= full.anomaly_index + 1e-9
    assert (scores >= traj[-1] - 0.1).all()  # a retired label only keeps a larger (less optimised) score


def test_a_zero_margin_without_warm_up_is_the_biased_case_the_defaults_avoid():
    """Retiring right after round 1 freezes labels before they fall below the others: the rule
    then has no information, which is why the warm-up exists. Measure it on the trajectories."""
    traj = _trajectories(3)
    early, _ = _simulate(traj, RetireSettings(warmup_rounds=1, margin=0.0, max_fraction=0.45))
    safe, _ = _simulate(traj, RetireSettings(warmup_rounds=15, margin=1.0, max_fraction=0.45))
    err_early = np.abs(np.median(early) - np.median(traj[-1]))
    err_safe = np.abs(np.median(safe) - np.median(traj[-1]))
    assert err_safe <= err_early


def test_engine_retires_labels_and_the_others_run_exactly_as_in_the_full_run():
    from test_tabor_engine import ConvVictim, cfg, data

    from tabor_tf.tabor.engine import TriggerEngine

    x, y = data()
    labels = [0, 1, 2, 3, 4]
    base = dict(steps=18, round_steps=3, stability_epsilon=0.0, stability_floor=0.0, attack_threshold=0.2)
    full = TriggerEngine(ConvVictim().logits, x, y, labels, cfg(**base), preprocess="unit", seed=3).run()
    engine = TriggerEngine(ConvVictim().logits, x, y, labels,
                           cfg(**base, scheduler="retire", scheduler_warmup_rounds=2, scheduler_margin=0.0,
                               scheduler_max_fraction=0.45), preprocess="unit", seed=3)
    res = engine.run()
    gone = [i for i, r in enumerate(res.stop_reasons) if r == "retired"]
    assert 1 <= len(gone) <= 2  # floor(0.45 * 5)
    assert res.image_steps < full.image_steps
    assert all(res.steps[i] < 18 for i in gone)
    l1 = full.masks.reshape(5, -1).sum(1)
    for i in range(5):
        if i in gone:
            continue
        np.testing.assert_allclose(res.masks[i], full.masks[i], atol=2e-4)
        assert res.steps[i] == full.steps[i]
    assert any(r["retired"] for r in res.history)
    assert sched.SCHEDULERS == ("none", "retire") and np.isfinite(l1).all()
