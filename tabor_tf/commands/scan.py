"""``tabor-tf scan MODEL --data DATA``: scan one model with TABOR (default) or Neural Cleanse.

Exit status like a virus scanner: 0 clean, 1 backdoor found, 2 usage or input error (also: clean
accuracy below the floor), 3 inconclusive (a partial ``--labels`` scan, or ``--allow-low-accuracy``).
"""

from __future__ import annotations

import argparse
import sys
import time

NAME = "scan"
HELP = ("scan a model for a trojan backdoor (TABOR or Neural Cleanse); exit 0 clean, 1 infected, 2 error, "
        "3 inconclusive")


def add_common_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``scan`` and ``compare``: data, preprocessing, seed, sample budget, loading."""
    parser.add_argument("--data", metavar="DATA",
                        help="clean images: .npz / .npy / .h5, an image folder (one sub-folder per class), a GTSRB "
                             "folder, or 'synthetic' (the embedded sign generator; 43-class square RGB models)")
    parser.add_argument("--preprocess", default="auto", metavar="MODE",
                        help="how raw pixels 0..255 map to the model's input: raw, unit (x/255), symmetric "
                             "(x/127.5-1), imagenet (BGR minus Caffe means), bgr (BGR, 0..255), bgr-unit (BGR, "
                             "x/255), mean=R,G,B,std=R,G,B ((x/255-mean)/std; values above 1 are in pixel units), "
                             "scale=S,offset=O (x*S+O), either with order=bgr to flip channels first, or auto "
                             "(best clean accuracy among raw/unit/symmetric/imagenet; default). Aliases: mnist=unit, "
                             "inception=symmetric")
    parser.add_argument("--label-order", default="auto", choices=("auto", "keras", "numeric"),
                        help="labels of class sub-folders: keras (index of the folder name sorted as a string, "
                             "as image_dataset_from_directory: 10 before 2), numeric (label = int(name)), or auto "
                             "(default: numeric when both agree, e.g. zero-padded names, else keras, unless numeric "
                             "gives a clearly higher clean accuracy; the scan header says which)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the trigger search (default 0)")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N",
                        help="use a class-stratified subsample of N clean images (default 1000; 0 = all)")
    parser.add_argument("--allow-unsafe-deserialization", action="store_true",
                        help="load Lambda layers / custom objects (runs code stored in the file: trusted files only)")
    parser.add_argument("--model-version", type=int, default=None, metavar="N",
                        help="TF Serving version to scan (default: the highest)")
    parser.add_argument("--allow-low-accuracy", action="store_true",
                        help="scan even when the clean accuracy is below the floor (50%%); the verdict is then "
                             "'inconclusive' (exit 3) instead of an error (exit 2)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar or info lines (warnings and the verdict line still shown)")
    from ..distribute import add_arguments as add_execution_arguments

    add_execution_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help=".keras / .h5 / .hdf5 file, SavedModel directory or TF Serving base path")
    add_common_input_arguments(parser)
    parser.add_argument("--method", default="tabor", choices=("tabor", "nc", "neural-cleanse"),
                        help="tabor (default) or nc (the faithful Neural Cleanse baseline)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="report folder (default: a new folder scan-<model>-<method>); an interrupted scan of "
                             "the same model and settings in it is resumed, any other scan's files are refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the scan files (report, label files, checkpoint) already in --out")
    parser.add_argument("--labels", metavar="LIST", default=None,
                        help="candidate target labels to scan, e.g. 0,3,5-9 (default all; at least 3). A partial "
                             "scan gives no clean verdict: it reports 'inconclusive' and exits 3")
    parser.add_argument("--preset", default=None,
                        help="settings preset (TABOR: gtsrb, imagenet, fast; NC: gtsrb, reference-defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the preset (repeatable), e.g. --set steps=200")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="end the scan within SECONDS (counted from the start, loading included) with the "
                             "best verdict reached by then, marked time-limited: infected if a label is already an "
                             "outlier, else inconclusive (exit 3); the same command resumes the search")
    parser.add_argument("--prescreen", type=int, default=None, metavar="N",
                        help="search only the N labels (at least 3) the logit pre-screen finds most suspicious "
                             "(for models with many classes); a partial scan: inconclusive, exit 3, with the "
                             "flagged labels as candidates. A TABOR --time-budget too short for every label "
                             "pre-screens by itself")
    parser.add_argument("--completion-rounds", type=int, default=None, metavar="N",
                        help="grow the restored trigger of each flagged label to the whole trigger in at most N "
                             "peel rounds (default 6; 0: off). Written as label_NNN_completed_*; the verdict "
                             "does not depend on it")
    parser.add_argument("--json", action="store_true",
                        help="print report.json to stdout (the summary then goes to stderr)")
    parser.add_argument("--no-html", action="store_true", help="do not write report.html")
    from ..stability import add_seed_arguments

    add_seed_arguments(parser)


def describe_inputs(prepared, quiet: bool, stream=None) -> None:
    """Print what the scan sees (model, data, preprocessing, clean accuracy) and warn loudly if odd."""
    from ..terminal import say, warn

    stream = stream or sys.stderr
    v, d, c = prepared.victim, prepared.data, prepared.check
    h, w, ch = v.input_shape
    say(f"model        {v.path} ({v.format}, {h}x{w}x{ch}, {v.num_classes} classes, {v.output_kind})",
        stream=stream, quiet=quiet)
    say(f"data         {prepared.data_path} ({d.format}, {len(d.x)} images, "
        f"{'labelled' if d.y is not None else 'no labels'})", stream=stream, quiet=quiet)
    acc = "unknown (no labels)" if c.clean_accuracy is None else f"{100 * c.clean_accuracy:.1f}%"
    tried = ", ".join(f"{m} {100 * a:.1f}%" for m, a in (c.accuracies_by_mode or {}).items())
    say(f"preprocess   {c.mode} (clean accuracy {acc}{'; tried ' + tried if len(c.accuracies_by_mode or {}) > 1 else ''})",
        stream=stream, quiet=quiet)
    for text in c.warnings:
        warn(text, stream=stream)
    for note in getattr(d, "notes", ()) or ():
        say(f"note         {note}", stream=stream, quiet=quiet)


def run(args) -> int:
    started_at = time.monotonic()  # --time-budget counts from here, TensorFlow's import included
    from ..distribute import execution_from_args, using

    with using(execution_from_args(args)):  # before any model loading (multiworker needs it first)
        return _run(args, started_at)


def _run(args, started_at: float) -> int:
    from ..cli import exit_for_verdict
    from ..errors import TaborError
    from ..output_folder import claim, default_out_dir, first_missing_ancestor, release_unused
    from ..preprocess import resolve_mode
    from ..report import dumps, method_key
    from ..scanning import (DEFAULT_MAX_SAMPLES, check_labels, make_config, parse_labels, parse_overrides, prepare,
                            run_scan, scan_identity)
    from ..terminal import ProgressBar, print_summary, print_verdict_line, say

    # usage errors before the (slow) model and data loading
    if not args.data:
        raise TaborError("scan needs clean data: --data PATH (or --data synthetic)")
    method = method_key(args.method)
    labels = parse_labels(args.labels)
    check_labels(labels)
    overrides = parse_overrides(args.overrides, method)
    max_samples = DEFAULT_MAX_SAMPLES if args.max_samples is None else args.max_samples
    if max_samples < 0:
        raise TaborError("--max-samples must be >= 0")
    if args.seeds < 1:
        raise TaborError(f"--seeds must be >= 1, got {args.seeds}")
    if args.time_budget is not None and not args.time_budget > 0:
        raise TaborError(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    if args.completion_rounds is not None and args.completion_rounds < 0:
        raise TaborError(f"--completion-rounds must be 0 or more, got {args.completion_rounds}")
    if args.time_budget is not None and args.seeds > 1:
        raise TaborError("--time-budget applies to one scan; it cannot be combined with --seeds")
    if args.prescreen is not None and args.seeds > 1:
        raise TaborError("--prescreen applies to one scan; it cannot be combined with --seeds")
    if args.prescreen is not None and args.prescreen < 3:
        raise TaborError(f"--prescreen must keep at least 3 labels (the outlier test's minimum), got {args.prescreen}")
    deadline = None if args.time_budget is None else started_at + float(args.time_budget)
    resolve_mode(args.preprocess)
    if args.preset is not None:
        make_config(method, args.preset, overrides)
    identity = scan_identity(args.model, method=method, data_path=args.data, seed=args.seed, labels=labels,
                             preprocess=args.preprocess, max_samples=max_samples, preset=args.preset,
                             overrides=overrides, model_version=args.model_version, seeds=args.seeds,
                             label_order=args.label_order, prescreen=args.prescreen)
    out_dir = args.out or default_out_dir(args.model, method, identity=identity)
    created = first_missing_ancestor(out_dir)
    state = claim(out_dir, identity, overwrite=args.overwrite)
    info = sys.stderr
    try:
        prepared = prepare(args.model, args.data, preprocess=args.preprocess, max_samples=max_samples,
                           allow_unsafe=args.allow_unsafe_deserialization, model_version=args.model_version,
                           labels=labels, allow_low_accuracy=args.allow_low_accuracy, label_order=args.label_order)
    except BaseException:
        if state == "new":  # a model or data that cannot be used leaves no empty report folder behind
            release_unused(out_dir, created)
        raise
    describe_inputs(prepared, args.quiet, info)
    if state != "new":
        say(f"output       {out_dir}: {'resuming the interrupted scan' if state == 'resume' else 'old scan files removed (--overwrite)'}",
            stream=info, quiet=args.quiet)
    if args.seeds > 1:
        from ..stability import run_seeds_for_scan

        return run_seeds_for_scan(args, method=method, labels=labels, overrides=overrides, prepared=prepared,
                                  out_dir=out_dir)
    say(f"method       {'TABOR' if method == 'tabor' else 'Neural Cleanse'} -> {out_dir}", stream=info,
        quiet=args.quiet)
    plan = _plan_labels(prepared, args, method, labels, overrides, deadline, out_dir, info)
    if plan.labels is not None:
        labels = plan.labels
    if plan.eval_images is not None:
        overrides = dict(overrides, eval_images=int(plan.eval_images))
    bar = ProgressBar("TABOR" if method == "tabor" else "Neural Cleanse", stream=info, quiet=args.quiet,
                      deadline=deadline)
    with bar:
        _, report = run_scan(method=method, labels=labels, seed=args.seed, preset=args.preset, overrides=overrides,
                             out_dir=out_dir, progress=bar, prepared=prepared, html=not args.no_html,
                             deadline=deadline, label_selection=plan.selection,
                             completion_rounds=args.completion_rounds)
    report_path = str(out_dir) + "/report.json"
    html_path = None if args.no_html else str(out_dir) + "/report.html"
    if args.json:
        sys.stdout.write(dumps(report))
        sys.stdout.flush()
    summary_stream = info if args.json else sys.stdout
    if args.quiet:
        if not args.json:  # with --json the verdict is on stdout already
            print_verdict_line(report, stream=summary_stream)  # a gate's log always says what was decided
    else:
        print_summary(report, report_path, stream=summary_stream, html_path=html_path)
        _print_probability(report, summary_stream)
        say(f"(total {time.monotonic() - started_at:.1f} s including loading)", stream=info)
    return exit_for_verdict(report["verdict"])


def _plan_labels(prepared, args, method: str, labels, overrides: dict, deadline, out_dir, stream):
    """The ``estimate`` line (TABOR, not quiet) and the labels the scan can afford
    (``tabor_tf.label_plan``: ``--prescreen``, a TABOR ``--time-budget`` too short for all labels).
    A resumed scan reuses the plan its first run saved."""
    from pathlib import Path

    from ..estimate import estimate_tabor_scan
    from ..label_plan import LabelPlan, load_plan, make_plan, save_plan
    from ..output_folder import CHECKPOINT_DIR
    from ..scanning import make_config
    from ..terminal import say

    tabor = method == "tabor"
    budgeted = tabor and deadline is not None
    if not (args.prescreen is not None or budgeted or (tabor and not args.quiet)):
        return LabelPlan()
    config = make_config(method, args.preset, overrides, prepared.victim.input_shape)
    candidates = labels if labels else list(range(int(prepared.victim.num_classes)))
    est = None
    if tabor and (budgeted or not args.quiet):
        est = estimate_tabor_scan(prepared.victim, prepared.check.mode, len(candidates), config, len(prepared.data.x))
        line = est.line()
        if budgeted and est.seconds > float(args.time_budget):
            share = 100 * float(args.time_budget) / est.seconds
            line += (f"; --time-budget {float(args.time_budget):g} s covers"
                     f" {'under 1' if share < 1 else f'about {share:.0f}'}% of that: expect a partial answer")
        say(f"estimate     {line}", stream=stream, quiet=args.quiet)
    folder = Path(out_dir) / CHECKPOINT_DIR
    plan = load_plan(folder)
    if plan is not None:
        if plan.labels is not None:
            plan.lines = [f"resuming the planned search of {len(plan.labels)} of {len(candidates)} labels"]
    else:
        budget = (deadline - time.monotonic(), est.images_per_second) if budgeted else None
        plan = make_plan(prepared, candidates, keep=args.prescreen, budget=budget, config=config)
        save_plan(folder, plan)
    for line in plan.lines:
        say(f"plan         {line}", stream=stream, quiet=args.quiet)
    return plan


def _print_probability(report: dict, stream) -> None:
    """The summary's trojan-probability line (``tabor_tf.calibration``)."""
    from ..calibration import probability_line

    line = probability_line(report)
    if line:
        print(line, file=stream, flush=True)
