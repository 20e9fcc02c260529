"""The paper's remaining experiments (section 5), one command each (``docs/EXPERIMENTS.md``).

    tabor-tf experiment sensitivity ...     # Table 2 / Figure 9: lambda grid (TABOR) and NC's cost grid
    tabor-tf experiment patch-rescan ...    # Figure 8: scan, patch by unlearning, rescan
    tabor-tf experiment trojan-attack ...   # question 6: build Trojan Attack victims (Liu et al.)
    python -m tabor_tf.experiments NAME ... # the same

Each experiment module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
like the CLI commands, writes its results as ``NAME.json`` + ``NAME.md`` into its output folder
(``store.write_outputs``) and keeps every finished unit of work in ``store.RecordStore`` so the
same command resumes after an interruption.
"""

EXPERIMENTS = {
    "sensitivity": "tabor_tf.experiments.sensitivity",
    "patch-rescan": "tabor_tf.experiments.patch_rescan",
    "trojan-attack": "tabor_tf.experiments.trojan",
}
