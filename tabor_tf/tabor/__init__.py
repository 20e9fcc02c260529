"""TABOR (Guo et al., arXiv 1908.01763): inspect a classifier for trojan backdoors.

One module per stage of a scan:

    presets       ``TaborConfig`` and the paper's presets (``gtsrb``, ``imagenet``, ``fast``)
    objective     the loss terms of eq. 10-11 as pure functions of batched tensors
    augmentation  hyperparameter augmentation (section 4.3) as a per-label state update
    engine        all candidate labels optimised at once in one ``tf.function`` step
    explain       acc_att, acc_crop and the explanation test acc_exp (section 4.2.3)
    quality       the quality metric A (eq. 8) and its five parts
    detector      ``scan(...)``: engine -> metric -> MAD test -> ``ScanResult``
"""

from .detector import METHOD, scan
from .presets import PRESET_NAMES, TERM_NAMES, TaborConfig, preset

__all__ = ["scan", "preset", "TaborConfig", "PRESET_NAMES", "TERM_NAMES", "METHOD"]
