"""``tabor-tf patch MODEL --report DIR --data DATA --out PATCHED.h5``: unlearn restored triggers.

Neural Cleanse's mitigation (``tabor_tf.unlearning``): fine-tune a copy of MODEL on clean data in
which a fraction of the images carry the restored trigger(s) of a scan report with their TRUE
labels. Attack success of each restored trigger and clean accuracy are measured before and after
on held-out images. Exit status: 0 patched, 1 a restored trigger still works after patching
(attack success >= --residual), 2 usage or input error. MODEL is only read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "patch"
HELP = ("unlearn the restored trigger(s) of a scan report from a model (Neural Cleanse's mitigation); "
        "exit 0 patched, 1 a trigger still works, 2 error")
PATCH_RECORD_SUFFIX = ".patch.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..unlearning import TRIGGER_KINDS

    parser.add_argument("model", metavar="MODEL", help="the scanned .keras / .h5 model (only read)")
    parser.add_argument("--report", required=True, metavar="REPORT",
                        help="the scan's report folder (or its report.json): the restored triggers come from it")
    parser.add_argument("--data", required=True, metavar="DATA",
                        help="LABELLED clean images (.npz / .npy / .h5 / image folder / GTSRB folder, or 'synthetic')")
    parser.add_argument("--out", required=True, metavar="PATCHED",
                        help="where to save the patched model (.h5 or .keras); PATCHED.patch.json records the run")
    parser.add_argument("--label", dest="labels", default=None, metavar="LIST",
                        help="restored triggers to unlearn, e.g. 7 or 2,7 (default: every flagged label)")
    parser.add_argument("--preprocess", default=None, metavar="MODE",
                        help="raw / unit / symmetric / imagenet / bgr / bgr-unit / mean=..,std=.. / scale=..,offset=.. "
                             "(default: the mode the scan used)")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N",
                        help="use a class-stratified subsample of N clean images (default: all)")
    parser.add_argument("--holdout", type=float, default=0.2, metavar="F",
                        help="fraction of the images kept out of fine-tuning to measure before / after (default 0.2)")
    parser.add_argument("--fraction", type=float, default=0.2, metavar="F",
                        help="fraction of the fine-tuning images stamped with a restored trigger (default 0.2)")
    parser.add_argument("--trigger", choices=TRIGGER_KINDS, default="minimal",
                        help="unlearn each label's trigger as the detector restored it (minimal, default) or the "
                             "whole trigger grown from it by the scan's trigger completion (completed; labels "
                             "without one use the minimal trigger)")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (default 1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="fine-tuning batch size (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stamping and shuffling (default 0)")
    parser.add_argument("--residual", type=float, default=0.5, metavar="F",
                        help="exit 1 if a restored trigger still reaches this attack success after patching "
                             "(default 0.5)")
    parser.add_argument("--allow-unsafe-deserialization", action="store_true",
                        help="load Lambda layers / custom objects (runs code stored in the file: trusted files only)")
    parser.add_argument("--json", action="store_true", help="print the patch record (JSON) to stdout")
    parser.add_argument("--quiet", action="store_true", help="no info lines")


def split_holdout(n: int, holdout: float, seed: int):
    """Indices ``(fine_tune, held_out)`` of ``n`` images; ``held_out`` is a ``holdout`` fraction (at
    least one image when ``holdout > 0``), chosen with ``seed``."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    k = int(round(holdout * n))
    if holdout > 0:
        k = min(max(k, 1), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def _load_data(args, report: dict):
    from ..data import load_clean_data
    from ..errors import DataError
    from ..scanning import DATA_SUBSAMPLE_SEED, DEFAULT_MAX_SAMPLES, MIN_CLEAN_SAMPLES, SYNTHETIC, synthetic_data

    model = report.get("model") or {}
    shape, k = model.get("input_shape"), model.get("num_classes")
    limit = args.max_samples or None
    if str(args.data).strip().lower() == SYNTHETIC:
        view = argparse.Namespace(input_shape=tuple(shape or ()), num_classes=k)
        data = synthetic_data(view, limit or DEFAULT_MAX_SAMPLES)
    else:
        data = load_clean_data(args.data, image_shape=shape, num_classes=k, limit=limit, seed=DATA_SUBSAMPLE_SEED,
                               min_samples=MIN_CLEAN_SAMPLES,  # class folders labelled as the scan did
                               label_order=(report.get("data") or {}).get("label_order") or "auto")
    if data.y is None:
        raise DataError(f"{args.data}: patching needs labelled clean images (the triggers are unlearned "
                        "against the true labels)")
    return data


def summary_lines(record: dict) -> list:
    before, after = record["before"], record["after"]
    lines = [f"patched model    {record['model_path']}",
             f"unlearned        restored trigger(s) of label(s) {', '.join(map(str, record['labels']))} "
             f"({record['settings']['epochs']} epoch(s), {100 * record['settings']['fraction_with_trigger']:.0f}% "
             f"stamped, {record['fine_tune_images']} images)",
             f"clean accuracy   {100 * before['clean_accuracy']:.1f}% -> {100 * after['clean_accuracy']:.1f}% "
             f"({record['eval_images']} held-out images)"]
    for label, a, b in zip(record["labels"], before["attack_success"], after["attack_success"]):
        fmt = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
        lines.append(f"attack success   label {label}: {fmt(a)} -> {fmt(b)} (restored trigger)")
    return lines


def run(args) -> int:
    from ..cli import EXIT_CLEAN, EXIT_INFECTED
    from ..errors import TaborError
    from ..preprocess import resolve_mode
    from ..report import atomic_write_json, dumps, load_report
    from ..scanning import parse_labels
    from ..terminal import say, warn
    from ..unlearning import UnlearnConfig, patch_from_report

    out = Path(args.out)
    if out.suffix not in (".keras", ".h5"):
        raise TaborError(f"--out: save the patched model as .keras or .h5, not {out.name!r}")
    if Path(args.model).expanduser().resolve() == out.expanduser().resolve():
        raise TaborError("--out must not be the model being patched (the input model is never modified)")
    if not 0.0 <= args.holdout < 1.0:
        raise TaborError("--holdout must be in [0, 1)")
    if args.max_samples is not None and args.max_samples < 0:
        raise TaborError("--max-samples must be >= 0")
    if args.preprocess:
        resolve_mode(args.preprocess)
    labels = parse_labels(args.labels)
    config = UnlearnConfig(fraction_with_trigger=args.fraction, epochs=args.epochs, lr=args.lr,
                           batch_size=args.batch_size, seed=args.seed)
    if config.epochs < 1 or config.batch_size < 1 or not config.lr > 0 or not 0 <= config.fraction_with_trigger <= 1:
        raise TaborError("--epochs and --batch-size must be >= 1, --lr > 0 and --fraction in [0, 1]")
    report = load_report(args.report)
    data = _load_data(args, report)
    tune, held = split_holdout(len(data.x), args.holdout, args.seed)
    ex, ey = (data.x[held], data.y[held]) if len(held) else (data.x[tune], data.y[tune])
    say(f"patching       {args.model} with {len(tune)} clean images ({len(held)} held out) -> {out}",
        stream=sys.stderr, quiet=args.quiet)
    record = patch_from_report(args.model, args.report, data.x[tune], data.y[tune], out, labels=labels,
                               preprocess=args.preprocess, config=config, eval_x=ex, eval_y=ey,
                               allow_unsafe=args.allow_unsafe_deserialization, trigger=args.trigger)
    record.update(model=str(Path(args.model).resolve()), data=str(args.data), fine_tune_images=int(len(tune)),
                  eval_images=int(len(ey)), residual_threshold=float(args.residual))
    for text in record["warnings"]:
        warn(text, stream=sys.stderr)
    atomic_write_json(Path(str(out) + PATCH_RECORD_SUFFIX), record)
    residual = [v for v in record["after"]["attack_success"] if v is not None and v >= args.residual]
    if args.json:
        sys.stdout.write(dumps(record))
    elif not args.quiet:
        print("\n".join(summary_lines(record)), flush=True)
    if residual:
        warn(f"a restored trigger still reaches {100 * max(residual):.0f}% attack success after patching "
             "(try --epochs 2 or a larger --fraction)", stream=sys.stderr)
        return EXIT_INFECTED
    return EXIT_CLEAN
