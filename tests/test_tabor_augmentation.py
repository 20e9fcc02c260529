"""Hyperparameter augmentation (section 4.3) on hand-made sequences of round statistics."""

import numpy as np
import pytest

from tabor_tf.tabor import augmentation as aug
from tabor_tf.tabor.presets import preset

START = np.array([1e-6, 1e-5, 1e-7, 1e-8, 1e-6, 1e-2], np.float32)


def settings(**kw):
    base = dict(start_lambdas=START, phi=0.9, multiplier=2.0, epsilon=0.05, floor=0.01, min_rounds=2,
                max_rounds=6, lambda_min_factor=1.0, lambda_max_factor=8.0)
    base.update(kw)
    return aug.AugmentSettings(**base)


def run(state, terms, success, s):
    new, improved = aug.update(state, np.asarray(terms, np.float32), np.asarray(success, np.float32), s)
    return new, improved.numpy()


def test_lambdas_grow_on_success_shrink_on_failure_within_bounds():
    s = settings()
    st = aug.initial_state(2, s)
    terms = np.ones((2, 6)) * 10
    seq = []
    for success in ([1.0, 0.5], [1.0, 0.5], [0.95, 0.95], [0.2, 0.95], [1.0, 1.0], [1.0, 1.0]):
        st, _ = run(st, terms * (1 + len(seq)), success, s)  # terms keep changing: nothing converges
        seq.append(st.lambdas.numpy() / START)
    # label 0: up, up, up (capped at 8x), down, up, up (cap); label 1 stays at the floor, then grows
    np.testing.assert_allclose([f[0, 0] for f in seq], [2, 4, 8, 4, 8, 8], rtol=1e-5)
    np.testing.assert_allclose([f[1, 0] for f in seq], [1, 1, 2, 4, 8, 8], rtol=1e-5)
    assert np.allclose(seq[0][0], 2.0)  # every lambda moves together


def test_best_trigger_is_smallest_regularisation_among_successful_rounds():
    s = settings(max_rounds=50, epsilon=0.0, floor=0.0)
    st = aug.initial_state(1, s)
    base = np.array([[100.0, 10.0, 5.0, 5.0, 1.0, 0.1]])
    # no round reached phi yet: the most successful round is kept
    st, imp = run(st, base, [0.3], s)
    assert imp.tolist() == [True] and not st.reached.numpy()[0]
    st, imp = run(st, base * 0.5, [0.2], s)
    assert imp.tolist() == [False]
    st, imp = run(st, base * 0.9, [0.6], s)
    assert imp.tolist() == [True] and st.best_success.numpy()[0] == pytest.approx(0.6)
    # the first round above phi always wins over the unreached ones
    st, imp = run(st, base * 3, [0.95], s)
    assert imp.tolist() == [True] and st.reached.numpy()[0]
    score = float(aug.regularisation_score(base * 3, START)[0])
    assert st.best_score.numpy()[0] == pytest.approx(score, rel=1e-5)
    # a smaller trigger that succeeds replaces it; a smaller one that fails, or a bigger one, does not
    st, imp = run(st, base * 2, [0.99], s)
    assert imp.tolist() == [True]
    st, imp = run(st, base * 1, [0.5], s)
    assert imp.tolist() == [False]
    st, imp = run(st, base * 2.5, [1.0], s)
    assert imp.tolist() == [False]
    assert st.best_success.numpy()[0] == pytest.approx(0.99)


def test_convergence_needs_stable_terms_success_and_min_rounds():
    s = settings(min_rounds=3, max_rounds=20)
    st = aug.initial_state(3, s)
    terms = np.array([[50.0, 20.0, 4.0, 3.0, 0.5, 0.001]] * 3)

    def wobble(r):  # label 1: its first term alternates by 20 % -> never stable
        out = terms.copy()
        out[1, 0] *= 1.2 if r % 2 else 1.0
        return out

    st, _ = run(st, wobble(0), [1.0, 1.0, 0.5], s)
    st, _ = run(st, wobble(1) * 1.01, [1.0, 1.0, 0.5], s)
    assert st.active.numpy().all()  # label 0 stable, but only 2 rounds < min_rounds
    st, _ = run(st, wobble(2) * 1.02, [1.0, 1.0, 0.5], s)
    assert st.active.numpy().tolist() == [False, True, True]
    assert st.stop_code.numpy().tolist() == [aug.CONVERGED, aug.RUNNING, aug.RUNNING]
    st, _ = run(st, wobble(3), [1.0, 1.0, 0.5], s)
    st, _ = run(st, wobble(4), [1.0, 1.0, 0.5], s)  # label 2 stable but below phi
    assert st.active.numpy().tolist() == [False, True, True]
    assert st.rounds.numpy().tolist() == [3, 5, 5]  # an inactive label is frozen
    st, _ = run(st, wobble(4), [1.0, 1.0, 0.95], s)  # label 1 stable at last, label 2 reaches phi
    assert st.active.numpy().tolist() == [False, False, False]
    # the absolute floor: a CE term wandering around 0 counts as stable
    assert bool(aug.terms_stable([[1.0, 0.0, 0, 0, 0.003, 0.0001]], [[1.0, 0.0, 0, 0, 0.001, 0.008]],
                                 0.05, 0.01).numpy()[0])
    assert not bool(aug.terms_stable([[1.0, 0, 0, 0, 0, 0]], [[np.nan] * 6], 0.05, 0.01).numpy()[0])
    # a term outside the objective (lambda 0: R4 switched off) cannot hold a label in the batch
    wandering = [[1.0, 0.0, 0, 0, 0.003, 7.0]], [[1.0, 0.0, 0, 0, 0.001, 3.0]]
    assert not bool(aug.terms_stable(*wandering, 0.05, 0.01).numpy()[0])
    assert bool(aug.terms_stable(*wandering, 0.05, 0.01, used=[True] * 5 + [False]).numpy()[0])
    assert not bool(aug.terms_stable(*wandering, 0.05, 0.01, used=[False] + [True] * 5).numpy()[0])


def test_a_switched_off_term_does_not_delay_convergence():
    """R4 with lambda 0 wanders every round: the label still converges on the terms it optimises."""
    on = settings(min_rounds=2, patience=2)
    off = on._replace(start_lambdas=np.array([*on.start_lambdas[:5], 0.0]))
    for s, converges in ((on, False), (off, True)):
        st = aug.initial_state(1, s)
        for k in range(5):
            terms = np.array([[10.0, 5.0, 2.0, 1.0, 0.5, 3.0 + 4.0 * (k % 2)]])
            st, _ = aug.update(st, terms, np.array([1.0]), s)
        assert (not bool(st.active.numpy()[0])) is converges, s.start_lambdas
        assert int(st.stop_code.numpy()[0]) == (aug.CONVERGED if converges else aug.RUNNING)


def test_max_rounds_stops_every_label_and_freezes_its_state():
    s = settings(max_rounds=2, min_rounds=1)
    st = aug.initial_state(2, s)
    rising = np.ones((2, 6))
    st, _ = run(st, rising, [1.0, 0.0], s)
    st, _ = run(st, rising * 2, [1.0, 0.0], s)
    assert not st.active.numpy().any()
    assert st.stop_code.numpy().tolist() == [aug.MAX_STEPS, aug.MAX_STEPS]
    frozen = st.lambdas.numpy().copy()
    st, imp = run(st, rising * 3, [1.0, 1.0], s)
    np.testing.assert_array_equal(st.lambdas.numpy(), frozen)
    assert not imp.any()


def test_settings_follow_the_config():
    cfg = preset("gtsrb", steps=95, round_steps=10, attack_threshold=0.8, lambda_multiplier=3.0)
    s = aug.settings_from_config(cfg)
    assert s.max_rounds == 10 and s.phi == 0.8 and s.multiplier == 3.0
    np.testing.assert_allclose(s.start_lambdas, cfg.lambdas)


def test_patience_needs_consecutive_stable_rounds():
    s = settings(min_rounds=1, max_rounds=20, patience=3)
    st = aug.initial_state(1, s)
    terms = np.array([[50.0, 20.0, 4.0, 3.0, 0.5, 0.001]])
    sequence = [terms, terms, terms * 1.5, terms * 1.5, terms * 1.5, terms * 1.5]  # stable, stable, jump, ...
    active = []
    for t in sequence:
        st, _ = run(st, t, [1.0], s)
        active.append(bool(st.active.numpy()[0]))
    # rounds 2 is stable once; the jump resets the count; rounds 4, 5, 6 are three stable rounds in a row
    assert active == [True, True, True, True, True, False]
    assert st.stop_code.numpy()[0] == aug.CONVERGED


def test_presets_follow_table_3_and_validate():
    from tabor_tf.errors import TaborError
    from tabor_tf.tabor import PRESET_NAMES, TaborConfig
    from tabor_tf.tabor.presets import default_preset_for

    assert set(PRESET_NAMES) == {"gtsrb", "imagenet", "fast"}
    g, i = preset("gtsrb"), preset("imagenet")
    assert (g.l1, g.l2, g.l3, g.l4, g.l6) == (1e-6, 1e-5, 1e-7, 1e-8, 1e-2) and g.pattern_regularizer == "elastic"
    assert (i.l1, i.l2, i.l3, i.l4, i.l6) == (1e-3, 1e-5, 1e-6, 1e-9, 1e-2) and i.pattern_regularizer == "l1"
    assert preset("lfw") == i and preset("fast").steps < g.steps
    d = preset("fast", steps=7, l6=0.5).to_dict()
    assert d["steps"] == 7 and d["l6"] == 0.5 and d["preset"] == "fast"
    assert TaborConfig(**d) == preset("fast", steps=7, l6=0.5)  # to_dict round-trips
    assert default_preset_for((32, 32, 3)) == "gtsrb" and default_preset_for((224, 224, 3)) == "imagenet"
    for bad in (dict(steps=0), dict(attack_threshold=1.5), dict(lambda_multiplier=1.0), dict(l3=-1.0),
                dict(pattern_scale="pixels"), dict(blocking_batch_size=99), dict(footprint_threshold=1.0)):
        with pytest.raises(TaborError):
            preset("gtsrb", **bad)
    with pytest.raises(TaborError, match="unknown TABOR preset"):
        preset("mnist")
