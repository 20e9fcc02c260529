import pytest

from neural_cleanse_baseline import preset as nc_preset
from tabor_tf.errors import TaborError
from tabor_tf.tabor import preset as tabor_preset


def test_overrides_apply_and_unknown_fields_are_named():
    assert nc_preset("gtsrb", steps=7).steps == 7
    assert nc_preset("gtsrb").steps == 1000  # the preset itself is untouched
    with pytest.raises(TaborError, match="unknown Neural Cleanse setting.*stepz"):
        nc_preset("gtsrb", stepz=7)
    with pytest.raises(TaborError, match="unknown TABOR setting.*lamda"):
        tabor_preset("gtsrb", lamda=1.0)
