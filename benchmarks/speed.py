"""Speed benchmark of the TABOR engine and of full scans (not part of CI).

    python benchmarks/speed.py --model /work/runs/zoo-gtsrb/square-br-4 [--data GTSRB.npz | synthetic]
        [--images 1000] [--preprocess unit] [--preset gtsrb] [--set KEY=VALUE ...] [--skip-nc] [--labels N]
        [--only raw,raw-xla,engine,tabor-full,tabor-scheduled,tabor-two-stage,nc] [--out speed.json]

Every measurement runs in its own subprocess (running eager code before a ``tf.function`` in the
same process halved the function's speed on this kind of machine), one after the other:

``raw``              forward + backward throughput of the model alone (gradient of the summed
                     logits w.r.t. the input) on a batch as large as one engine step for all
                     labels (``labels x (batch + blocking batch + 1)`` images): the limit.
``raw-xla``          the same compiled by XLA (``jit_compile=True``); its ratio to ``raw`` comes out
                     under ``xla_to_raw_ratio`` (on this project's 2-core CPU box, 2026-12-07: 0.56
                     for 6 Conv, 0.54 for the ResNet, 0.06 for the MobileNet; the engine stays on
                     TensorFlow's default kernels, docs/TABOR_CHOICES.md).
``engine``           the TABOR engine's stamped images/s over a few rounds with every label active
                     (after one round of tracing), and its ratio to ``raw``.
``tabor-full``       a whole TABOR scan (all labels, ``scheduler=none``): wall, optimisation time,
                     image-steps, verdict, flagged labels, anomaly index.
``tabor-scheduled``  the same with the budget scheduler (``scheduler=retire``).
``tabor-two-stage``  the same as a two-stage scan (``scheduler=two-stage``); ratios to ``tabor-full``
                     (time, image-steps, same verdict) come out under ``two_stage_vs_full``.
``nc``               a whole faithful Neural Cleanse scan (``--skip-nc`` leaves it out; about
                     40 min per GTSRB model on a 2-core CPU).

``--model``: a zoo folder (``card.json`` gives the preprocessing) or a model file. ``--data``:
an npz with ``x_test``/``y_test`` (or ``x``/``y``), or ``synthetic``. JSON goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MODES = ("raw", "raw-xla", "engine", "tabor-full", "tabor-scheduled", "tabor-two-stage", "nc")
SCHEDULER_OF = {"tabor-full": "none", "tabor-scheduled": "retire", "tabor-two-stage": "two-stage"}
GTSRB = "/work/shared/data/gtsrb/gtsrb-32x32.npz"


def _load(args):
    from tabor_tf.loading import load_victim

    model, preprocess = args.model, args.preprocess
    if os.path.isdir(model) and os.path.isfile(os.path.join(model, "card.json")):
        from tabor_tf.zoo import load_card

        card = load_card(model)
        preprocess = preprocess or card.data["preprocessing"]
        model = os.path.join(model, card.data["model_file"])
    victim = load_victim(model)
    if args.data == "synthetic":
        from tabor_tf.scanning import synthetic_data

        d = synthetic_data(victim, args.images)
        x, y = d.x, d.y
    else:
        with np.load(args.data) as z:
            x, y = (z["x_test"], z["y_test"]) if "x_test" in z.files else (z["x"], z["y"])
        idx = np.sort(np.random.default_rng(args.seed).choice(len(x), size=min(args.images, len(x)), replace=False))
        x, y = x[idx].astype(np.float32), y[idx].astype(np.int64)
    return victim, x, y, preprocess or "unit"


def _config(args, **extra):
    from tabor_tf.scanning import parse_overrides
    from tabor_tf.tabor import preset

    overrides = parse_overrides(args.set, "tabor")
    overrides.update(extra)
    return preset(args.preset, **overrides)


def _worker(args) -> dict:
    import tensorflow as tf

    victim, x, y, mode = _load(args)
    labels = list(range(int(victim.num_classes)))[: args.labels or None]
    if args.worker in ("raw", "raw-xla"):
        from tabor_tf.preprocess import preprocess as preprocess_fn
        from tabor_tf.tabor.engine import plan_chunks

        cfg = _config(args)
        b = min(cfg.batch_size, len(x))
        per_label = b + min(cfg.blocking_batch_size, b) + 1
        chunk = plan_chunks(np.arange(len(labels)), max(1, cfg.max_images_per_step // per_label), cfg.label_bucket)[0]
        n = len(chunk[0]) * per_label
        batch = tf.constant(np.resize(x, (n, *x.shape[1:])))

        @tf.function(jit_compile=args.worker == "raw-xla")
        def step(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                loss = tf.reduce_sum(tf.cast(victim.logits(preprocess_fn(v, mode)), tf.float32))
            return tape.gradient(loss, v)

        step(batch).numpy()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            step(batch).numpy()
            reps += 1
        wall = time.perf_counter() - t0
        return {"batch_images": n, "repetitions": reps, "seconds": wall, "images_per_second": n * reps / wall}
    if args.worker == "engine":
        from tabor_tf.tabor.engine import TriggerEngine

        cfg = _config(args, min_rounds=10 ** 6)  # no label may converge while we measure
        engine = TriggerEngine(victim.logits, x, y, labels, cfg, preprocess=mode, seed=args.seed)
        engine.run_round()  # traces the step
        before, rounds, t0 = engine.image_steps, 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds and engine.steps_done < cfg.steps:
            engine.run_round()
            rounds += 1
        wall = time.perf_counter() - t0
        return {"rounds": rounds, "steps": rounds * cfg.round_steps, "image_steps": engine.image_steps - before,
                "seconds": wall, "images_per_second": (engine.image_steps - before) / wall}
    if args.worker in SCHEDULER_OF:
        from tabor_tf.data import CleanData
        from tabor_tf.tabor import scan

        cfg = _config(args, scheduler=SCHEDULER_OF[args.worker])
        t0 = time.perf_counter()
        res = scan(victim, CleanData(x=x, y=y, source=args.data, format="npz"), preprocess=mode, config=cfg,
                   seed=args.seed)
        wall = time.perf_counter() - t0
        return {"wall_seconds": wall, "optimise_seconds": res.settings["optimise_seconds"],
                "image_steps": res.settings["image_steps"], "images_per_second": res.settings["images_per_second"],
                "verdict": res.verdict, "flagged_labels": res.flagged_labels,
                "anomaly_index": float(res.mad.anomaly_index), "median": float(res.mad.median),
                "mad": float(res.mad.mad), "retired": [r.label for r in res.labels if r.stop_reason == "retired"],
                "screened": [r.label for r in res.labels if r.stop_reason == "screened"],
                "scores": {str(r.label): float(r.score) for r in res.labels}, "settings": cfg.to_dict()}
    if args.worker == "nc":
        from neural_cleanse_baseline import preset as nc_preset
        from neural_cleanse_baseline import scan as nc_scan

        cfg = nc_preset("gtsrb")
        t0 = time.perf_counter()
        res = nc_scan(victim, x, preprocess=mode, config=cfg, seed=args.seed)
        wall = time.perf_counter() - t0
        steps = int(sum(r.steps for r in res.labels))
        return {"wall_seconds": wall, "steps": steps, "image_steps": steps * cfg.mini_batch * cfg.batch_size,
                "verdict": res.verdict, "flagged_labels": res.flagged_labels,
                "anomaly_index": float(res.mad.anomaly_index)}
    raise SystemExit(f"unknown worker {args.worker}")


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="zoo folder (card.json) or model file")
    ap.add_argument("--data", default=GTSRB, help="npz (x_test/y_test or x/y) or 'synthetic'")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--preprocess", default=None, help="default: the card's, else unit")
    ap.add_argument("--preset", default="gtsrb")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time of raw / engine")
    ap.add_argument("--labels", type=int, default=0, help="raw / engine: only the first N labels (0: all)")
    ap.add_argument("--skip-nc", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--out", default=None, help="write the JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print("SPEED-RESULT " + json.dumps(_worker(args), default=float))
        return 0
    modes = [m for m in (args.only.split(",") if args.only else MODES) if not (m == "nc" and args.skip_nc)]
    base = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--data", args.data,
            "--images", str(args.images), "--preset", args.preset, "--seed", str(args.seed),
            "--seconds", str(args.seconds), "--labels", str(args.labels)]
    if args.preprocess:
        base += ["--preprocess", args.preprocess]
    for s in args.set:
        base += ["--set", s]
    out = {"model": args.model, "data": args.data, "images": args.images, "preset": args.preset, "set": args.set,
           "seed": args.seed, "machine": f"{platform.machine()} {os.cpu_count()} CPU(s), {platform.platform()}",
           "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "results": {}}
    for mode in modes:
        t0 = time.perf_counter()
        proc = subprocess.run(base + ["--worker", mode], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SPEED-RESULT ")]
        if proc.returncode != 0 or not line:
            out["results"][mode] = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
        else:
            out["results"][mode] = json.loads(line[-1][len("SPEED-RESULT "):])
        out["results"][mode]["process_seconds"] = time.perf_counter() - t0
        brief = {k: v for k, v in out["results"][mode].items() if k not in ("scores", "settings")}
        print(f"{mode}: {json.dumps(brief, default=float)}", file=sys.stderr)
    r = out["results"]
    if "images_per_second" in r.get("raw", {}) and "images_per_second" in r.get("engine", {}):
        out["engine_to_raw_ratio"] = r["engine"]["images_per_second"] / r["raw"]["images_per_second"]
    if "images_per_second" in r.get("raw", {}) and "images_per_second" in r.get("raw-xla", {}):
        out["xla_to_raw_ratio"] = r["raw-xla"]["images_per_second"] / r["raw"]["images_per_second"]
    full = r.get("tabor-full", {})
    for mode, key in (("tabor-scheduled", "scheduled_vs_full"), ("tabor-two-stage", "two_stage_vs_full")):
        other = r.get(mode, {})
        if "image_steps" in full and "image_steps" in other:
            out[key] = {
                "same_verdict": full["verdict"] == other["verdict"],
                "same_flagged": full["flagged_labels"] == other["flagged_labels"],
                "image_steps_saved": 1 - other["image_steps"] / full["image_steps"],
                "wall_ratio": other["wall_seconds"] / full["wall_seconds"],
            }
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
