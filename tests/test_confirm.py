"""Confirming TABOR's flags from fresh starts (``tabor/confirm.py``): only anomalies that repeat."""

import numpy as np
import pytest

from tabor_tf.outliers import mad_test
from tabor_tf.tabor import preset
from tabor_tf.tabor.confirm import confirm_seeds, decide, index_on


def _mad():
    a = np.r_[1.0, 2.0, np.linspace(8.0, 10.0, 41)]  # labels 0 and 1 far below the rest
    return mad_test(a, threshold=2.6, side="low")


def test_only_labels_that_repeat_from_every_fresh_start_stay_flagged():
    mad = _mad()
    assert mad.flagged_labels == [0, 1]
    # label 0's new triggers are as good as the first; label 1's fresh start lands among the ordinary labels
    kept, indices = decide(mad, {0: [1.1, 0.9], 1: [2.2, 8.9]})
    assert kept.flagged_labels == [0]
    assert indices[0][0] == pytest.approx(index_on(mad, 1.1), abs=1e-4) and indices[1][1] < 2.6 < indices[1][0]
    assert kept.anomaly_index == mad.anomaly_index and kept.median == mad.median  # the first run's numbers stay
    nothing, _ = decide(mad, {0: [9.0], 1: [9.5]})
    assert nothing.flagged_labels == [] and not nothing.infected
    assert decide(mad, {0: [1.0]})[0].flagged_labels == [0]  # a label without repeats is not kept


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
    plain = scan(victim, data, preprocess=v.preprocess, config=preset("fast"), seed=0)
    assert 7 in plain.flagged_labels
    confirmed = scan(victim, data, preprocess=v.preprocess, config=preset("fast", confirm_seeds=1), seed=0)
    assert 7 in confirmed.flagged_labels  # the backdoor target repeats from a fresh start
    assert set(confirmed.flagged_labels) <= set(plain.flagged_labels)
    assert any("fresh starts (seeds 1)" in n for n in confirmed.notes)
    for lab in plain.flagged_labels:
        assert len(confirmed.by_label(lab).parts["confirm_indices"]) == 1
    unflagged = [r.label for r in confirmed.labels if r.label not in plain.flagged_labels]
    assert all("confirm_indices" not in confirmed.by_label(lab).parts for lab in unflagged)
