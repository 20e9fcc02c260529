"""Trigger completion (``tabor_tf.completion``): a minimal restored trigger grows to the whole trigger,
and peeling stops at the model's natural features."""

import numpy as np
import pytest

from tabor_tf.completion import CompletionSettings, _Peeler, complete_trigger, main_pieces, support
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
    # no round added: the completed trigger is the restored one, tidied when its main pieces work alone
    keep = main_pieces(mask, 0.3, 0.5)[0] if out.tidy["accepted"] else np.ones(mask.shape, bool)
    np.testing.assert_array_equal(out.mask, np.where(keep, mask, 0.0))


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
                                settings=CompletionSettings(prune_ratio=0.0, tidy_share=0.0))
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
    assert all(o.tidy is None for o in out)  # no tidying after the deadline either


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


def test_main_pieces_keep_the_heavy_pieces_only():
    m = np.zeros((16, 16), np.float32)
    m[1:5, 1:5] = 1.0  # mass 16
    m[10:13, 10:13] = 0.9  # mass 8.1: at least half the largest piece's
    m[8, 1] = m[14, 4] = m[3, 12] = 1.0  # stray pixels
    m[7, 7] = 0.2  # under the support level (0.3 of the peak): never a piece
    keep, pieces, kept = main_pieces(m, 0.3, 0.5)
    assert (pieces, kept) == (5, 2)
    assert keep[1:5, 1:5].all() and keep[10:13, 10:13].all() and keep.sum() == 16 + 9
    keep, _, kept = main_pieces(m, 0.3, 1.0)  # share 1: the largest piece alone
    assert kept == 1 and keep.sum() == 16
    m[1, 5] = 1.0  # touching diagonally or by an edge joins a piece (8-connected)
    assert main_pieces(m, 0.3, 0.5)[1] == 5
    assert main_pieces(np.zeros((4, 4)), 0.3, 0.5)[1:] == (0, 0)
    with pytest.raises(TaborError, match="tidy_share"):
        CompletionSettings(tidy_share=1.5)


def test_tidying_drops_stray_pixels_and_keeps_a_working_trigger(tiny_infected_victim):
    """The union of the rounds with scattered single pixels beside the real square: tidying keeps
    the square's piece only, which still works, so precision (and F1) rise and recall stays."""
    model, x, y = _tiny(tiny_infected_victim)
    truth = np.load(tiny_infected_victim.model_path.replace("model.h5", "backdoor0_mask.npy")).squeeze()
    rows, cols = np.nonzero(truth)
    start = np.zeros_like(truth)
    start[rows.min():rows.min() + 2, cols.min():cols.min() + 2] = 1.0
    far = [(r, c) for r in range(2, truth.shape[0] - 2, 5) for c in range(2, truth.shape[1] - 2, 5)
           if abs(r - rows.mean()) + abs(c - cols.mean()) > 10][:6]
    for r, c in far:
        start[r, c] = 1.0
    pattern = np.full(x.shape[1:], 255.0, np.float32)
    kwargs = dict(y=y, natural_l1=_natural_l1(model, x, y, [0, 1, 2]))
    loose = complete_trigger(model, x, "unit", 7, start, pattern,
                             settings=CompletionSettings(prune_ratio=0.0, tidy_share=0.0), **kwargs)
    tidy = complete_trigger(model, x, "unit", 7, start, pattern, settings=CompletionSettings(prune_ratio=0.0), **kwargs)
    assert loose.tidy is None and tidy.tidy["accepted"] and tidy.tidy["attack_success"] >= 0.8, tidy.summary()
    assert tidy.tidy["pieces"] >= len(far) + 1 and tidy.tidy["kept_pieces"] == 1
    assert all(tidy.mask[r, c] == 0 for r, c in far) and all(loose.mask[r, c] > 0 for r, c in far)
    before, after = trigger_fidelity(loose.mask, truth), trigger_fidelity(tidy.mask, truth)
    assert after["precision"] > before["precision"] and after["recall"] >= before["recall"] - 0.05
    assert after["f1"] > before["f1"], (before, after)
    assert tidy.summary()["tidy"]["l1"] < tidy.summary()["tidy"]["l1_before"]
    from tabor_tf.completion import _tidy_text

    assert _tidy_text(tidy.tidy) == f"; tidied: 1 of {tidy.tidy['pieces']} pieces kept" and _tidy_text(loose.tidy) == ""


def test_tidying_never_drops_the_piece_that_is_the_trigger(tiny_infected_victim):
    """A heavy black block away from the trigger outweighs the real (white) square, so the square is
    not a main piece; it works alone on the real model, so it stays and the trigger stays whole."""
    from tabor_tf.completion import _tidy

    model, x, y = _tiny(tiny_infected_victim, n=200)
    truth = np.load(tiny_infected_victim.model_path.replace("model.h5", "backdoor0_mask.npy")).squeeze()
    rows, cols = np.nonzero(truth)
    mask = truth.astype(np.float32).copy()
    pattern = np.full(x.shape[1:], 255.0, np.float32)
    r0 = 2 if rows.min() > truth.shape[0] // 2 else truth.shape[0] - 9
    c0 = 2 if cols.min() > truth.shape[1] // 2 else truth.shape[1] - 9
    mask[r0:r0 + 7, c0:c0 + 7] = 1.0  # 49 px against the square's 16
    pattern[r0:r0 + 7, c0:c0 + 7] = 0.0
    s = CompletionSettings()
    peeler = _Peeler(model, x, "unit", s)
    x_eval = x[y != 7][:100]
    assert peeler.attack_success(x_eval, 7, np.where(truth > 0, 0.0, mask).astype(np.float32), pattern) < 0.8
    out, record = _tidy(peeler, x_eval, 7, mask, pattern, s)
    assert record["pieces"] == 2 and record["kept_alone"] == 1 and record["kept_pieces"] == 2
    assert record["accepted"] and record["attack_success"] >= 0.8
    np.testing.assert_array_equal(out, mask)


class _StubPeeler:
    """``attack_success`` of a constructed model: a trigger works when it covers every pixel of one
    of the ``triggers`` (boolean ``[H, W]`` regions) with mask >= 0.5."""

    def __init__(self, *triggers):
        self.triggers = triggers
        self.calls = 0

    def attack_success(self, x_eval, label, mask, pattern):
        self.calls += 1
        return 1.0 if any(np.all(mask[t] >= 0.5) for t in self.triggers) else 0.0


def test_tidying_keeps_a_smaller_piece_that_works_alone():
    """Two triggers to one target: the smaller one (under half the larger's mass) is a piece that
    works by itself, so it stays; stray pixels that do not work alone fall away."""
    from tabor_tf.completion import TIDY_ALONE_TESTS, _tidy

    big, small = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    big[1:7, 1:7] = True  # 36 px
    small[14:17, 14:17] = True  # 9 px: a quarter of the big one's mass
    mask = (big | small).astype(np.float32)
    strays = [(10, 2), (2, 12), (18, 5)]
    for r, c in strays:
        mask[r, c] = 1.0
    s = CompletionSettings()
    out, record = _tidy(_StubPeeler(big, small), None, 7, mask, None, s)
    assert record["accepted"] and record["pieces"] == 5 and record["kept_pieces"] == 2 and record["kept_alone"] == 1
    np.testing.assert_array_equal(out, (big | small).astype(np.float32))
    out, record = _tidy(_StubPeeler(big), None, 7, mask, None, s)  # the small piece alone does nothing
    assert record["kept_alone"] == 0 and out.sum() == 36
    peeler = _StubPeeler()  # nothing works: the completed trigger stays whole
    out, record = _tidy(peeler, None, 7, mask, None, s)
    assert not record["accepted"] and np.array_equal(out, mask)
    assert peeler.calls == min(4, TIDY_ALONE_TESTS) + 1  # each dropped piece alone, then the tidied trigger
    out, record = _tidy(_StubPeeler(big), None, 7, np.zeros((20, 20), np.float32), None, s)
    assert record["pieces"] == 0 and not record["accepted"]
