"""Confirming TABOR's flags from fresh starts (``tabor/confirm.py``): only anomalies that repeat."""

import numpy as np
import pytest

from tabor_tf.outliers import mad_test
from tabor_tf.tabor import preset
from tabor_tf.tabor.confirm import averaged_index, confirm_seeds, decide, decision_index, index_on


def _mad():
    """43 scores: label 0 far below the rest (a strong trigger), label 1 just past the threshold 2.6."""
    rest = np.linspace(8.0, 10.0, 41)
    probe = mad_test(np.r_[1.0, 9.0, rest], threshold=2.6, side="low")
    return mad_test(np.r_[1.0, probe.median - 2.8 * probe.mad, rest], threshold=2.6, side="low")


def test_only_labels_whose_index_averaged_over_fresh_starts_exceeds_the_threshold_stay_flagged():
    mad = _mad()
    assert mad.flagged_labels == [0, 1]
    first = -mad.label_indices[1]
    assert 2.6 < first < 3.0

    def a_at(index):
        return mad.median - index * mad.mad

    # label 0 repeats; label 1, a natural feature, lands lower from fresh starts (2.3, 2.0): dropped
    kept, indices = decide(mad, {0: [a_at(9.0), a_at(9.5)], 1: [a_at(2.3), a_at(2.0)]})
    assert kept.flagged_labels == [0]
    assert indices[1] == pytest.approx([2.3, 2.0], abs=1e-3)
    assert averaged_index(mad, 1, indices[1]) == pytest.approx((first + 4.3) / 3, abs=1e-3)
    # a weak target: one fresh start just below the threshold, the average above it -> kept
    kept, indices = decide(mad, {1: [a_at(2.5), a_at(2.9)]})
    assert kept.flagged_labels == [1] and min(indices[1]) < 2.6
    assert kept.median == mad.median and kept.label_indices == mad.label_indices  # the first run's scale stays
    # the verdict's evidence: label 1's averaged index (label 0, flagged without fresh starts, is not evidence)
    assert kept.first_anomaly_index == mad.anomaly_index
    assert kept.anomaly_index == pytest.approx(averaged_index(mad, 1, indices[1]))
    nothing, _ = decide(mad, {1: [a_at(0.0)] * 2})  # label 0 has no fresh starts: not kept either
    assert nothing.flagged_labels == [] and not nothing.infected
    assert decide(mad, {0: [a_at(9.0)]})[0].flagged_labels == [0]  # label 1 without fresh starts is not kept


def test_the_decision_index_is_above_the_threshold_exactly_when_a_flag_is_kept():
    mad = _mad()

    def a_at(index):
        return mad.median - index * mad.mad

    second = max(-v for lab, v in mad.label_indices.items() if lab not in (0, 1))  # best unflagged label
    first0 = -mad.label_indices[0]  # label 0's fresh starts land far above the median: dropped too
    dropped, idx = decide(mad, {0: [a_at(-first0), a_at(0.5)], 1: [a_at(1.0), a_at(0.5)]})
    assert dropped.flagged_labels == [] and dropped.anomaly_index <= dropped.threshold
    assert dropped.anomaly_index == pytest.approx(max(second, averaged_index(mad, 0, idx[0]),
                                                      averaged_index(mad, 1, idx[1])))
    assert dropped.first_anomaly_index == mad.anomaly_index > mad.threshold
    kept, idx = decide(mad, {0: [a_at(9.0), a_at(8.0)], 1: [a_at(1.0), a_at(0.5)]})
    assert kept.flagged_labels == [0] and kept.anomaly_index > kept.threshold
    assert kept.anomaly_index == pytest.approx(averaged_index(mad, 0, idx[0]))
    assert decision_index(mad, {}) == pytest.approx(second)  # no fresh starts: only unflagged labels count
    assert mad.to_dict().get("first_anomaly_index") is None and "first_anomaly_index" in kept.to_dict()


def test_the_default_confirms_from_two_fresh_starts_and_bad_values_are_refused():
    from tabor_tf.errors import TaborError

    assert preset("gtsrb").confirm_seeds == 2 and preset("imagenet").confirm_seeds == 2
    with pytest.raises(TaborError, match="confirm_seeds"):
        preset("gtsrb", confirm_seeds=-1)


def test_index_on_the_first_runs_scale_and_the_fresh_seeds():
    mad = _mad()
    assert index_on(mad, mad.median) == 0.0
    assert index_on(mad, mad.median - 3 * mad.mad) == pytest.approx(3.0)
    assert confirm_seeds(0, 2) == [1, 2] and confirm_seeds(5, 1) == [6]


def test_a_scan_confirms_its_flags_and_says_so(tiny_infected_victim):
    from tabor_tf.data import load_clean_data
    from tabor_tf.loading import load_victim
    from tabor_tf.tabor import scan

    v = tiny_infected_victim
    victim, data = load_victim(v.model_path), load_clean_data(v.data_path, limit=300, seed=0)
    plain = scan(victim, data, preprocess=v.preprocess, config=preset("fast", confirm_seeds=0), seed=0)
    assert 7 in plain.flagged_labels and not any("fresh starts" in n for n in plain.notes)
    confirmed = scan(victim, data, preprocess=v.preprocess, config=preset("fast", confirm_seeds=1), seed=0)
    assert 7 in confirmed.flagged_labels  # the backdoor target repeats from a fresh start
    assert set(confirmed.flagged_labels) <= set(plain.flagged_labels)
    assert any("flags confirmed from fresh starts (seeds 1): 7:" in n for n in confirmed.notes)
    for lab in plain.flagged_labels:
        assert len(confirmed.by_label(lab).parts["confirm_indices"]) == 1
    unflagged = [r.label for r in confirmed.labels if r.label not in plain.flagged_labels]
    assert all("confirm_indices" not in confirmed.by_label(lab).parts for lab in unflagged)
