"""``tabor-tf audit PATH --data DATA``: scan every model of a TF Serving base path, a folder or a manifest.

Exit status: 2 if any model could not be scanned (it wins over 1: an audit that could not look at
a model must fail the pipeline), else 1 if any model is infected, else 0. Usage errors: 2.
"""

from __future__ import annotations

import argparse
import sys

NAME = "audit"
HELP = ("scan many models (TF Serving versions, a folder, or a manifest) and write audit.json / audit.md; "
        "exit 2 if any model could not be scanned, else 1 if any is infected, else 3 if any verdict is inconclusive, "
        "else 0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..stability import add_seed_arguments

    parser.add_argument("path", metavar="PATH",
                        help="TF Serving model base path (NAME/<version>/), a folder of .h5 / .hdf5 / .keras files "
                             "and SavedModel folders, or a manifest (.json list / .csv: model, data, preprocess, "
                             "labels; relative paths are relative to the manifest)")
    parser.add_argument("--data", metavar="DATA", default=None,
                        help="clean images for every model without its own 'data' in the manifest "
                             "(.npz / .npy / .h5, an image folder, a GTSRB folder, or 'synthetic')")
    parser.add_argument("--method", default="tabor", choices=("tabor", "nc", "neural-cleanse"),
                        help="tabor (default) or nc (the faithful Neural Cleanse baseline)")
    parser.add_argument("--versions", default="all", choices=("all", "latest"),
                        help="TF Serving base paths: scan every version (default) or only the highest")
    parser.add_argument("--out", metavar="DIR", default="audit",
                        help="output folder: DIR/<model-id>/report.json, DIR/audit.json, DIR/audit.md "
                             "(default ./audit; models already scanned there with the same settings are reused)")
    parser.add_argument("--preprocess", default="auto", metavar="MODE",
                        help="raw, unit, symmetric, imagenet, bgr, bgr-unit, mean=..,std=.., scale=..,offset=.. or "
                             "auto (default; a manifest row may override; quote a custom mode in a CSV manifest)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the trigger search (default 0)")
    add_seed_arguments(parser)
    parser.add_argument("--preset", default=None, help="settings preset of the method")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the preset (repeatable)")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N",
                        help="class-stratified subsample of N clean images per model (default 1000; 0 = all)")
    parser.add_argument("--allow-unsafe-deserialization", action="store_true",
                        help="load Lambda layers / custom objects (runs code stored in the files: trusted files only)")
    parser.add_argument("--allow-low-accuracy", action="store_true",
                        help="scan models whose clean accuracy is below the floor (50%%): their verdict is then "
                             "'inconclusive' instead of an error")
    parser.add_argument("--no-html", action="store_true", help="do not write report.html per model")
    parser.add_argument("--quiet", action="store_true", help="no progress or info lines")
    parser.add_argument("--json", action="store_true", help="print audit.json to stdout")
    from ..distribute import add_arguments as add_execution_arguments

    add_execution_arguments(parser)


def settings_from_args(args):
    from ..audit import AuditSettings
    from ..errors import TaborError
    from ..preprocess import resolve_mode
    from ..report import method_key
    from ..scanning import DEFAULT_MAX_SAMPLES, make_config, parse_overrides

    method = method_key(args.method)
    overrides = parse_overrides(args.overrides, method)
    max_samples = DEFAULT_MAX_SAMPLES if args.max_samples is None else args.max_samples
    if max_samples < 0:
        raise TaborError("--max-samples must be >= 0")
    if args.seeds < 1:
        raise TaborError("--seeds must be >= 1")
    resolve_mode(args.preprocess)
    if args.preset is not None:
        make_config(method, args.preset, overrides)
    return AuditSettings(method=method, preprocess=args.preprocess, seed=args.seed, seeds=args.seeds,
                         preset=args.preset, overrides=tuple(sorted(overrides.items())),
                         max_samples=max_samples, allow_unsafe=args.allow_unsafe_deserialization,
                         html=not args.no_html, allow_low_accuracy=args.allow_low_accuracy)


def run(args) -> int:
    from ..distribute import execution_from_args, using

    with using(execution_from_args(args)):  # every model of the audit runs under it
        return _run(args)


def _run(args) -> int:
    from ..audit import AuditLog, discover, run_audit
    from ..report import dumps
    from ..terminal import ProgressBar, say

    settings = settings_from_args(args)
    items = discover(args.path, data=args.data, versions=args.versions)
    info = sys.stderr
    say(f"audit        {len(items)} model(s) from {args.path} -> {args.out}", stream=info, quiet=args.quiet)
    log = AuditLog(say=lambda text: say(text, stream=info, quiet=args.quiet))
    label = "TABOR" if settings.method == "tabor" else "Neural Cleanse"
    summary = run_audit(items, args.out, settings, source=str(args.path), log=log,
                        progress_for=lambda item, seed: ProgressBar(
                            f"{label} {item.model_id}" + ("" if seed is None else f" seed {seed}"),
                            stream=info, quiet=args.quiet))
    if args.json:
        sys.stdout.write(dumps(summary))
    elif not args.quiet:
        for e in summary["models"]:
            what = e["verdict"].upper() if e["verdict"] else "NOT SCANNED"
            flagged = ",".join(str(k) for k in e["flagged_labels"]) or "-"
            tail = f"  error: {e['error']}" if e["error"] else f"  flagged {flagged}"
            if e.get("stability"):
                st = e["stability"]
                tail += (f"  (seeds {st['seeds'][0]}..{st['seeds'][-1]}: verdict agreement "
                         f"{100 * st['verdict_agreement']:.0f}%, flagged-set agreement "
                         f"{100 * st['flagged_agreement']:.0f}%)")
            print(f"{e['id']:<28} {what:<12}{tail}", file=sys.stdout)
        print(f"summary: {args.out}/audit.json, {args.out}/audit.md", file=sys.stdout)
    for e in summary["models"]:
        if e["error"]:
            print(f"tabor-tf: error: {e['id']}: {e['error']}", file=sys.stderr)
    return int(summary["exit_status"])
