"""TABOR's decision rule on constructed per-label scores: the threshold grows with the label
count, the MAD is taken below the median from 20 labels up, the two-sided MAD of few labels has a
floor, accuracy parts are capped."""

import numpy as np
import pytest

from neural_cleanse_baseline.presets import preset as nc_preset
from tabor_tf.outliers import mad_test
from tabor_tf.tabor import preset
from tabor_tf.tabor.detector import decision_threshold, mad_floor, mad_side, outlier_test


def tabor_rule(scores, config=None):
    """The detector's own decision (``outlier_test``) on ``scores`` of labels 0..K-1."""
    return outlier_test(config or preset("gtsrb"), np.asarray(scores, np.float64), list(range(len(scores))))


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


# A of labels 0..9 on new builds of two dev victims of the evaluation zoo (session 16,
# docs/TABOR_CHOICES.md "A floor under the MAD of few labels"): the clean MNIST 10 Conv model
# (seeds 0 and 1) and its infected twin (white 4x4 square bottom-right -> 7, seed 0)
CLEAN_10CONV = [[-0.21, 0.09, -1.35, -0.13, -0.57, -0.45, 0.54, -0.38, -0.54, -0.19],
                [-0.25, -0.11, -0.87, -0.33, -0.85, -0.12, 0.27, -0.12, -0.20, -0.02]]
SQUARE_10CONV = [0.40, 0.13, -0.50, 0.05, -0.03, -0.53, 0.44, -3.01, -0.07, 0.05]


def test_10_labels_that_agree_closely_do_not_make_the_least_bad_one_an_outlier():
    """Every label's restored trigger is about as poor as the next (A near 0, MAD 0.17-0.30): without
    a floor the least-bad natural feature is 2.4-4.2 MADs below the median; the floor (1 in units
    of A) asks a label to beat the median by 1 x 2.05, which the real trigger does by 3.0."""
    cfg = preset("gtsrb")
    assert cfg.mad_floor == 1.0 and mad_floor(cfg, "both") == 1.0 and mad_floor(cfg, "low") == 0.0
    no_floor = preset("gtsrb", mad_floor=0.0)
    assert tabor_rule(CLEAN_10CONV[0], no_floor).flagged_labels == [2]
    assert tabor_rule(CLEAN_10CONV[1], no_floor).flagged_labels == [2, 4]
    for scores in CLEAN_10CONV:
        mad = tabor_rule(scores)
        assert mad.flagged_labels == [] and mad.mad == 1.0 and mad.floor == 1.0
    square = tabor_rule(SQUARE_10CONV)
    assert square.flagged_labels == [7] and square.anomaly_index == pytest.approx(3.0, abs=0.05)
    # a model whose labels spread more than the floor keeps the plain two-sided MAD
    spread = [-3.7, -3.0, -2.6, -7.0, -2.2, -2.15, -1.5, -0.8, -0.8, -0.5]
    assert mad_test(spread).mad > 1.0 and tabor_rule(spread).mad == pytest.approx(mad_test(spread).mad)
    # 43 labels: the low-side MAD is not floored (its threshold was chosen without one)
    natural = np.concatenate([np.linspace(-3.2, -3.0, 21), np.linspace(-3.0, -2.8, 21), [-3.5]])
    assert tabor_rule(natural).floor == 0.0 and tabor_rule(natural).flagged_labels == [42]
    assert "madfloor1" in cfg.decision_rule() and "madfloor" not in no_floor.decision_rule()
    with pytest.raises(Exception, match="mad_floor"):
        preset("gtsrb", mad_floor=-1.0)
