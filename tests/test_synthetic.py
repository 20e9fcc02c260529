"""The embedded synthetic sign generator."""

import numpy as np
import pytest

from tabor_tf.errors import DataError
from tabor_tf.synthetic import SHAPES, class_spec, class_template, make_signs


def test_shapes_and_dtypes():
    x, y = make_signs(50, seed=3, size=32, num_classes=43)
    assert x.shape == (50, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (50,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() < 43


def test_deterministic_and_seed_dependent():
    x1, y1 = make_signs(64, seed=5)
    x2, y2 = make_signs(64, seed=5)
    x3, y3 = make_signs(64, seed=6)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


def test_class_balanced():
    _, y = make_signs(430, seed=0, num_classes=43)
    counts = np.bincount(y, minlength=43)
    assert counts.min() == counts.max() == 10
    _, y = make_signs(105, seed=1, num_classes=10)
    counts = np.bincount(y, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 105


def test_other_sizes():
    x, y = make_signs(20, seed=0, size=48, num_classes=5)
    assert x.shape == (20, 48, 48, 3) and set(np.unique(y)) <= set(range(5))


def test_classes_differ_in_two_attributes():
    """Any two of the 43 classes differ in at least two of shape, colour scheme and symbol."""
    specs = [class_spec(k) for k in range(43)]
    keys = [(s["shape"], (s["border"], s["fill"]), s["symbol"]) for s in specs]
    for i in range(43):
        for j in range(i + 1, 43):
            assert sum(a != b for a, b in zip(keys[i], keys[j])) >= 2, (i, j)
    assert {s["shape"] for s in specs} == set(SHAPES)
    templates = np.stack([class_template(k) for k in range(43)])
    diffs = [np.abs(templates[i] - templates[j]).mean() for i in range(43) for j in range(i + 1, 43)]
    assert min(diffs) > 3.0


def test_images_vary_within_a_class():
    x, y = make_signs(86, seed=0)
    same = x[y == 0].astype(np.float32)
    assert len(same) == 2 and np.abs(same[0] - same[1]).mean() > 10  # backgrounds/jitter differ


def test_bad_arguments():
    with pytest.raises(DataError):
        make_signs(-1)
    with pytest.raises(DataError):
        make_signs(10, num_classes=1)
