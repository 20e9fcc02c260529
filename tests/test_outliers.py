"""The MAD outlier test (``tabor_tf.outliers.mad_test``) on vectors worked out by hand."""

import math

import numpy as np
import pytest

from tabor_tf.outliers import CONSISTENCY, mad_test


def readme_l1_list():
    """43 L1 norms (multiples of 1/255, as the reference read them from 8-bit PNGs) built so that
    median = 16439/255 = 64.4667, median |l1 - median| = 2277/255 (MAD = 1.4826 * that = 13.2387)
    and label 33 = 4110/255 = 16.1176: the Neural Cleanse README output."""
    median, d, target = 16439, 2277, 4110
    devs = [200 * k for k in range(1, 11)] + [d] + [2500 + 400 * k for k in range(9)]  # 20 below 6751
    below = [median - a for a in devs] + [target]
    above = [median + a for a in devs] + [median + (median - target)]
    values = np.array(below + above + [median], dtype=np.float64) / 255.0
    assert len(values) == 43
    # give label 33 the trigger's norm, the rest a fixed shuffle
    rest = [v for v in values if v != target / 255.0]
    rng = np.random.default_rng(7)
    rest = list(rng.permutation(rest))
    l1 = rest[:33] + [target / 255.0] + rest[33:]
    return np.array(l1)


def test_neural_cleanse_readme_example():
    l1 = readme_l1_list()
    r = mad_test(l1)
    # README: "median: 64.466667, MAD: 13.238736 / anomaly index: 3.652087 / flagged 33: 16.117647"
    assert r.median == pytest.approx(64.466667, abs=1e-6)
    assert r.mad == pytest.approx(13.238736, abs=1e-5)
    assert r.anomaly_index == pytest.approx(3.652087, abs=1e-5)
    assert r.flagged_labels == [33] and r.infected
    assert l1[33] == pytest.approx(16.117647, abs=1e-6)
    assert r.label_indices[33] == pytest.approx(-3.652087, abs=1e-5)


def test_hand_computed_odd_vector():
    # median 10; |dev| = 9,1,0,2,40 -> median 2; MAD 2.9652; index of 1 = 9 / 2.9652 = 3.035
    r = mad_test([1.0, 9.0, 10.0, 12.0, 50.0], labels=[4, 7, 2, 9, 1])
    assert r.median == 10.0
    assert r.mad == pytest.approx(2 * CONSISTENCY)
    assert r.anomaly_index == pytest.approx(9 / (2 * CONSISTENCY))
    # 50 is far above the median: never flagged (only small triggers are suspicious)
    assert r.flagged_labels == [4]
    assert r.label_indices[1] == pytest.approx(40 / (2 * CONSISTENCY))


def test_even_count_uses_numpy_median_and_is_order_independent():
    scores = [3.0, 20.0, 21.0, 22.0, 23.0, 24.0]
    # numpy median of an even count: mean of 21 and 22 = 21.5 (not the lower/upper middle)
    r = mad_test(scores)
    assert r.median == 21.5
    dev = np.abs(np.array(scores) - 21.5)  # 18.5, 1.5, .5, .5, 1.5, 2.5 -> median 1.5
    assert r.mad == pytest.approx(1.5 * CONSISTENCY)
    assert r.anomaly_index == pytest.approx(18.5 / (1.5 * CONSISTENCY))
    assert r.flagged_labels == [0]
    perm = [5, 3, 0, 1, 4, 2]
    r2 = mad_test([scores[i] for i in perm], labels=perm)
    assert (r2.median, r2.mad, r2.anomaly_index, r2.flagged_labels) == (r.median, r.mad, r.anomaly_index, [0])
    assert np.median(dev) == 1.5


def test_several_flagged_labels_smallest_first_and_threshold():
    scores = {0: 50.0, 1: 8.0, 2: 52.0, 3: 5.0, 4: 49.0, 5: 51.0, 6: 53.0, 7: 48.0}
    r = mad_test(list(scores.values()), labels=list(scores))
    assert r.flagged_labels == [3, 1]
    assert mad_test(list(scores.values()), labels=list(scores), threshold=1e9).flagged_labels == []
    assert not mad_test([10.0, 11.0, 12.0, 13.0]).infected


def test_zero_mad_follows_the_reference_division():
    assert mad_test([5.0, 5.0, 5.0]).flagged_labels == []
    assert mad_test([5.0, 5.0, 5.0]).anomaly_index == 0.0
    r = mad_test([5.0, 5.0, 5.0, 1.0, 9.0])  # median 5, |dev| median 0
    assert r.mad == 0.0 and r.flagged_labels == [3] and math.isinf(r.anomaly_index)


def test_bad_input():
    with pytest.raises(ValueError):
        mad_test([1.0, 2.0])
    with pytest.raises(ValueError):
        mad_test([1.0, 2.0, float("nan")])
    with pytest.raises(ValueError):
        mad_test([1.0, 2.0, 3.0], labels=[0, 1])


def test_family_threshold_grows_with_the_label_count():
    from tabor_tf.outliers import family_threshold

    assert family_threshold(43, 0.05) == pytest.approx(3.05, abs=0.01)
    assert family_threshold(10, 0.05) == pytest.approx(2.58, abs=0.01)
    assert family_threshold(1000, 0.05) == pytest.approx(3.89, abs=0.01)
    assert family_threshold(43, 0.0) == 2.0  # off: NC's fixed threshold
    assert family_threshold(3, 0.9) == 2.0  # never below the floor
    # with it, the least-bad of 43 ordinary labels (normal scores) is flagged far less often
    rng = np.random.default_rng(0)
    fixed = family = 0
    for _ in range(400):
        scores = rng.normal(size=43)
        fixed += mad_test(scores, threshold=2.0).infected
        family += mad_test(scores, threshold=family_threshold(43, 0.05)).infected
    assert fixed / 400 > 0.5 and family / 400 < 0.2  # 64% vs 13.5% here (MAD itself is noisy)


def test_low_side_mad_ignores_a_long_tail_of_bad_scores():
    # A skewed like TABOR's on a mobilenet: tight below the median, spread far above it (labels
    # whose explanation or crop test failed), and one real target at -3
    scores = np.concatenate([np.linspace(-0.6, 0.0, 21), np.linspace(0.0, 8.0, 21), [-3.0]])
    both, low = mad_test(scores, threshold=4.0), mad_test(scores, threshold=4.0, side="low")
    assert both.mad > 1.8 * low.mad  # the tail inflates the two-sided MAD
    assert both.flagged_labels == [] and low.flagged_labels == [42]
    assert low.to_dict()["side"] == "low"
    below = np.sort(np.median(scores) - scores[scores <= np.median(scores)])
    assert low.mad == pytest.approx(CONSISTENCY * np.median(below))
    with pytest.raises(ValueError, match="side"):
        mad_test(scores, side="high")
