"""TABOR's decision rule on constructed per-label scores: the threshold grows with the label
count, the MAD is taken below the median from 20 labels up, accuracy parts are capped."""

import numpy as np
import pytest

from neural_cleanse_baseline.presets import preset as nc_preset
from tabor_tf.outliers import mad_test
from tabor_tf.tabor import preset
from tabor_tf.tabor.detector import decision_threshold, mad_side


def tabor_rule(scores, config=None):
    config = config or preset("gtsrb")
    k = len(scores)
    return mad_test(scores, threshold=decision_threshold(config, k), side=mad_side(config, k))


def test_threshold_and_side_follow_the_label_count():
    cfg = preset("gtsrb")
    assert decision_threshold(cfg, 43) == pytest.approx(2.60, abs=0.01)
    assert decision_threshold(cfg, 10) == pytest.approx(2.05, abs=0.01)
    assert decision_threshold(cfg, 1000) > 3.5
    assert (mad_side(cfg, 43), mad_side(cfg, 20), mad_side(cfg, 10)) == ("low", "low", "both")
    nc = nc_preset("gtsrb")  # the faithful baseline keeps Neural Cleanse's fixed 2
    assert nc.mad_threshold == 2.0
    old = preset("gtsrb", family_alpha=0.0, mad_side="both")
    assert decision_threshold(old, 43) == 2.0 and mad_side(old, 43) == "both"


def test_43_labels_natural_feature_is_not_flagged_a_real_target_is():
    # 42 ordinary labels spread evenly around -3 (MAD ~0.6); the least-bad one, a natural
    # feature, sits at index ~2.4: Neural Cleanse's fixed 2 flags it, the 43-label threshold not
    natural = np.concatenate([np.linspace(-3.8, -3.0, 21), np.linspace(-3.0, -2.2, 21), [-4.42]])
    assert mad_test(natural, threshold=2.0).flagged_labels == [42]
    assert tabor_rule(natural).flagged_labels == []
    infected = natural.copy()
    infected[7] = -8.0  # a compact, effective trigger
    assert tabor_rule(infected).flagged_labels == [7]


def test_43_labels_a_long_tail_above_the_median_does_not_hide_the_target():
    # half the labels failed a test badly (A far above the median): the two-sided MAD grows with
    # that tail and hides the target; the MAD below the median does not
    scores = np.concatenate([np.linspace(-3.8, -3.0, 21), np.linspace(-3.0, 6.0, 21), [-5.6]])
    assert mad_test(scores, threshold=2.6).flagged_labels == []
    assert tabor_rule(scores).flagged_labels == [42]


def test_10_labels_keep_the_two_sided_mad():
    scores = np.array([-3.7, -3.0, -2.6, -2.3, -2.2, -2.15, -1.5, -0.8, -0.8, -0.5])  # the tiny clean victim
    assert mad_test(scores, side="low", threshold=2.05).flagged_labels == [0]  # the lower half is 5 scores
    assert tabor_rule(scores).flagged_labels == []
    scores[3] = -7.0
    assert tabor_rule(scores).flagged_labels == [3]
