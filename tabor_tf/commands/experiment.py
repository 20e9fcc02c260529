"""``tabor-tf experiment NAME ...``: the paper's remaining experiments (``tabor_tf.experiments``).

Each experiment is its own module with ``NAME``, ``HELP``, ``add_arguments`` and ``run``; this
command gives every one a sub-command. Exit 0 when the experiment finished, 2 on bad input, 130
when interrupted (finished units are kept: the same command resumes).
"""

from __future__ import annotations

import argparse
import importlib
import sys

NAME = "experiment"
HELP = ("the paper's remaining experiments, one command each: sensitivity (Table 2), patch-rescan (Figure 8), "
        "trojan-attack (question 6); docs/EXPERIMENTS.md")


def experiment_modules() -> list:
    """The experiment modules that exist, in ``EXPERIMENTS`` order."""
    from ..experiments import EXPERIMENTS

    mods = []
    for module in EXPERIMENTS.values():
        if importlib.util.find_spec(module) is not None:
            mods.append(importlib.import_module(module))
    return mods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    for mod in experiment_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_experiment=mod.run)
    parser.set_defaults(_experiment_parser=parser)


def run(args) -> int:
    func = getattr(args, "_experiment", None)
    if func is None:
        args._experiment_parser.print_help()
        return 2
    return int(func(args))


def main(argv=None) -> int:
    """``python -m tabor_tf.experiments``: ``tabor-tf experiment`` with its own program name."""
    from ..cli import quiet_tensorflow, run_guarded

    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m tabor_tf.experiments", description=HELP)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
