"""tabor-tf: inspect a trained image classifier for trojan backdoors with TABOR and Neural Cleanse.

A scan flows through one module per stage:

    loading      model file  -> frozen ``Victim`` (input shape, classes, logits)
    data         clean images (raw 0..255) -> ``CleanData``
    preprocess   raw pixels  -> the model's input domain
    stamping     ``x * (1 - M) + M * Delta`` in the raw pixel domain
    trigger_vars tanh-parametrised mask / pattern variables
    objective    TABOR's loss terms (NC's are in ``neural_cleanse_baseline``)
    engine       batched optimisation of all candidate labels at once
    quality      TABOR's trigger quality metric ``A``
    outliers     MAD outlier test -> verdict, flagged labels
    results      ``ScanResult`` shared by both methods
    report       report.json / report.html / per-label images
    cli, compare command line
"""

__version__ = "0.1.0"
