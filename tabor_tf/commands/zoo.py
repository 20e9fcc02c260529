"""``tabor-tf zoo build|list``: train BadNet victim models with ground-truth cards, list a zoo."""

from __future__ import annotations

import glob
import json
import os
import sys

NAME = "zoo"
HELP = "build victim models (BadNet backdoors, ground-truth cards) from a recipe, or list a zoo"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    b = sub.add_parser("build", help="train every model of a recipe that is not built yet",
                       description="Train every model of RECIPE into OUT/NAME/ (model.h5 + card.json + "
                                   "trigger files); models whose card matches the recipe are skipped.")
    b.add_argument("recipe", metavar="RECIPE", help="zoo recipe JSON (see models/README.md)")
    b.add_argument("--data", action="append", metavar="[NAME=]SOURCE",
                   help="'synthetic' (embedded generator, sizes from the recipe) or an npz with "
                        "x_train/y_train/x_test/y_test (raw 0..255 images). NAME=SOURCE binds the data "
                        "name that recipe entries give in 'data' (repeat for several); a bare SOURCE is "
                        "for entries without one. Default: the recipe's 'datasets', else synthetic")
    b.add_argument("--out", required=True, metavar="DIR", help="zoo folder")
    b.add_argument("--only", nargs="+", metavar="NAME", help="build only these models")
    b.add_argument("--force", action="store_true", help="rebuild models that are already built")
    b.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    ls = sub.add_parser("list", help="one line per built model: name, targets, clean accuracy, ASR")
    ls.add_argument("dir", metavar="DIR", help="zoo folder")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args) -> int:
    from ..errors import TaborError

    action = getattr(args, "zoo_command", None)
    if action == "build":
        return _build(args)
    if action == "list":
        return _list(args)
    raise TaborError("zoo needs an action: 'tabor-tf zoo build RECIPE --out DIR' or 'tabor-tf zoo list DIR'")


def _build(args) -> int:
    from ..zoo import build_zoo, load_recipe

    recipe = load_recipe(args.recipe)
    sources = parse_data_args(args.data)

    def log(msg: str) -> None:
        if args.quiet and msg.startswith("  epoch"):
            return
        print(msg, flush=True)

    results = build_zoo(recipe, sources, args.out, only=args.only, force=args.force, log=log)
    built = sum(r["status"] == "built" for r in results)
    print(f"zoo {args.out}: {built} built, {len(results) - built} already there")
    return 0


def parse_data_args(values) -> dict:
    """``--data`` values -> ``{data name: source}`` (a bare source binds ``default``)."""
    from ..errors import TaborError

    out = {}
    for value in values or []:
        name, sep, source = value.partition("=")
        if not sep:
            name, source = "default", value
        name, source = name.strip(), source.strip()
        if not name or not source:
            raise TaborError(f"--data {value!r}: give SOURCE or NAME=SOURCE")
        if name in out and out[name] != source:
            raise TaborError(f"--data binds {name!r} twice ({out[name]} and {source})")
        out[name] = source
    return out


def _list(args) -> int:
    from ..errors import TaborError

    if not os.path.isdir(args.dir):
        raise TaborError(f"zoo folder {args.dir} not found")
    cards = sorted(glob.glob(os.path.join(args.dir, "*", "card.json")))
    rows = []
    for path in cards:
        with open(path) as fh:
            card = json.load(fh)
        rows.append({
            "name": card["name"],
            "path": os.path.join(os.path.dirname(path), card["model_file"]),
            "architecture": card["architecture"],
            "split": card.get("split"),
            "input_shape": card.get("input_shape"),
            "targets": card["targets"],
            "blind_spot": bool(card.get("blind_spot")),
            "clean_accuracy": card["clean_accuracy"],
            "attack_success_rates": [b["attack_success_rate"] for b in card["backdoors"]],
        })
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print(f"no built models in {args.dir}")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        targets = ",".join(str(t) for t in r["targets"]) or "clean"
        if len(r["targets"]) > 4:
            targets = f"{len(r['targets'])} labels"
        asr = " ".join(f"{a:.3f}" for a in r["attack_success_rates"] if a is not None) or "-"
        if len(r["attack_success_rates"]) > 4:
            asr = f"min {min((a for a in r['attack_success_rates'] if a is not None), default=float('nan')):.3f}"
        if r["blind_spot"]:
            asr += "  (blind spot)"
        print(f"{r['name']:<{width}}  {r['architecture']:<15} targets {targets:<6} clean acc {r['clean_accuracy']:.4f}"
              f"  ASR {asr}")
    return 0
