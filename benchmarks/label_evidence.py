"""Evidence beside the MAD, measured on a finished TABOR scan (issue 11: large triggers).

For a folder written by ``python -m tabor_tf.compare MODEL --data DATA --truth CARD --methods
tabor --out DIR`` (or ``tabor-tf scan``), re-load the saved per-label triggers
(``DIR/tabor/labels/label_NNN_{mask,pattern}.npy``) and measure, without optimising again:

* ``--evidence``: per label, the attack success on *held-out* clean images (test images the scan
  did not use, correctly classified, of the other classes), its minimum over source classes, and
  the footprint's shape (share of its largest 8-connected component, connected components,
  footprint / bounding-box area). The question: does a real trigger keep working on every source
  class, and is it more compact than a natural feature of the same size?
* ``--explanation``: the verdict of the first start (confirmation from fresh starts not redone)
  when A is recomputed with other forms of the explanation test: top fraction q = 0.05 (the
  default), 0.10, 0.20, q tied to the footprint (|F| / HW and 2 |F| / HW, at least 0.05), the
  black reference ("the important features alone", section 4.2.3), and no explanation part.
* ``--complete``: trigger completion (``tabor_tf.completion``, the default settings) run again
  on the flagged labels: without pruning or tidying, with pruning, with pruning and tidying (the
  default), and the F1 of each trigger against the true mask (verdicts never depend on it, so a
  finished scan's triggers suffice).
* ``--alone``: each true trigger of the card stamped alone on a black image (R4's input): the
  model's probability of its target there (docs/TABOR_CHOICES.md, "R4 on black canvases").
* ``--canvas``: the true triggers alone on other canvases R4 could use (mid-grey, the mean clean
  image, uniform noise) beside black, and each label's restored trigger on noise images
  (docs/TABOR_CHOICES.md, "R4 on another canvas").
* ``--prune-all``: every label's trigger pruned, and the MAD test on the pruned mask L1 and on A
  of the pruned triggers (docs/TABOR_CHOICES.md, "Pruned triggers as the decision's evidence").
* ``--peel N``: every label's trigger peeled N rounds (``tabor_tf.completion``, no acceptance
  limit): does a real (large) trigger leave another cheap trigger behind when its pixels are
  forbidden, where a natural feature does not?

Usage (one victim of the evaluation zoo):

  python benchmarks/label_evidence.py runs/tab-dev/NAME --model runs/zoo-eval-dev/NAME/model.h5 \
      --data .../mnist-28x28.npz --card runs/zoo-eval-dev/NAME/card.json --evidence --explanation [--peel 3]

Writes ``DIR/label_evidence.json``. Pixel domain raw 0..255; masks ``[H,W]``, patterns ``[H,W,C]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy import ndimage

from tabor_tf.completion import CompletionSettings, complete_trigger
from tabor_tf.data import load_clean_data, subsample_indices
from tabor_tf.loading import load_victim
from tabor_tf.zoo import load_card
from tabor_tf.outliers import mad_test
from tabor_tf.tabor import detector, quality
from tabor_tf.tabor.explain import TriggerEvaluator
from tabor_tf.tabor.presets import TaborConfig
from tabor_tf.zoo.build import resize_images


class Scan:
    """A finished scan's triggers and settings, with its victim and clean images."""

    def __init__(self, folder: Path, model: Path, data: Path, card: Path):
        self.report = json.loads((folder / "tabor" / "report.json").read_text())
        labs = sorted(self.report["labels"], key=lambda r: r["label"])
        self.rows = labs
        self.labels = [r["label"] for r in labs]
        base = folder / "tabor"
        self.masks = np.stack([np.load(base / r["files"]["mask_npy"]) for r in labs]).astype(np.float32)
        self.patterns = np.stack([np.load(base / r["files"]["pattern_npy"]) for r in labs]).astype(np.float32)
        self.card = load_card(card)  # the ground truth: targets, true masks and patterns
        self.targets = sorted({b["target"] for b in self.card.data.get("backdoors", []) if b.get("target") is not None})
        self.victim = load_victim(model)
        self.mode = self.report["preprocess"]["mode"]
        self.data_path = data
        d = self.report["data"]
        self.samples, self.sample_seed = int(d["max_samples"]), int(d.get("subsample_seed", 0))
        clean = load_clean_data(data, image_shape=self.victim.input_shape, limit=self.samples, seed=self.sample_seed)
        self.x, self.y = clean.x.astype(np.float32), clean.y
        fields = TaborConfig.__dataclass_fields__
        self.config = TaborConfig(**{k: v for k, v in self.report["settings"].items() if k in fields})
        self.seed = int(self.report["seed"])

    def held_out(self, count: int = 3000):
        """Clean test images the scan did not use, correctly classified: ``(x [N,H,W,C], y [N])``."""
        arr = np.load(self.data_path)
        x, y = arr["x_test"], arr["y_test"].astype(np.int64).reshape(-1)
        used = subsample_indices(len(x), self.samples, y, self.sample_seed)
        rest = np.setdiff1d(np.arange(len(x)), used)
        pick = np.sort(np.random.default_rng(1).choice(rest, size=min(count, len(rest)), replace=False))
        xs = x[pick]
        if xs.ndim == 3:
            xs = xs[..., None]
        xs = xs.astype(np.float32)
        if xs.shape[1:3] != tuple(self.victim.input_shape[:2]):
            xs = resize_images(xs, self.victim.input_shape[0]).astype(np.float32)
        ok = self.victim.predict_raw(xs, self.mode) == y[pick]
        return xs[ok], y[pick][ok]


def shape_of(mask: np.ndarray, threshold: float) -> dict:
    f = quality.footprint(mask, threshold).astype(bool)
    comp, n = ndimage.label(f, structure=np.ones((3, 3)))
    sizes = np.bincount(comp.ravel())[1:] if n else np.zeros(1)
    ys, xs = np.nonzero(f)
    box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1) if len(ys) else 1
    return {"footprint": int(f.sum()), "components": int(n),
            "largest_share": round(float(sizes.max() / max(1, f.sum())), 3), "box_fill": round(float(f.sum() / box), 3)}


def evidence(scan: Scan) -> list:
    xh, yh = scan.held_out()
    out = []
    for i, lab in enumerate(scan.labels):
        other = yh != lab
        m = scan.masks[i][..., None]
        pred = scan.victim.predict_raw(xh[other] * (1 - m) + m * scan.patterns[i], scan.mode)
        hit = pred == lab
        src = yh[other]
        per = [float(hit[src == c].mean()) for c in np.unique(src) if np.sum(src == c) >= 5]
        row = {"label": lab, "target": lab in scan.targets, "A": round(scan.rows[i]["score"], 3),
               "index": round(scan.rows[i]["anomaly_index"], 2), "l1": round(scan.rows[i]["l1"], 1),
               "heldout_success": round(float(hit.mean()), 3), "min_class_success": round(min(per), 3)}
        row.update(shape_of(scan.masks[i], scan.config.footprint_threshold))
        out.append(row)
    return out


def explanation_variants(scan: Scan) -> dict:
    cfg, x, y = scan.config, scan.x, scan.y
    sel = detector.eval_subset(len(x), int(cfg.eval_images), scan.seed)
    thr, side = detector.decision_threshold(cfg, len(scan.labels)), detector.mad_side(cfg, len(scan.labels))
    hw = scan.masks.shape[1] * scan.masks.shape[2]
    fp = [int(quality.footprint(m, cfg.footprint_threshold).sum()) for m in scan.masks]
    n = len(scan.labels)
    variants = {
        "q0.05": ([0.05] * n, "clean"), "q0.10": ([0.10] * n, "clean"), "q0.20": ([0.20] * n, "clean"),
        "q=|F|": ([max(0.05, round(f / hw + 0.005, 2)) for f in fp], "clean"),
        "q=2|F|": ([max(0.05, min(0.9, round(2 * f / hw + 0.005, 2))) for f in fp], "clean"),
        "black-q0.05": ([0.05] * n, "black"),
    }
    results = {}
    for name, (fractions, reference) in variants.items():
        acc = [None] * n
        for q in sorted(set(fractions)):
            idx = [i for i, f in enumerate(fractions) if f == q]
            ev = TriggerEvaluator(scan.victim.logits, scan.mode, q, reference)
            a = ev.evaluate(x[sel], y[sel], scan.masks[idx], scan.patterns[idx], np.array(scan.labels)[idx],
                            max_images=cfg.max_images_per_step)
            for j, i in enumerate(idx):
                acc[i] = (float(a["acc_att"][j]), float(a["acc_crop"][j]), float(a["acc_exp"][j]))
        for drop in ((False, True) if name == "q0.05" else (False,)):
            scores = [quality.quality_parts(scan.masks[i], acc[i][0], acc[i][1], 1.0 if drop else acc[i][2], len(sel),
                                            cfg.footprint_threshold, cfg.accuracy_floor)["A"] for i in range(n)]
            mad = mad_test(np.array(scores), labels=scan.labels, threshold=thr, side=side).to_dict()
            key = "no explanation part" if drop else name
            results[key] = {"flagged": mad["flagged_labels"], "anomaly_index": round(mad["anomaly_index"], 2),
                            "threshold": round(thr, 2),
                            "target_index": {str(t): round(mad["label_indices"][str(t)], 2) for t in scan.targets}}
            print(f"  {key:22s} flagged {results[key]['flagged']} index {results[key]['anomaly_index']:.2f} "
                  f"(threshold {thr:.2f}); targets {results[key]['target_index']}", flush=True)
    return results


def peel(scan: Scan, rounds: int) -> dict:
    settings = CompletionSettings(rounds=rounds, natural_fraction=1e9)
    out = {}
    for i in np.argsort([r["score"] for r in scan.rows]):
        lab = scan.labels[i]
        c = complete_trigger(scan.victim, scan.x, scan.mode, lab, scan.masks[i], scan.patterns[i],
                             settings=settings, seed=scan.seed, y=scan.y, natural_l1=1e9)
        out[str(lab)] = [{"l1": round(r["l1"], 1), "attack_success": round(r["attack_success"], 3)} for r in c.rounds]
        print(f"  {'T' if lab in scan.targets else ' '} {lab:3d} first L1 {scan.rows[i]['l1']:.1f}; peeled: " +
              " ".join(f"{r['l1']:.1f} ({r['attack_success']:.2f})" for r in c.rounds), flush=True)
    return out


def _stamped_probs(scan: Scan, canvas: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Class probabilities ``[K, classes]`` of ``mask [H,W]`` / ``pattern [H,W,C]`` stamped on each of
    the raw-pixel ``canvas [K,H,W,C]`` images."""
    import tensorflow as tf

    from tabor_tf.preprocess import preprocess

    m = mask.reshape(1, *mask.shape[:2], 1)
    stamped = tf.constant((canvas * (1 - m) + m * pattern[None]).astype(np.float32))
    return scan.victim.probabilities(preprocess(stamped, scan.mode)).numpy()


def trigger_alone(scan: Scan) -> dict:
    out = {}
    black = canvases(scan)["black"]
    for bd, mask, pattern in zip(scan.card.data["backdoors"], scan.card.masks, scan.card.patterns):
        probs = _stamped_probs(scan, black, mask, pattern)[0]  # the trigger alone, raw pixels on black
        target = int(bd["target"])
        out[str(target)] = {"p_target": round(float(probs[target]), 3), "argmax": int(np.argmax(probs))}
        print(f"  true trigger of {target} alone on black: p(target) {probs[target]:.3f},"
              f" argmax {int(np.argmax(probs))}", flush=True)
    return out


def canvases(scan: Scan, noise_images: int = 8) -> dict:
    """``[K,H,W,C]`` raw-pixel canvases R4 could score the trigger alone on: black (the paper's),
    mid-grey, the mean clean image, uniform noise (``noise_images`` of them, averaged over)."""
    h, w, c = scan.x.shape[1:]
    noise = np.random.default_rng(0).uniform(0, 255, (noise_images, h, w, c))
    return {"black": np.zeros((1, h, w, c)), "grey": np.full((1, h, w, c), 127.5),
            "mean": scan.x.mean(0, keepdims=True), "noise": noise}


def trigger_on_canvases(scan: Scan) -> dict:
    """Per canvas: p(target) of each true trigger stamped on it, and the share of noise images each
    label's restored trigger turns into its label (docs/TABOR_CHOICES.md, "R4 on another canvas")."""
    out, all_canvases = {}, canvases(scan)
    for name, canvas in all_canvases.items():
        row = {str(int(bd["target"])): round(float(_stamped_probs(scan, canvas, m, p)[:, int(bd["target"])].mean()), 3)
               for bd, m, p in zip(scan.card.data["backdoors"], scan.card.masks, scan.card.patterns)}
        out[name] = {"true_trigger_p_target": row}
        print(f"  true triggers on {name:5s}: p(target) {row}", flush=True)
    hits = {str(lab): round(float((_stamped_probs(scan, all_canvases["noise"], scan.masks[i], scan.patterns[i])
                                   .argmax(1) == lab).mean()), 3)
            for i, lab in enumerate(scan.labels)}
    out["noise"]["restored_success"] = hits
    ranked = sorted(hits.items(), key=lambda kv: -kv[1])[:8]
    print("  restored triggers on noise, success: " + "  ".join(
        f"{'T' if int(k) in scan.targets else ''}{k}:{v:.2f}" for k, v in ranked), flush=True)
    return out


def prune_every_label(scan: Scan) -> dict:
    """Every label's restored trigger pruned (``completion._prune``, the default settings but any
    working prune no larger than the restored trigger taken; one that stops working keeps it) and the MAD test run on the restored mask L1,
    the pruned mask L1 and A of the pruned triggers (docs/TABOR_CHOICES.md, "Pruned triggers")."""
    from tabor_tf.completion import prune_trigger

    # prune_ratio 1: the pruned trigger whenever it works and is no larger (not only under half)
    s, cfg, x, y = CompletionSettings(prune_ratio=1.0), scan.config, scan.x, scan.y
    rows, masks, patterns = [], [], []
    for i, lab in enumerate(scan.labels):
        m, p, rec = prune_trigger(scan.victim, x, scan.mode, lab, scan.masks[i], scan.patterns[i], settings=s,
                                  seed=scan.seed, y=y)
        masks.append(m)
        patterns.append(p)
        rows.append({"label": lab, "l1": round(float(scan.masks[i].sum()), 1),
                     "pruned_l1": round(float(m.sum()), 1), "works": bool(rec and rec["accepted"])})
    pruned = SimpleNamespace(labels=scan.labels, masks=np.stack(masks).astype(np.float32),
                             patterns=np.stack(patterns).astype(np.float32))
    a_pruned = [p["A"] for p in detector.score_triggers(scan.victim, x, y, pruned, cfg, scan.mode, scan.seed)]
    thr, side = detector.decision_threshold(cfg, len(rows)), detector.mad_side(cfg, len(rows))
    out = {"labels": rows, "tests": {}}
    for key, values in (("restored L1", [r["l1"] for r in rows]), ("pruned L1", [r["pruned_l1"] for r in rows]),
                        ("A", [r["score"] for r in scan.rows]), ("A pruned", a_pruned)):
        mad = mad_test(np.array(values, np.float64), labels=scan.labels, threshold=thr, side=side)
        out["tests"][key] = {"flagged": mad.flagged_labels, "anomaly_index": round(mad.anomaly_index, 2)}
        print(f"  {key:12s} flagged {mad.flagged_labels} index {mad.anomaly_index:.2f} (threshold {thr:.2f})",
              flush=True)
    return out


def complete_again(scan: Scan) -> dict:
    from tabor_tf.fidelity import trigger_fidelity
    from tabor_tf.zoo.card import true_mask

    natural = float(np.median([r["l1"] for r in scan.rows]))
    out = {}
    for lab in scan.report["flagged_labels"]:
        i = scan.labels.index(lab)
        gt = true_mask(scan.card, lab) if lab in scan.targets else None
        row = {"minimal_l1": round(float(scan.masks[i].sum()), 1)}
        if gt is not None:
            row["minimal_f1"] = round(trigger_fidelity(scan.masks[i], gt)["f1"], 3)
        for name, settings in (("no prune", CompletionSettings(prune_ratio=0.0, tidy_share=0.0)),
                               ("prune", CompletionSettings(tidy_share=0.0)), ("prune + tidy", CompletionSettings())):
            c = complete_trigger(scan.victim, scan.x, scan.mode, lab, scan.masks[i], scan.patterns[i],
                                 settings=settings, seed=scan.seed, y=scan.y, natural_l1=natural)
            summary = c.summary()
            row[name] = {"l1": round(summary["l1"], 1), "accepted_rounds": summary["accepted_rounds"],
                         "prune": summary.get("prune"), "tidy": summary.get("tidy")}
            if gt is not None:
                row[name]["f1"] = round(trigger_fidelity(c.mask, gt)["f1"], 3)
        out[str(lab)] = row
        print(f"  {'T' if gt is not None else ' '} {lab:3d} {json.dumps(row)}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="output folder of a compare/scan run (holds tabor/report.json)")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="NPZ with x_test/y_test (the scan's data)")
    ap.add_argument("--card", type=Path, required=True, help="the victim's card.json (true targets)")
    ap.add_argument("--evidence", action="store_true")
    ap.add_argument("--explanation", action="store_true")
    ap.add_argument("--peel", type=int, default=0, metavar="N")
    ap.add_argument("--complete", action="store_true")
    ap.add_argument("--alone", action="store_true")
    ap.add_argument("--canvas", action="store_true")
    ap.add_argument("--prune-all", action="store_true")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    scan = Scan(args.folder, args.model, args.data, args.card)
    print(f"{args.folder.name}: {len(scan.labels)} labels, targets {scan.targets}", flush=True)
    out = {"targets": scan.targets}
    if args.evidence:
        out["evidence"] = evidence(scan)
        for r in sorted(out["evidence"], key=lambda r: r["A"]):
            print("  " + ("T " if r["target"] else "  ") + " ".join(f"{k} {v}" for k, v in r.items() if k != "target"))
    if args.explanation:
        out["explanation"] = explanation_variants(scan)
    if args.peel:
        out["peel"] = peel(scan, args.peel)
    if args.alone:
        out["alone"] = trigger_alone(scan)
    if args.canvas:
        out["canvas"] = trigger_on_canvases(scan)
    if args.prune_all:
        out["prune_all"] = prune_every_label(scan)
    if args.complete:
        out["complete"] = complete_again(scan)
    out["seconds"] = round(time.perf_counter() - started, 1)
    (args.folder / "label_evidence.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
