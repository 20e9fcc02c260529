"""The scan-time estimate said before a scan starts (tabor_tf.estimate)."""

import pytest

from tabor_tf.estimate import ScanEstimate, estimate_tabor_scan, tabor_image_steps
from tabor_tf.tabor.presets import preset


def test_image_steps_follow_labels_steps_and_batches():
    cfg = preset("gtsrb")  # batch 16 + blocking 4 + 1 image per label-step, 400 steps, 256 eval images
    search, scoring = tabor_image_steps(43, cfg, 1000)
    assert search == 43 * 400 * 21 and scoring == 4 * 43 * 256
    # few images: the batch and the evaluation set shrink to what there is
    assert tabor_image_steps(10, cfg, 8) == (10 * 400 * (8 + 4 + 1), 4 * 10 * 8)
    # a two-stage scan scores every label once more at its screen
    assert tabor_image_steps(43, preset("gtsrb", scheduler="two-stage"), 1000)[1] == 2 * scoring


def test_estimate_line_scales_with_the_work():
    small = ScanEstimate(43, 400, 361200, 44032, 1000.0, 64)
    assert small.seconds == pytest.approx(405.232)
    assert "at most ~6 min 45 s (43 labels x 400 steps" in small.line()
    big = ScanEstimate(1000, 400, 1000 * 400 * 21, 4 * 1000 * 128, 20.0, 64)
    assert "at most ~123 h 46 min (" in big.line() and big.to_dict()["seconds"] > 3600


def test_probe_measures_the_model_and_changes_nothing(tiny_clean_victim):
    from tabor_tf.loading import load_victim

    victim = load_victim(tiny_clean_victim.model_path)
    before = [w.copy() for w in victim.model.get_weights()]
    est = estimate_tabor_scan(victim, "unit", 10, preset("fast"), 300, probe_batch=8)
    assert est.images_per_second > 0 and est.seconds > 0 and est.labels == 10
    assert all((a == b).all() for a, b in zip(before, victim.model.get_weights()))
