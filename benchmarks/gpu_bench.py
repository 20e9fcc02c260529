"""GPU (or CPU) speed benchmark for many-class models, ready to run on a machine nobody here has yet.

For each ``keras.applications`` architecture (random weights, built here: nothing is downloaded)
with 1000 classes at 224x224 it measures, each in its own process:

1. ``benchmarks/speed.py --only raw,engine --labels 64``: the model's own forward+backward
   images/s at one engine step's batch of 64 labels, the TABOR engine's stamped images/s with
   those labels active, and their ratio;
2. ``tabor-tf scan --time-budget B``: the estimate line, the plan (how many labels the logit
   pre-screen keeps, on how many scoring images), the wall time against the budget, the
   verdict line (PARTIAL / TIME-LIMITED) and the exit code;
3. ``tabor-tf scan --prescreen N`` (optional, ``--prescreen``): a pre-screened scan of N labels
   to the end of the TABOR budget, its wall time.

Usage (writes OUT/gpu_bench.json and OUT/gpu_bench.md; device name from ``nvidia-smi`` if any):

  python benchmarks/gpu_bench.py --out runs/gpu-bench [--models resnet50,mobilenetv2]
      [--budget 300] [--images 200] [--prescreen 20] [--quick]

``--quick``: a smoke run for a CPU (MobileNetV2 alpha 0.35, 96x96, 100 classes, 60 s budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
BUILDERS = {"resnet50": ("ResNet50", {}), "mobilenetv2": ("MobileNetV2", {}),
            "mobilenetv2-035": ("MobileNetV2", {"alpha": 0.35}), "vgg16": ("VGG16", {})}


def build_model(name: str, size: int, classes: int, out: Path) -> Path:
    """A random-weight ``keras.applications`` model with a softmax head, saved as ``.keras``."""
    path = out / f"{name}-{size}-{classes}.keras"
    if path.is_file():
        return path
    import keras

    fn, kw = BUILDERS[name]
    model = getattr(keras.applications, fn)(weights=None, classes=classes, input_shape=(size, size, 3), **kw)
    model.save(path)
    return path


def write_images(path: Path, model_path: Path, n: int, size: int) -> Path:
    """``n`` smooth random colour images (raw 0..255) and the model's own predictions as labels."""
    if path.is_file():
        return path
    import cv2
    import keras

    rng = np.random.default_rng(0)
    x = np.stack([np.clip(cv2.resize(rng.uniform(0, 255, (7, 7, 3)).astype(np.float32), (size, size),
                                     interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (size, size, 3)), 0, 255)
                  for _ in range(n)]).astype(np.uint8)
    model = keras.models.load_model(model_path, compile=False)
    from keras.applications import imagenet_utils

    y = np.argmax(model.predict(imagenet_utils.preprocess_input(x.astype(np.float32), mode="caffe"),
                                batch_size=32, verbose=0), axis=1)
    np.savez_compressed(path, x=x, y=y.astype(np.int64))
    return path


def device_name() -> str:
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
                              text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return "GPU: " + "; ".join(proc.stdout.strip().splitlines())
    return f"CPU only: {os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}"


def run_speed(model: Path, data: Path, images: int, seconds: float, labels: int) -> dict:
    cmd = [sys.executable, str(HERE / "speed.py"), "--model", str(model), "--data", str(data), "--images",
           str(images), "--preprocess", "imagenet", "--preset", "imagenet", "--only", "raw,engine",
           "--seconds", str(seconds), "--labels", str(labels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"error": proc.stderr.strip().splitlines()[-3:]}


def run_scan(model: Path, data: Path, out: Path, extra: list) -> dict:
    cmd = ["tabor-tf", "scan", str(model), "--data", str(data), "--preprocess", "imagenet", "--no-html",
           "--overwrite", "--out", str(out), *extra]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - started
    text = proc.stderr + proc.stdout
    pick = lambda prefix: [ln.strip() for ln in text.splitlines() if ln.startswith(prefix)]  # noqa: E731
    report = {}
    if (out / "report.json").is_file():
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"command": " ".join(cmd), "exit_code": proc.returncode, "wall_seconds": round(wall, 1),
            "estimate": pick("estimate"), "plan": pick("plan"), "verdict_line": pick("verdict"),
            "labels_scanned": (report.get("coverage") or {}).get("labels_scanned"),
            "time_limited": report.get("time_limited"),
            "eval_images": (report.get("settings") or {}).get("eval_images"),
            "max_steps": max((e["steps"] for e in report.get("labels", [])), default=None),
            "error": None if report else text.strip().splitlines()[-3:]}


def summarise(results: dict) -> str:
    lines = [f"device: {results['device']}", "",
             "| model | raw fwd+bwd img/s | engine img/s | ratio | budget scan: wall / budget | labels searched |"
             " steps reached | verdict line | exit |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        sp = r.get("speed", {}).get("results", {})
        raw = sp.get("raw", {}).get("images_per_second")
        eng = sp.get("engine", {}).get("images_per_second")
        sc = r.get("budget_scan", {})
        ratio = f"{eng / raw:.2f}" if raw and eng else "-"
        lines.append(f"| {name} | {raw or 0:,.1f} | {eng or 0:,.1f} | {ratio} | {sc.get('wall_seconds')} s /"
                     f" {results['budget']:g} s | {sc.get('labels_scanned')} | {sc.get('max_steps')} |"
                     f" {' '.join((sc.get('verdict_line') or ['-'])[0].split())} | {sc.get('exit_code')} |")
        if r.get("prescreen_scan"):
            p = r["prescreen_scan"]
            lines.append(f"| {name} `--prescreen {results['prescreen']}` | | | | {p.get('wall_seconds')} s (no budget) |"
                         f" {p.get('labels_scanned')} | {p.get('max_steps')} |"
                         f" {' '.join((p.get('verdict_line') or ['-'])[0].split())} | {p.get('exit_code')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="resnet50,mobilenetv2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time of raw / engine")
    ap.add_argument("--speed-labels", type=int, default=64, help="labels active in the speed measurement")
    ap.add_argument("--prescreen", type=int, default=0, help="also scan N pre-screened labels to the end (0: no)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: mobilenetv2-035, 96x96, 100 classes, 60 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.size, args.classes, args.budget, args.images, args.seconds, args.speed_labels = (
            "mobilenetv2-035", 96, 100, 60.0, 64, 5.0, 8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": device_name(), "budget": args.budget, "prescreen": args.prescreen, "size": args.size,
               "classes": args.classes, "images": args.images, "command": " ".join(sys.argv), "models": {}}
    for name in [m for m in re.split(r"[,\s]+", args.models) if m]:
        if name not in BUILDERS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(BUILDERS)}")
        print(f"{name}: building", file=sys.stderr)
        model = build_model(name, args.size, args.classes, out)
        data = write_images(out / f"images-{args.size}-{name}.npz", model, args.images, args.size)
        r = results["models"][name] = {}
        print(f"{name}: speed", file=sys.stderr)
        r["speed"] = run_speed(model, data, args.images, args.seconds, args.speed_labels)
        print(f"{name}: --time-budget {args.budget:g}", file=sys.stderr)
        r["budget_scan"] = run_scan(model, data, out / f"scan-{name}-budget", ["--time-budget", f"{args.budget:g}"])
        if args.prescreen:
            print(f"{name}: --prescreen {args.prescreen}", file=sys.stderr)
            r["prescreen_scan"] = run_scan(model, data, out / f"scan-{name}-prescreen",
                                           ["--prescreen", str(args.prescreen)])
        (out / "gpu_bench.json").write_text(json.dumps(results, indent=1, default=float))
    text = summarise(results)
    (out / "gpu_bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
