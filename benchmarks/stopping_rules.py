"""Replay stopping rules of the TABOR trigger search offline against one full-budget run per victim.

A label's trajectory depends only on ``(seed, label)`` and the batch order, which all labels share
(``tabor_tf/tabor/engine.py``): stopping a label at round ``r`` leaves it exactly the trigger the
full run had kept at round ``r``. So one full-budget run per victim, recording every change of a
kept trigger (``TriggerEngine(record_kept=True)``), is enough to replay any rule that decides when
a label stops: its stop round per label, the kept triggers then, their quality metric A, the
verdict (MAD test with the default decision rule), and the image-steps it would have spent. Each
rule's verdict is compared with the full run's; that is how the two-stage default was chosen
(``docs/TABOR_CHOICES.md``, "Two-stage scan").

Usage (trajectories are cached in OUT/NAME/trajectory.npz, so a rerun only replays):

  python benchmarks/stopping_rules.py --zoo runs/zoo-eval-dev --out runs/stopping-dev \
      [--only NAME ...] [--zoo-data gtsrb=PATH ...] [--max-samples 1000] [--seed 0] [--set KEY=VALUE ...]
      [--rules full screen10-m1 ...]

Writes OUT/rules.json and OUT/rules.md (per victim and summary).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tabor_tf import prescreen
from tabor_tf.compare import card_data_source, load_truth, parse_zoo_data, zoo_cards
from tabor_tf.scanning import parse_overrides, prepare
from tabor_tf.tabor import scheduler as sched
from tabor_tf.tabor.detector import (mad_side, outlier_test, reference_labels, score_triggers,
                                     scoring_image_steps)
from tabor_tf.tabor.engine import TriggerEngine
from tabor_tf.tabor.presets import default_preset_for, preset
from tabor_tf.tabor.two_stage import TwoStageSettings, screen_keep


# ----------------------------------------------------------------------------- recording

def record(card_path: Path, out: Path, zoo_data: dict, max_samples: int, seed: int,
           overrides: dict = None) -> tuple:
    """Run the full-budget engine on the card's model once, recording the kept triggers ->
    ``(trajectory path, the prepared model and data, or None when the trajectory was cached)``.
    ``overrides``: search settings replacing the preset's (``--set``; the metric keeps the preset's)."""
    path = out / "trajectory.npz"
    if path.is_file():
        return path, None
    truth = load_truth(card_path)
    card = truth["_card"]
    data_path, synthetic = card_data_source(truth)
    name = card.data.get("data_name")
    if name and name in zoo_data:
        data_path, synthetic = zoo_data[name], {}
    prepared = prepare(card.model_path, data_path, max_samples=max_samples, **synthetic)
    victim, data, mode = prepared.victim, prepared.data, prepared.check.mode
    config = preset(default_preset_for(victim.input_shape), **(overrides or {}))
    x = np.asarray(data.x, np.float32)
    y_ref, _, _ = reference_labels(victim, x, data.y, mode)
    labels = list(range(int(victim.num_classes)))
    engine = TriggerEngine(victim.logits, x, y_ref, labels, config, preprocess=mode, seed=seed, record_kept=True)
    started = time.perf_counter()
    result = engine.run()
    wall = time.perf_counter() - started
    rounds = np.concatenate([np.full(len(e[1]), e[0]) for e in engine.kept_log]).astype(np.int32)
    positions = np.concatenate([e[1] for e in engine.kept_log]).astype(np.int32)
    masks = np.concatenate([e[2] for e in engine.kept_log]).astype(np.float16)
    patterns = np.concatenate([e[3] for e in engine.kept_log]).astype(np.uint8)
    reached = np.concatenate([e[4] for e in engine.kept_log]).astype(bool)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(card.model_path), "data": str(data_path), "synthetic": synthetic, "mode": mode,
            "targets": truth["targets"], "labels": labels, "seed": seed, "max_samples": max_samples,
            "wall_seconds": wall, "image_steps": int(result.image_steps), "stop_reasons": result.stop_reasons,
            "images_per_label": int(engine.images_per_label), "round_steps": int(config.round_steps),
            "max_rounds": int(config.max_rounds), "min_rounds": int(config.min_rounds),
            "overrides": overrides or {}}
    np.savez_compressed(path, rounds=rounds, positions=positions, masks=masks, patterns=patterns, reached=reached,
                        stop_rounds=-(-np.asarray(result.steps) // int(config.round_steps)),
                        meta=np.array(json.dumps(meta)))
    print(f"  full run: {wall:.0f} s, {result.image_steps} image-steps", file=sys.stderr)
    return path, prepared


# ----------------------------------------------------------------------------- replay

class Trajectory:
    """Kept-trigger records of one full run; ``kept(label_pos, round)`` -> record index."""

    def __init__(self, path: Path):
        z = np.load(path, allow_pickle=False)
        self.meta = json.loads(str(z["meta"]))
        self.rounds, self.positions = z["rounds"], z["positions"]
        self.masks, self.patterns, self.reached = z["masks"], z["patterns"], z["reached"]
        self.stop_rounds = z["stop_rounds"].astype(int)
        self.k = len(self.meta["labels"])
        self.by_label = [np.flatnonzero(self.positions == i) for i in range(self.k)]

    def kept(self, i: int, rnd: int) -> int:
        rows = self.by_label[i]
        rows = rows[self.rounds[rows] <= rnd]
        return int(rows[-1])

    def last_improvement(self, i: int, rnd: int) -> int:
        return int(self.rounds[self.kept(i, rnd)])

    def reached_by(self, i: int, rnd: int) -> bool:
        return bool(self.reached[self.kept(i, rnd)])

    def l1(self, i: int, rnd: int) -> float:
        return float(self.masks[self.kept(i, rnd)].astype(np.float32).sum())


def rule_full(t: Trajectory, **_):
    return t.stop_rounds.copy(), 0


def rule_stall(t: Trajectory, patience: int, **_):
    """A label stops once it has a trigger reaching phi and no better one for ``patience`` rounds."""
    out = t.stop_rounds.copy()
    for i in range(t.k):
        for r in range(t.meta["min_rounds"], t.stop_rounds[i] + 1):
            if t.reached_by(i, r) and r - t.last_improvement(i, r) >= patience:
                out[i] = r
                break
    return out, 0


def rule_retire(t: Trajectory, **_):
    """The opt-in budget scheduler (``scheduler="retire"``), replayed round by round."""
    settings = sched.RetireSettings()
    out = t.stop_rounds.copy()
    retired = np.zeros(t.k, bool)
    log = []
    for r in range(1, int(t.stop_rounds.max()) + 1):
        active = (t.stop_rounds >= r) & ~retired
        scores = sched.provisional_scores([t.l1(i, r) for i in range(t.k)])
        log.append(scores)
        earlier = log[max(0, len(log) - 1 - settings.window)]
        reached = np.array([t.reached_by(i, r) for i in range(t.k)])
        now = sched.retire(scores, earlier, t.meta["max_rounds"] - r, active, reached, retired, r, settings)
        out[now] = r
        retired |= now
    return out, 0


def rule_two_stage(t: Trajectory, scorer, settings: TwoStageSettings, stall: int = 0, protect: int = 0, **_):
    """Screen every label at ``settings.screen_rounds`` with the real metric A, then only the kept
    labels run on (``two_stage.screen_keep``); a screen costs one scoring pass of every label.
    ``stall > 0``: on top of ``rule_stall`` with that patience. ``protect > 0``: the top ``protect``
    labels of the logit pre-screen are never screened out."""
    r0 = int(settings.screen_rounds)
    out = rule_stall(t, stall)[0] if stall else t.stop_rounds.copy()
    rows = [t.kept(i, min(r0, out[i])) for i in range(t.k)]
    a = scorer(rows)
    keep = screen_keep(a, np.array([out[i] <= r0 for i in range(t.k)]),
                       np.array([t.reached_by(i, min(r0, out[i])) for i in range(t.k)]),
                       settings, side=scorer.side, protected=scorer.protected(protect))
    for i in range(t.k):
        if not keep[i]:
            out[i] = min(out[i], r0)
    return out, 1


class Scorer:
    """A of record rows, cached; the verdict of a set of rows."""

    def __init__(self, t: Trajectory, max_samples: int, prepared=None):
        self.t = t
        m = t.meta
        if prepared is None:
            prepared = prepare(m["model"], m["data"], max_samples=max_samples, **m["synthetic"])
        self.victim, self.mode = prepared.victim, m["mode"]
        self.x = np.asarray(prepared.data.x, np.float32)
        self.y_ref, _, _ = reference_labels(self.victim, self.x, prepared.data.y, self.mode)
        self.config = preset(default_preset_for(self.victim.input_shape))
        self.side = mad_side(self.config, t.k)
        self.cache = {}
        logits = prescreen.clean_logits(self.victim, self.x, self.mode)
        self.prescreen_order = prescreen.ranking(logits, self.y_ref, range(t.k))

    def protected(self, top: int) -> np.ndarray:
        """``[K]`` bool: the ``top`` labels of the logit pre-screen."""
        out = np.zeros(self.t.k, bool)
        out[self.prescreen_order[:int(top)]] = True
        return out

    def __call__(self, rows):
        todo = sorted({r for r in rows if r not in self.cache})
        if todo:
            res = SimpleNamespace(labels=[int(self.t.positions[r]) for r in todo],
                                  masks=self.t.masks[todo].astype(np.float32),
                                  patterns=self.t.patterns[todo].astype(np.float32))
            parts = score_triggers(self.victim, self.x, self.y_ref, res, self.config, self.mode, self.t.meta["seed"])
            for r, p in zip(todo, parts):
                self.cache[r] = float(p["A"])
        return np.array([self.cache[r] for r in rows])

    def verdict(self, stop_rounds):
        rows = [self.t.kept(i, int(stop_rounds[i])) for i in range(self.t.k)]
        a = self(rows)
        mad = outlier_test(self.config, a, list(range(self.t.k)))
        return mad.flagged_labels, mad.anomaly_index


def rules(only=None) -> dict:
    """Every rule by name (``only``: those names, with ``full`` always first)."""
    every = _all_rules()
    if not only:
        return every
    unknown = sorted(set(only) - set(every))
    if unknown:
        raise SystemExit(f"unknown rule(s) {unknown}; known: {', '.join(every)}")
    return {n: every[n] for n in every if n == "full" or n in only}


def _all_rules() -> dict:
    out = {"full": (rule_full, {}), "retire": (rule_retire, {})}
    for p in (4, 8, 12):
        out[f"stall{p}"] = (rule_stall, {"patience": p})
    for r0 in (10, 20, 30):
        for margin in (0.0, 0.5, 1.0):
            out[f"screen{r0}-m{margin:g}"] = (rule_two_stage, {"settings": TwoStageSettings(
                screen_rounds=r0, keep_margin=margin)})
    for r0 in (5, 10):
        for margin in (0.0, 0.5):
            for protect in (1, 3):
                out[f"screen{r0}-m{margin:g}-p{protect}"] = (rule_two_stage, {"settings": TwoStageSettings(
                    screen_rounds=r0, keep_margin=margin), "protect": protect})
    for stall in (8, 12):
        out[f"stall{stall}+screen20-m0"] = (rule_two_stage, {"settings": TwoStageSettings(
            screen_rounds=20, keep_margin=0.0), "stall": stall})
    return out


def replay(path: Path, max_samples: int, prepared=None, only=None) -> dict:
    t = Trajectory(path)
    scorer = Scorer(t, max_samples, prepared)
    ipl, rs = t.meta["images_per_label"], t.meta["round_steps"]
    full_steps = int(t.stop_rounds.sum()) * rs * ipl
    eval_n = min(len(scorer.x), scorer.config.eval_images)
    out = {}
    for name, (fn, kw) in rules(only).items():
        stop, screens = fn(t, scorer=scorer, **kw)
        flagged, index = scorer.verdict(stop)
        cost = int(stop.sum()) * rs * ipl + int(screens * scoring_image_steps(t.k, eval_n))
        out[name] = {"flagged": [int(v) for v in flagged], "anomaly_index": round(float(index), 2),
                     "image_steps": cost, "fraction": round(cost / full_steps, 3),
                     "labels_full_budget": int(np.sum(stop >= t.stop_rounds))}
    return {"targets": t.meta["targets"], "labels": t.k, "wall_seconds": t.meta["wall_seconds"], "rules": out}


def summarise(results: dict) -> str:
    names = list(next(iter(results.values()))["rules"])
    lines = ["| victim | targets | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    same = {n: 0 for n in names}
    frac = {n: [] for n in names}
    for victim, r in results.items():
        full = r["rules"]["full"]["flagged"]
        cells = []
        for n in names:
            v = r["rules"][n]
            ok = sorted(v["flagged"]) == sorted(full)
            same[n] += ok
            frac[n].append(v["fraction"])
            cells.append(f"{v['flagged']} {v['fraction']:.2f}" + ("" if ok else " ≠"))
        lines.append(f"| {victim} | {r['targets']} | " + " | ".join(cells) + " |")
    lines.append("| **same verdict as full / mean cost** | | " + " | ".join(
        f"{same[n]}/{len(results)}, {np.mean(frac[n]):.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="+", default=None)
    p.add_argument("--zoo-data", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record-only", action="store_true")
    p.add_argument("--rules", nargs="+", default=None, help="replay only these rules (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="search setting for the recorded run (e.g. batch_size=8); the metric keeps the preset's")
    args = p.parse_args(argv)
    overrides = parse_overrides(args.set, "tabor")
    out = Path(args.out)
    zoo_data = parse_zoo_data(args.zoo_data)
    results = {}
    for card in zoo_cards(args.zoo):
        name = Path(card).parent.name
        if args.only and name not in args.only:
            continue
        print(f"{name}", file=sys.stderr)
        path, prepared = record(Path(card), out / name, zoo_data, args.max_samples, args.seed, overrides)
        if not args.record_only:
            results[name] = replay(path, args.max_samples, prepared, args.rules)
            (out / "rules.json").write_text(json.dumps(results, indent=1))
    if results:
        (out / "rules.md").write_text(summarise(results))
        print(summarise(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
