"""Trigger completion (``tabor_tf.completion``): a minimal restored trigger grows to the whole trigger,
and peeling stops at the model's natural features."""

import numpy as np
import pytest

from tabor_tf.completion import CompletionSettings, _Peeler, complete_trigger, support
from tabor_tf.errors import TaborError
from tabor_tf.fidelity import trigger_fidelity


def _tiny(victim, n=300):
    from tabor_tf.loading import load_victim

    data = np.load(victim.data_path)
    return load_victim(victim.model_path), data["x"][:n].astype(np.float32), data["y"][:n]


def _natural_l1(model, x, y, labels) -> float:
    """Median mask L1 of unforbidden searches for ``labels``: what natural features cost."""
    peeler = _Peeler(model, x, "unit", CompletionSettings())
    rng = np.random.default_rng(0)
    free = np.zeros(x.shape[1:3], bool)
    return float(np.median([peeler.search(k, free, np.full(x.shape[1:], 128.0, np.float32), rng)[0].sum()
                            for k in labels]))


def test_support_and_settings():
    m = np.array([[0.0, 0.2], [0.5, 1.0]])
    assert support(m, 0.3).tolist() == [[False, False], [True, True]]
    assert not support(np.zeros((2, 2)), 0.3).any()
    assert CompletionSettings().to_dict()["rounds"] == 6
    for bad in (dict(rounds=-1), dict(steps=0), dict(attack_threshold=0.0), dict(support_level=1.5),
                dict(max_growth=0.0), dict(natural_fraction=-1.0)):
        with pytest.raises(TaborError, match="completion"):
            CompletionSettings(**bad)


def test_a_quarter_of_the_square_grows_to_the_whole_trigger(tiny_infected_victim):
    model, x, y = _tiny(tiny_infected_victim)
    truth = np.load(tiny_infected_victim.model_path.replace("model.h5", "backdoor0_mask.npy")).squeeze()
    rows, cols = np.nonzero(truth)
    start = np.zeros_like(truth)
    start[rows.min():rows.min() + 2, cols.min():cols.min() + 2] = 1.0  # 4 of the 16 trigger pixels
    natural = _natural_l1(model, x, y, [0, 1, 2])
    out = complete_trigger(model, x, "unit", 7, start, np.full(x.shape[1:], 255.0, np.float32), y=y,
                           natural_l1=natural)
    before, after = trigger_fidelity(start, truth), trigger_fidelity(out.mask, truth)
    assert before["recall"] == pytest.approx(0.25)
    assert after["recall"] >= 0.9 and after["f1"] > before["f1"] + 0.05, (after, out.summary())
    assert out.rounds[0]["accepted"] and out.rounds[0]["attack_success"] >= 0.8
    assert np.all(out.mask >= start)  # the union keeps the first trigger
    assert out.stop and out.summary()["accepted_rounds"] >= 1


def test_peeling_a_clean_label_stops_at_natural_features(tiny_clean_victim):
    model, x, y = _tiny(tiny_clean_victim)
    peeler = _Peeler(model, x, "unit", CompletionSettings())
    rng = np.random.default_rng(1)
    mask, pattern, _ = peeler.search(3, np.zeros(x.shape[1:3], bool), np.full(x.shape[1:], 128.0, np.float32), rng)
    natural = _natural_l1(model, x, y, [0, 1, 2, 4])
    out = complete_trigger(model, x, "unit", 3, mask, pattern, y=y, natural_l1=natural)
    assert not out.rounds[0]["accepted"] and out.summary()["accepted_rounds"] == 0
    assert "natural features" in out.stop or "does not work" in out.stop
    assert np.array_equal(out.mask, mask)


def test_completion_needs_images_of_other_labels(tiny_clean_victim):
    model, x, y = _tiny(tiny_clean_victim, n=20)
    with pytest.raises(TaborError, match="at least 4 clean images"):
        complete_trigger(model, x[y == 2][:3], "unit", 5, np.zeros(x.shape[1:3]), np.zeros(x.shape[1:]))


def test_a_trigger_scattered_around_the_square_is_pruned_to_the_square(tiny_infected_victim):
    """R4 on a black canvas grows the restored trigger into strokes around the real one: pruning
    (the smallest working trigger inside the restored one) keeps the square and drops the rest."""
    model, x, y = _tiny(tiny_infected_victim)
    truth = np.load(tiny_infected_victim.model_path.replace("model.h5", "backdoor0_mask.npy")).squeeze()
    rng = np.random.default_rng(5)
    scattered = truth.copy()
    far = np.argwhere(np.pad(np.ones((20, 20)), ((0, 12), (0, 12))) > 0)  # top-left 20x20, away from the square
    for r, c in far[rng.choice(len(far), size=64, replace=False)]:
        scattered[r, c] = 1.0
    pattern = np.full(x.shape[1:], 255.0, np.float32)
    natural = _natural_l1(model, x, y, [0, 1, 2])
    out = complete_trigger(model, x, "unit", 7, scattered, pattern, y=y, natural_l1=natural)
    before, after = trigger_fidelity(scattered, truth), trigger_fidelity(out.mask, truth)
    assert out.prune is not None and out.prune["accepted"], out.summary()
    assert out.prune["l1"] <= 0.5 * out.prune["l1_before"] and out.prune["attack_success"] >= 0.8
    assert before["precision"] < 0.25 and after["precision"] >= 0.5 and after["recall"] >= 0.8, (before, after)
    assert after["f1"] >= before["f1"] + 0.2
    assert "prune" in out.summary()
    unpruned = complete_trigger(model, x, "unit", 7, scattered, pattern, y=y, natural_l1=natural,
                                settings=CompletionSettings(prune_ratio=0.0))
    assert unpruned.prune is None and np.all(unpruned.mask >= scattered - 1e-6)  # the scatter stays
    with pytest.raises(TaborError, match="prune_ratio"):
        CompletionSettings(prune_ratio=1.5)


def test_every_search_starts_afresh(tiny_infected_victim):
    """A peeler's searches are independent: the same search twice gives the same trigger (the
    optimiser's moments of one round used to leak into the next)."""
    model, x, _ = _tiny(tiny_infected_victim, n=100)
    peeler = _Peeler(model, x, "unit", CompletionSettings(steps=20))
    free, start = np.zeros(x.shape[1:3], bool), np.full(x.shape[1:], 128.0, np.float32)
    first = peeler.search(7, free, start, np.random.default_rng(0))[0]
    peeler.search(3, free, start, np.random.default_rng(9))  # another label in between
    again = peeler.search(7, free, start, np.random.default_rng(0))[0]
    np.testing.assert_allclose(again, first, atol=1e-5)


def test_labels_completed_together_match_each_alone(tiny_infected_victim):
    """``complete_triggers`` runs the labels' searches in lockstep (one forward+backward per step
    for all): each label's rounds, stop and trigger are what it gets alone, up to float rounding."""
    from tabor_tf.completion import complete_triggers

    model, x, y = _tiny(tiny_infected_victim)
    truth = np.load(tiny_infected_victim.model_path.replace("model.h5", "backdoor0_mask.npy")).squeeze()
    rows, cols = np.nonzero(truth)
    start = np.zeros_like(truth)
    start[rows.min():rows.min() + 2, cols.min():cols.min() + 2] = 1.0
    other = np.zeros_like(truth)
    other[2:5, 2:5] = 1.0
    s = CompletionSettings(rounds=2)
    labels, masks = [7, 2], [start, other]
    patterns = [np.full(x.shape[1:], 255.0, np.float32), np.full(x.shape[1:], 128.0, np.float32)]
    together = complete_triggers(model, x, "unit", labels, masks, patterns, settings=s, y=y, natural_l1=60.0)
    for label, mask, pattern, joint in zip(labels, masks, patterns, together):
        alone = complete_trigger(model, x, "unit", label, mask, pattern, settings=s, y=y, natural_l1=60.0)
        assert joint.label == label and joint.stop == alone.stop
        assert [r["accepted"] for r in joint.rounds] == [r["accepted"] for r in alone.rounds]
        assert (joint.prune or {}).get("accepted") == (alone.prune or {}).get("accepted")
        np.testing.assert_allclose(joint.mask, alone.mask, atol=2e-3)
    assert together[0].summary()["accepted_rounds"] >= 1  # the real trigger still grows


def test_completion_of_several_labels_respects_the_deadline(tiny_infected_victim):
    import time

    from tabor_tf.completion import complete_triggers

    model, x, y = _tiny(tiny_infected_victim, n=100)
    m = np.zeros(x.shape[1:3], np.float32)
    m[2:5, 2:5] = 1.0
    p = np.full(x.shape[1:], 200.0, np.float32)
    out = complete_triggers(model, x, "unit", [1, 2], [m, m], [p, p], settings=CompletionSettings(steps=10), y=y,
                            deadline=time.monotonic() - 1)
    assert [o.stop for o in out] == ["the time budget ran out"] * 2 and all(not o.rounds for o in out)


def test_completion_reports_each_round_and_takes_no_labels(tiny_infected_victim):
    from tabor_tf.completion import complete_triggers

    model, x, y = _tiny(tiny_infected_victim, n=100)
    assert complete_triggers(model, x, "unit", [], [], []) == []
    m = np.zeros(x.shape[1:3], np.float32)
    m[2:5, 2:5] = 1.0
    p = np.full(x.shape[1:], 200.0, np.float32)
    seen = []
    out = complete_triggers(model, x, "unit", [1, 2], [m, m], [p, p], settings=CompletionSettings(steps=10, rounds=2),
                            y=y, natural_l1=200.0, on_round=lambda r, peeling: seen.append((r, list(peeling))))
    assert seen[0] == (0, [1, 2])  # after the prune
    assert [r for r, _ in seen[1:]] == list(range(1, len(seen)))  # then once per peel round
    still = [label for label, o in zip([1, 2], out) if o.stop == "2 rounds done"]
    assert seen[-1][1] == still
