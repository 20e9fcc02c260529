"""``tabor-tf compare``: the same command as ``python -m tabor_tf.compare`` (see ``tabor_tf.compare``)."""

from __future__ import annotations

import argparse

NAME = "compare"
HELP = ("TABOR vs the faithful Neural Cleanse on one model (--truth CARD for fidelity), a whole zoo (--zoo DIR), "
        "or with no arguments the embedded demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..compare import add_arguments as compare_arguments

    compare_arguments(parser)


def run(args) -> int:
    from ..compare import run as compare_run

    return compare_run(args)
