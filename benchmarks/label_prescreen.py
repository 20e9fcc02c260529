"""Where the label pre-screen (``tabor_tf/prescreen.py``) ranks the true targets of zoo victims.

For every victim: one forward pass over the clean images, each pre-screening method's ranking of
the labels, and the rank of every true target in it (1 = searched first). A method is useful
when the targets rank high enough that searching the top few labels finds them.

Usage:

  python benchmarks/label_prescreen.py --zoo runs/zoo-eval-dev [--zoo-data gtsrb=PATH ...] \
      [--max-samples 1000] [--out runs/prescreen-dev.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tabor_tf import prescreen
from tabor_tf.compare import card_data_source, load_truth, parse_zoo_data, zoo_cards
from tabor_tf.scanning import prepare


def victim_ranks(card: Path, zoo_data: dict, max_samples: int) -> dict:
    truth = load_truth(card)
    data_path, synthetic = card_data_source(truth)
    name = truth["_card"].data.get("data_name")
    if name and name in zoo_data:
        data_path, synthetic = zoo_data[name], {}
    prepared = prepare(truth["_card"].model_path, data_path, max_samples=max_samples, **synthetic)
    x = np.asarray(prepared.data.x, np.float32)
    logits = prescreen.clean_logits(prepared.victim, x, prepared.check.mode)
    y = prepared.data.y if prepared.data.y is not None else logits.argmax(axis=1)
    k = logits.shape[1]
    out = {"targets": [int(t) for t in truth["targets"]], "labels": k, "ranks": {}}
    for method in prescreen.METHODS:
        order = prescreen.ranking(logits, y, range(k), method)
        out["ranks"][method] = [order.index(int(t)) + 1 for t in truth["targets"]]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True)
    p.add_argument("--zoo-data", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    zoo_data = parse_zoo_data(args.zoo_data)
    results = {}
    for card in zoo_cards(args.zoo):
        name = Path(card).parent.name
        results[name] = victim_ranks(Path(card), zoo_data, args.max_samples)
        print(name, results[name], file=sys.stderr)
    lines = ["| victim | labels | targets | " + " | ".join(f"rank by {m}" for m in prescreen.METHODS) + " |",
             "|---|---|---|" + "---|" * len(prescreen.METHODS)]
    for name, r in results.items():
        if r["targets"]:
            lines.append(f"| {name} | {r['labels']} | {r['targets']} | "
                         + " | ".join(str(r["ranks"][m]) for m in prescreen.METHODS) + " |")
    for m in prescreen.METHODS:
        ranks = [q for r in results.values() for q in r["ranks"][m]]
        if ranks:
            rel = [q / r["labels"] for r in results.values() for q in r["ranks"][m]]
            lines.append(f"| **{m}** | | {len(ranks)} targets | median rank {np.median(ranks):g},"
                         f" worst {max(ranks)}, worst as share of labels {max(rel):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
