"""Build zoo recipes in several worker processes at once (a many-core or GPU host).

    python benchmarks/zoo_build_parallel.py models/recipes/eval-dev.json models/recipes/eval-test.json \
        --data mnist=PATH --data gtsrb=PATH --out-dir eval-dev --out-dir eval-test --jobs 8

Each recipe's models go to the ``--out-dir`` at the same position. Workers take models from a
shared queue, largest inputs first; each one is ``tabor_tf.zoo.build_zoo(..., only=[name])``,
so a model already built (current card) is skipped and an interrupted run resumes. Keras's
backend is whatever ``KERAS_BACKEND`` says: the zoo builder is numpy + Keras only, so it also
runs under ``KERAS_BACKEND=jax`` on a host that has JAX but no TensorFlow (the card records the
backend). Logs: ``OUT/build-worker-N.log``; a summary line per model on stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import traceback


def _worker(index: str, queue, results, sources: dict, log_dir: str) -> None:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share one GPU between workers
    from tabor_tf.zoo import build_zoo, load_recipe

    log_path = os.path.join(log_dir, f"build-worker-{index}.log")
    with open(log_path, "a", buffering=1) as log:
        while True:
            item = queue.get()
            if item is None:
                return
            recipe_path, name, out = item
            start = time.perf_counter()
            try:
                recipe = load_recipe(recipe_path)
                build_zoo(recipe, sources, out, only=[name], log=lambda m: log.write(m + "\n"))
                results.put((name, "ok", time.perf_counter() - start, ""))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next model
                log.write(traceback.format_exc())
                results.put((name, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}"))


def _cost(spec) -> float:
    """Rough work of one model, for ordering: pixels x epochs x architecture weight."""
    size = spec.resize or (28 if spec.data == "mnist" else 32)
    weight = {"resnet_small": 3.0, "mobilenet_small": 2.0, "gtsrb10": 2.0}.get(spec.arch, 1.0)
    return size * size * spec.epochs * weight


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--out-dir", action="append", required=True, help="one per recipe, in order")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--only", nargs="*", help="model names to build (default: all)")
    ap.add_argument("--only-data", nargs="*", help="build only the models trained on these data names")
    ap.add_argument("--log-dir", help="where the worker logs go (default: the first --out-dir)")
    args = ap.parse_args(argv)
    if len(args.out_dir) != len(args.recipes):
        ap.error("give one --out-dir per recipe")
    sources = dict(item.split("=", 1) if "=" in item else ("default", item) for item in args.data)

    from tabor_tf.zoo import load_recipe

    work = []
    for path, out in zip(args.recipes, args.out_dir):
        os.makedirs(out, exist_ok=True)
        for spec in load_recipe(path).select(None):
            if (args.only and spec.name not in args.only) or (args.only_data and spec.data not in args.only_data):
                continue
            work.append((_cost(spec), path, spec.name, out))
    work.sort(key=lambda w: -w[0])
    ctx = mp.get_context("spawn")
    queue, results = ctx.Queue(), ctx.Queue()
    for _cost_, path, name, out in work:
        queue.put((path, name, out))
    jobs = max(1, min(args.jobs, len(work)))
    for _ in range(jobs):
        queue.put(None)
    log_dir = args.log_dir or args.out_dir[0]
    os.makedirs(log_dir, exist_ok=True)
    tag = "-".join(args.only_data or []) or "all"
    procs = [ctx.Process(target=_worker, args=(f"{tag}-{i}", queue, results, sources, log_dir)) for i in range(jobs)]
    for p in procs:
        p.start()
    failed = 0
    start = time.perf_counter()
    for done in range(1, len(work) + 1):
        name, status, seconds, why = results.get()
        failed += status != "ok"
        print(f"[{done}/{len(work)}] {name}: {status} in {seconds:.0f}s {why}  (wall {time.perf_counter() - start:.0f}s)",
              flush=True)
    for p in procs:
        p.join()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
