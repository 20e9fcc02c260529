"""``tabor-tf info MODEL``: what tabor-tf sees in a model file, without scanning it."""

from __future__ import annotations

import argparse
import json

NAME = "info"
HELP = "describe a model: format, input shape, classes, probabilities or logits, preprocessing layers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help=".keras / .h5 / .hdf5 file, SavedModel directory or TF Serving base path")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--allow-unsafe-deserialization", action="store_true",
                        help="load Lambda layers / custom objects (runs code stored in the file: trusted files only)")
    parser.add_argument("--model-version", "--version", dest="model_version", type=int, default=None, metavar="N",
                        help="TF Serving version to read (default: the highest); the same option as scan's "
                             "--model-version (--version is kept as an older spelling)")


def _layers_text(victim) -> str:
    layers = victim.preprocessing_layers
    if layers is None:
        return "unknown (a SavedModel without Keras metadata does not list its layers)"
    return ", ".join(str(l) for l in layers) if layers else "none"


def format_text(victim) -> str:
    h, w, c = victim.input_shape
    rows = [
        ("model", victim.path),
        ("format", f"{victim.format} - {victim.format_detail}"),
        ("input shape", f"{h} x {w} x {c} (height x width x channels, {'RGB' if c == 3 else 'grayscale'})"),
        ("classes", str(victim.num_classes)),
        ("output", f"{victim.output_kind}; logits = {victim.logits_source}"),
        ("preprocessing layers", _layers_text(victim)),
        ("parameters", f"{victim.param_count:,}" if victim.param_count is not None else "unknown"),
        ("sha256", victim.sha256),
    ]
    rows += [("note", n) for n in victim.notes]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args) -> int:
    from ..loading import load_victim

    victim = load_victim(args.model, allow_unsafe=args.allow_unsafe_deserialization, version=args.model_version)
    if args.json:
        print(json.dumps(victim.describe(), sort_keys=True))
    else:
        print(format_text(victim))
    return 0
