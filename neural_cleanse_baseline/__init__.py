"""A faithful Neural Cleanse baseline (Wang et al., S&P 2019) in TF 2 / Keras 3.

    from neural_cleanse_baseline import scan, preset
    result = scan(victim, data, preprocess="raw", config=preset("gtsrb"))

Stages: ``presets`` (settings) -> ``reverse`` (per-label trigger search, ``tf.function`` step)
driven by ``schedule`` (cost schedule, early stop, best mask; pure Python) -> ``detector``
(all labels, MAD test on the mask L1 norms -> ``tabor_tf.results.ScanResult``).
"""

from .detector import METHOD, scan, scan_order
from .presets import PRESETS, NCConfig, preset

__all__ = ["scan", "scan_order", "NCConfig", "preset", "PRESETS", "METHOD"]
