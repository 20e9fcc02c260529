"""Two-stage TABOR scan: the screen's rule on constructed scores, its guarantee, and the engine hook."""

import numpy as np
import pytest

from tabor_tf.errors import TaborError
from tabor_tf.outliers import mad_test
from tabor_tf.tabor.presets import preset
from tabor_tf.tabor.two_stage import TwoStageSettings, screen_keep


def _scores(seed, k=43, outliers=1):
    rng = np.random.default_rng(seed)
    a = rng.normal(10.0, 1.0, k)
    a[:outliers] = 4.0 - rng.uniform(0, 1, outliers)
    return a


def test_the_screen_stops_only_high_reached_running_labels_highest_first_within_the_cap():
    a = np.array([1.0, 5.0, 5.1, 5.2, 5.3, 5.4, 5.5, 5.6, 5.7, 9.0, 9.5, 10.0, 11.0])
    k = len(a)
    on = np.ones(k, bool)
    done = np.zeros(k, bool)
    keep = screen_keep(a, done, on, TwoStageSettings(keep_margin=1.0, max_fraction=0.45))
    assert np.flatnonzero(~keep).tolist() == [9, 10, 11, 12]  # far above the median; the outlier stays
    reached = on.copy()
    reached[12] = False  # still growing towards phi: a large trigger may be on its way
    done[11] = True  # converged already: nothing to stop
    keep = screen_keep(a, done, reached, TwoStageSettings(keep_margin=1.0, max_fraction=0.2))  # cap 2
    assert np.flatnonzero(~keep).tolist() == [9, 10]
    assert screen_keep(a, np.zeros(k, bool), on, TwoStageSettings(keep_margin=50.0)).all()


def test_protected_labels_are_never_screened_out():
    a = np.array([1.0, 5.0, 5.1, 5.2, 5.3, 5.4, 5.5, 5.6, 5.7, 9.0, 9.5, 10.0, 11.0])
    k = len(a)
    protected = np.zeros(k, bool)
    protected[[10, 12]] = True  # the pre-screen's top labels
    keep = screen_keep(a, np.zeros(k, bool), np.ones(k, bool), TwoStageSettings(keep_margin=1.0), protected=protected)
    assert np.flatnonzero(~keep).tolist() == [9, 11]
    assert TwoStageSettings.from_config(preset("gtsrb", screen_protect=3)).protect == 3
    with pytest.raises(ValueError):
        TwoStageSettings(protect=-1)
    with pytest.raises(TaborError, match="screen_protect"):
        preset("gtsrb", screen_protect=-2)


def test_the_cap_keeps_the_median_among_labels_that_ran_the_full_budget():
    a = np.arange(43, dtype=float)
    keep = screen_keep(a, np.zeros(43, bool), np.ones(43, bool), TwoStageSettings(keep_margin=0.0, max_fraction=0.45))
    assert (~keep).sum() == 19  # floor(0.45 * 43)
    assert keep[: 22].all()  # the median (22nd score) and everything below it run on
    with pytest.raises(ValueError):
        TwoStageSettings(max_fraction=0.5)
    with pytest.raises(TaborError):
        preset("gtsrb", scheduler="two-stage", screen_max_fraction=0.6)
    with pytest.raises(TaborError, match="scheduler must be one of"):
        preset("gtsrb", scheduler="bandit")


@pytest.mark.parametrize("seed", range(20))
def test_labels_screened_out_that_stay_above_the_median_never_change_the_verdict(seed):
    """The guarantee two_stage.py argues: with the low-side MAD, any final scores of the screened-out
    labels that stay above the median give the full run's flags, index and median."""
    rng = np.random.default_rng(seed)
    full = _scores(seed, outliers=1 + seed % 3)
    keep = screen_keep(full, np.zeros(43, bool), np.ones(43, bool), TwoStageSettings(keep_margin=0.0))
    assert (~keep).sum() > 0
    median = np.median(full)
    two_stage = full.copy()
    two_stage[~keep] = np.maximum(full[~keep] + rng.uniform(-2, 5, (~keep).sum()), median + 1e-6)
    a, b = mad_test(full, threshold=2.6, side="low"), mad_test(two_stage, threshold=2.6, side="low")
    assert a.flagged_labels == b.flagged_labels
    assert a.median == pytest.approx(b.median) and a.anomaly_index == pytest.approx(b.anomaly_index)


def test_engine_screens_once_and_the_labels_that_run_on_are_exactly_the_full_run():
    from test_tabor_engine import ConvVictim, cfg, data

    from tabor_tf.tabor.engine import TriggerEngine

    x, y = data()
    labels = [0, 1, 2, 3, 4]
    base = dict(steps=18, round_steps=3, stability_epsilon=0.0, stability_floor=0.0, attack_threshold=0.2)
    full = TriggerEngine(ConvVictim().logits, x, y, labels, cfg(**base), preprocess="unit", seed=3).run()
    engine = TriggerEngine(ConvVictim().logits, x, y, labels, cfg(**base, scheduler="two-stage", screen_rounds=2),
                           preprocess="unit", seed=3)
    calls = []

    def screen(eng):
        masks, patterns = eng.kept_triggers()
        assert masks.shape == (5, *x.shape[1:3]) and patterns.shape == (5, *x.shape[1:])
        calls.append(eng.rounds_done)
        return np.array([True, False, True, True, False])

    res = engine.run(screen=screen)
    assert calls == [2]  # once, after the screening rounds
    assert [res.stop_reasons[i] for i in (1, 4)] == ["screened", "screened"]
    assert res.steps[1] == res.steps[4] == 6 and res.image_steps < full.image_steps
    for i in (0, 2, 3):
        np.testing.assert_allclose(res.masks[i], full.masks[i], atol=2e-4)
        assert res.steps[i] == full.steps[i] and res.stop_reasons[i] == full.stop_reasons[i]
    assert res.history[1]["screened"] == [1, 4]


def test_a_saved_state_remembers_the_screen(tmp_path):
    from test_tabor_engine import ConvVictim, cfg, data

    from tabor_tf.tabor.engine import TriggerEngine

    x, y = data()
    config = cfg(steps=18, round_steps=3, scheduler="two-stage", screen_rounds=1, attack_threshold=0.2)
    engine = TriggerEngine(ConvVictim().logits, x, y, [0, 1, 2], config, preprocess="unit", seed=3)
    engine.run_round()
    engine.apply_screen(np.array([True, False, True]))
    engine.save_state(tmp_path / "state.npz", "fp")
    again = TriggerEngine(ConvVictim().logits, x, y, [0, 1, 2], config, preprocess="unit", seed=3)
    assert again.load_state(tmp_path / "state.npz", "fp")
    assert again.screen_done and again.screened.tolist() == [False, True, False]
    assert not again.screen_due()
    res = again.run(screen=lambda eng: pytest.fail("the screen ran twice"))
    assert res.stop_reasons[1] == "screened"


def test_the_detector_screens_only_where_the_decision_uses_the_low_side_mad():
    from tabor_tf.tabor.detector import two_stage_screen

    two = preset("gtsrb", scheduler="two-stage")
    assert two_stage_screen(None, None, None, two, "unit", 0, 43) is not None
    assert two_stage_screen(None, None, None, two, "unit", 0, 10) is None  # two-sided MAD: one stage
    assert two_stage_screen(None, None, None, preset("gtsrb", scheduler="none"), "unit", 0, 43) is None
    assert two_stage_screen(None, None, None, preset("gtsrb", scheduler="two-stage", mad_side="both"),
                            "unit", 0, 43) is None


def test_the_detectors_screen_never_stops_the_top_of_the_logit_prescreen(monkeypatch):
    """A label the pre-screen ranks first runs on even when its A at the screen is the highest."""
    from types import SimpleNamespace

    import tensorflow as tf

    from tabor_tf.tabor import detector

    k = 24
    favoured = 5  # every clean image gives label 5 a high logit

    class Victim:
        def logits(self, x):
            row = np.zeros(k, np.float32)
            row[favoured] = 4.0
            return tf.reduce_mean(x, axis=[1, 2, 3])[:, None] * 0.0 + tf.constant(row[None])

    a = np.linspace(1.0, 3.0, k)
    a[favoured] = 50.0  # far above every other label: the screen would stop it first
    monkeypatch.setattr(detector, "score_triggers", lambda *args, **kw: [{"A": float(v)} for v in a])
    x = np.random.default_rng(0).uniform(0, 255, (48, 4, 4, 3)).astype(np.float32)
    y = np.arange(48) % k
    engine = SimpleNamespace(labels=list(range(k)), kept_triggers=lambda: (None, None),
                             state=SimpleNamespace(active=tf.ones([k], tf.bool), reached=tf.ones([k], tf.bool)))
    for protect, runs_on in ((0, False), (1, True)):
        config = preset("gtsrb", scheduler="two-stage", screen_margin=0.0, screen_protect=protect)
        keep = detector.two_stage_screen(Victim(), x, y, config, "unit", 0, k)(engine)
        assert bool(keep[favoured]) is runs_on
        assert (~keep).sum() == int(0.45 * k)  # the cap still fills up from the other labels
