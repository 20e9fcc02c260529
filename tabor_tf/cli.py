"""The ``tabor-tf`` command line: one sub-command per module in ``tabor_tf.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Exit status like a virus scanner: 0 clean / success, 1 backdoor found, 2 usage or input error,
3 inconclusive (a partial ``--labels`` scan, or a scan forced below the clean-accuracy floor): a
deployment gate that fails on any non-zero status never passes a model nobody fully looked at.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("info", "scan", "compare", "zoo", "audit", "patch", "experiment")
EXIT_CLEAN, EXIT_INFECTED, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
_EXIT_BY_VERDICT = {"clean": EXIT_CLEAN, "infected": EXIT_INFECTED, "inconclusive": EXIT_INCONCLUSIVE}


def exit_for_verdict(verdict: str) -> int:
    """0 clean, 1 infected, 3 inconclusive; anything else (a report from a broken run) 2."""
    return _EXIT_BY_VERDICT.get(str(verdict), EXIT_ERROR)


def quiet_tensorflow() -> None:
    """Import TensorFlow without its C++ start-up chatter (oneDNN / absl notices on stderr).

    Those lines are written before absl's logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not
    stop them: stderr is pointed at a temporary file during the import and replayed only if the
    import fails. ``TABOR_TF_VERBOSE_TF=1`` keeps TensorFlow's own output.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
    if os.environ.get("TABOR_TF_VERBOSE_TF") or "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow  # noqa: F401

            # the GPU probe: on a machine without a GPU the `tensorflow` wheel logs a cuInit failure
            # (an ERROR line) the first time devices are listed; it belongs to the start-up chatter
            tensorflow.config.list_physical_devices("GPU")
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    # tf.function retracing notices (one evaluator per model in a zoo or audit) are not for users
    tensorflow.get_logger().setLevel("ERROR")


def _command_modules():
    mods = []
    for name in COMMANDS:
        if importlib.util.find_spec(f"tabor_tf.commands.{name}") is not None:
            mods.append(importlib.import_module(f"tabor_tf.commands.{name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tabor-tf",
        description="Inspect a trained image classifier for trojan backdoors (TABOR, Neural Cleanse).",
    )
    parser.add_argument("--version", action="version", version=f"tabor-tf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def run_guarded(func, args) -> int:
    """Run ``func(args)``; a ``TaborError`` becomes one line on stderr and exit 2."""
    from .errors import TaborError

    try:
        return int(func(args))
    except TaborError as exc:
        print(f"tabor-tf: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tabor-tf: interrupted; finished labels are kept in the output folder", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    quiet_tensorflow()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code or 0)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_ERROR
    return run_guarded(args._run, args)
