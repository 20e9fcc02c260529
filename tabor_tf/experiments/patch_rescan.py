"""``tabor-tf experiment patch-rescan MODEL --data DATA --truth CARD``: the paper's Figure 8.

Two triggers, one target: a scan restores (typically) the easier trigger, patching unlearns it,
and a rescan of the patched model should find the second one. For each method (TABOR and the
faithful Neural Cleanse, same data, preprocessing and seed) the experiment runs

1. ``scan1``  scan the original model (report folder ``OUT/<method>/scan1``);
2. ``patch``  unlearn the restored trigger(s) of the flagged label(s) (``tabor_tf.unlearning``,
   as ``tabor-tf patch``) -> ``OUT/<method>/patched.h5`` (or ``.keras``, as MODEL);
3. ``rescan`` scan the patched model (``OUT/<method>/rescan``),

and reports whether the target is flagged again (the second trigger found), which real trigger
each restored mask overlaps most (F1, paper eq. 9, against every real trigger of the card), and
clean accuracy plus the attack success of every real trigger of the card on the original and the
patched model (held-out images: ``--holdout`` of the clean images are never fine-tuned on). The
clean images are the scan's (``--max-samples`` class-stratified subsample of DATA).

Every stage (and the original model's evaluation, ``original``) is a record of
``store.RecordStore``: the same command after an interruption skips what is finished, and each
scan resumes its own checkpoint. Results: ``OUT/patch_rescan.json`` + ``OUT/patch_rescan.md``.
Exit 0 when done, 2 on bad input (e.g. a card that says the model is clean).
"""

from __future__ import annotations

import argparse
import os
import string
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import TaborError
from .store import RecordStore, markdown_table, write_outputs

NAME = "patch-rescan"
HELP = ("Figure 8: scan, patch by unlearning the restored trigger, rescan the patched model (did it find the "
        "second trigger?), for TABOR and Neural Cleanse; clean accuracy and attack success of the real triggers "
        "before and after")
RESULT_NAME = "patch_rescan"
DIR_NAMES = {"tabor": "tabor", "neural_cleanse": "nc"}
TITLES = {"tabor": "TABOR", "neural_cleanse": "Neural Cleanse"}


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..unlearning import TRIGGER_KINDS

    p.add_argument("model", metavar="MODEL", help="the infected .keras / .h5 model (only read)")
    p.add_argument("--data", metavar="DATA", default=None,
                   help="LABELLED clean images (.npz / .npy / .h5 / image folder / GTSRB folder, or 'synthetic'); "
                        "default: the data the card names")
    p.add_argument("--truth", required=True, metavar="CARD",
                   help="ground-truth card (card.json or its folder) of MODEL: its real triggers are measured")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default patch-rescan-<model>); the same command resumes in it")
    p.add_argument("--methods", nargs="+", default=["tabor", "nc"], metavar="METHOD",
                   help="methods to run: tabor, nc (default both; a comma list is accepted too)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trigger searches, holdout split and unlearning")
    p.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="class-stratified subsample of N clean images for scans and patching (default 1000; 0 = all)")
    p.add_argument("--preprocess", default=None, metavar="MODE",
                   help="pixel preprocessing (default: the card's, else auto)")
    p.add_argument("--holdout", type=float, default=0.2, metavar="F",
                   help="fraction of the clean images kept out of fine-tuning to measure before / after (default 0.2)")
    p.add_argument("--tabor-preset", default=None, help="TABOR preset (default: gtsrb up to 64 px, else imagenet)")
    p.add_argument("--nc-preset", default=None, help="Neural Cleanse preset (default gtsrb, the faithful one)")
    p.add_argument("--set-tabor", "--tabor-set", dest="set_tabor", action="append", default=[], metavar="KEY=VALUE",
                   help="TABOR setting override (repeatable)")
    p.add_argument("--set-nc", "--nc-set", dest="set_nc", action="append", default=[], metavar="KEY=VALUE",
                   help="Neural Cleanse setting override (makes it budget-reduced / not faithful)")
    p.add_argument("--trigger", choices=TRIGGER_KINDS, default="minimal",
                   help="which restored trigger to unlearn: minimal (as the scan restored it; the paper's) or "
                        "completed (grown to the whole trigger by trigger completion; docs/PATCHING.md)")
    p.add_argument("--fraction", type=float, default=0.2, metavar="F",
                   help="fraction of the fine-tuning images stamped with a restored trigger (default 0.2)")
    p.add_argument("--epochs", type=int, default=1, help="unlearning epochs (default 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="unlearning Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="unlearning batch size (default 32)")
    p.add_argument("--allow-unsafe-deserialization", action="store_true",
                   help="load Lambda layers / custom objects (runs code stored in the file: trusted files only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")


def _methods(items) -> tuple:
    from ..compare import check_methods

    return check_methods([m for item in items for m in str(item).split(",")])


def run(args) -> int:
    from ..preprocess import resolve_mode
    from ..scanning import DEFAULT_MAX_SAMPLES, make_config, parse_overrides
    from ..unlearning import UnlearnConfig

    methods = _methods(args.methods)
    overrides = {"tabor": parse_overrides(args.set_tabor, "tabor"),
                 "neural_cleanse": parse_overrides(args.set_nc, "nc")}
    presets = {"tabor": args.tabor_preset, "neural_cleanse": args.nc_preset}
    for m in methods:
        make_config(m, presets[m], overrides[m])  # unknown presets / values: usage errors before loading
    if args.max_samples is not None and args.max_samples < 0:
        raise TaborError("--max-samples must be >= 0")
    if not 0.0 < args.holdout < 1.0:
        raise TaborError("--holdout must be in (0, 1): the attack success is measured on held-out images")
    if args.preprocess:
        resolve_mode(args.preprocess)
    unlearn = UnlearnConfig(fraction_with_trigger=args.fraction, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, seed=args.seed)
    if (unlearn.epochs < 1 or unlearn.batch_size < 1 or not unlearn.lr > 0
            or not 0 <= unlearn.fraction_with_trigger <= 1):
        raise TaborError("--epochs and --batch-size must be >= 1, --lr > 0 and --fraction in [0, 1]")
    stem = Path(str(args.model).rstrip("/")).name.rsplit(".", 1)[0] or "model"
    out = Path(args.out or f"patch-rescan-{stem}")
    result = patch_rescan(args.model, args.data, truth_path=args.truth, out_dir=out, methods=methods,
                          seed=args.seed, max_samples=DEFAULT_MAX_SAMPLES if args.max_samples is None
                          else args.max_samples, preprocess=args.preprocess, holdout=args.holdout,
                          presets=presets, overrides=overrides, unlearn=unlearn, trigger=args.trigger,
                          allow_unsafe=args.allow_unsafe_deserialization, quiet=args.quiet)
    print("\n".join(summary_lines(result)))
    print(f"results: {out / (RESULT_NAME + '.json')}  {out / (RESULT_NAME + '.md')}", flush=True)
    return 0


# ----------------------------------------------------------------------------- ground truth


def real_triggers(truth: dict) -> list:
    """The card's backdoors as ``[{"name": "A", "target", "description", "mask" [H,W], "pattern" [H,W,C] raw}]``;
    ``TaborError`` for a clean card or an all-to-all backdoor (no single target to measure)."""
    card = truth["_card"]
    backdoors = card.data.get("backdoors") or []
    if not backdoors or not truth["targets"]:
        raise TaborError(f"{truth['card']}: the card says the model is clean; patch-rescan needs an infected "
                         "model (a card with at least one backdoor)")
    out = []
    for i, (bd, mask, pattern) in enumerate(zip(backdoors, card.masks, card.patterns)):
        if int(bd["target"]) < 0 or bd.get("mode") == "all-to-all":
            raise TaborError(f"{truth['card']}: backdoor {i} is all-to-all (no single target); patch-rescan "
                             "measures all-to-one backdoors only")
        trig = bd.get("trigger") or {}
        shape = bd.get("trigger_shape") or trig.get("shape") or "trigger"
        size, pos = bd.get("size") or trig.get("size"), bd.get("position") or trig.get("position")
        name = string.ascii_uppercase[i] if i < 26 else f"T{i}"
        out.append({"name": name, "target": int(bd["target"]),
                    "description": f"{shape}{f' {size}px' if size else ''}{f' {pos}' if pos else ''} -> {bd['target']}",
                    "card_attack_success": bd.get("attack_success_rate"),
                    "mask": np.asarray(mask, np.float32), "pattern": np.asarray(pattern, np.float32)})
    return out


def public_triggers(triggers: list) -> list:
    return [{k: v for k, v in t.items() if k not in ("mask", "pattern")} for t in triggers]


def restored_vs_real(mask, triggers: list) -> dict:
    """F1 (and precision / recall) of one restored mask ``[H,W]`` against each real trigger's mask,
    by trigger name, plus ``best``: the name of the real trigger it overlaps most."""
    from ..fidelity import trigger_fidelity

    m = np.asarray(mask, np.float32)
    m = m[..., 0] if m.ndim == 3 else m
    scores = {t["name"]: trigger_fidelity(m, t["mask"]) for t in triggers}
    best = max(scores, key=lambda n: scores[n]["f1"]) if scores else None
    return {"fidelity": scores, "f1": {n: s["f1"] for n, s in scores.items()}, "best": best}


# ----------------------------------------------------------------------------- the experiment


def _scan_record(result, report, report_dir, triggers: list, truth: dict, faithful: bool) -> dict:
    """What one scan contributes: verdict, flagged labels, and per true target the restored mask's overlap."""
    from ..compare import method_measures

    measures = method_measures(result, report, truth, faithful=faithful)
    targets = []
    for t in sorted({tr["target"] for tr in triggers}):
        entry = {"target": t, "flagged": t in measures["flagged_labels"]}
        try:
            lr = result.by_label(t)
        except KeyError:
            entry["note"] = "target label was not scanned"
        else:
            mine = [tr for tr in triggers if tr["target"] == t]
            entry.update(restored_vs_real(lr.mask, mine), score=float(lr.score), l1=float(lr.l1),
                         restored_attack_success=float(lr.attack_success))
        targets.append(entry)
    return {"report_dir": str(report_dir), "verdict": measures["verdict"],
            "flagged_labels": measures["flagged_labels"], "anomaly_index": measures["anomaly_index"],
            "correctness": measures["correctness"], "correctness_name": measures["correctness_name"],
            "seconds": measures["seconds"], "preset": measures["preset"], "targets": targets}


class _Inputs:
    """Lazily loaded model + clean data of the original model (``prepare``) and the holdout split."""

    def __init__(self, model, data, *, preprocess, max_samples, seed, holdout, allow_unsafe, synthetic):
        self.args = dict(preprocess=preprocess, max_samples=max_samples, allow_unsafe=allow_unsafe, **synthetic)
        self.model, self.data, self.seed, self.holdout = model, data, seed, holdout
        self._prepared = None

    @property
    def prepared(self):
        if self._prepared is None:
            from ..scanning import prepare

            self._prepared = prepare(self.model, self.data, **self.args)
            if self._prepared.data.y is None:
                raise TaborError(f"{self.data}: patch-rescan needs LABELLED clean images (unlearning and attack "
                                 "success use the true labels)")
        return self._prepared

    def split(self):
        """``(x_tune, y_tune, x_held, y_held)``: raw images ``[N,H,W,C]`` and labels ``[N]``."""
        from ..commands.patch import split_holdout

        d = self.prepared.data
        tune, held = split_holdout(len(d.x), self.holdout, self.seed)
        return d.x[tune], d.y[tune], d.x[held], d.y[held]


def patch_rescan(model_path, data_path=None, *, truth_path, out_dir, methods=("tabor", "neural_cleanse"),
                 seed: int = 0, max_samples: Optional[int] = 1000, preprocess: Optional[str] = None,
                 holdout: float = 0.2, presets: Optional[dict] = None, overrides: Optional[dict] = None,
                 unlearn=None, trigger: str = "minimal", allow_unsafe: bool = False, quiet: bool = False,
                 stream=None) -> dict:
    """Run (or resume) the experiment; write ``OUT/patch_rescan.{json,md}``; return the JSON dictionary.

    ``presets`` / ``overrides``: per method key (``tabor``, ``neural_cleanse``); ``unlearn``: an
    ``UnlearnConfig``; ``trigger``: the restored trigger unlearned, ``minimal`` or ``completed``
    (``tabor_tf.unlearning.TRIGGER_KINDS``). Attack success and clean accuracy are fractions in [0, 1].
    """
    from .. import __version__
    from ..compare import card_data_source, check_methods, load_truth, nc_is_faithful, public, tabor_is_default
    from ..loading.files import sha256_path
    from ..output_folder import claim
    from ..scanning import make_config, run_scan, scan_identity
    from ..terminal import ProgressBar, say, warn
    from ..unlearning import UnlearnConfig, check_trigger_kind, evaluate_backdoor, load_trainable, patch_from_report

    check_trigger_kind(trigger)  # before any scan, not after scan 1
    stream = stream if stream is not None else sys.stderr
    started = time.perf_counter()
    methods = check_methods(methods)
    presets, overrides = dict(presets or {}), dict(overrides or {})
    unlearn = unlearn or UnlearnConfig(seed=seed)
    model_path = Path(model_path)
    if not model_path.exists():
        raise TaborError(f"model not found: {model_path}")
    truth = load_truth(truth_path)
    triggers = real_triggers(truth)
    notes = []
    if len(triggers) == 1:
        notes.append("the card has only one real trigger: after patching there is no second trigger to find "
                     "(a rescan flag is residue of the same trigger or a false alarm)")
    card_model = Path(truth["_card"].model_path)
    model_sha = sha256_path(model_path)
    if card_model.exists() and sha256_path(card_model) != model_sha:
        notes.append(f"{model_path} is not the model file of the card ({card_model}): the real triggers may not fit it")
    data, synthetic = (data_path, {}) if data_path else card_data_source(truth)
    if not data:
        raise TaborError("patch-rescan needs labelled clean data: --data PATH (or --data synthetic)")
    if str(data).strip().lower() == "synthetic" and not synthetic:
        synthetic = card_data_source(truth)[1]
    prep = preprocess or truth.get("preprocessing") or "auto"
    suffix = model_path.suffix if model_path.suffix in (".h5", ".keras") else ".keras"
    out = Path(out_dir)
    store = RecordStore(out)
    inputs = _Inputs(model_path, data, preprocess=prep, max_samples=max_samples, seed=seed, holdout=holdout,
                     allow_unsafe=allow_unsafe, synthetic=synthetic)
    true_trigs = [(t["mask"], t["pattern"], t["target"]) for t in triggers]
    names = [t["name"] for t in triggers]
    common = {"model_sha256": model_sha, "data": str(data) if str(data).lower() == "synthetic"
              else os.path.abspath(str(data)), "synthetic": synthetic or None, "max_samples": max_samples,
              "preprocess": prep, "seed": int(seed), "holdout": float(holdout), "card": truth["card"],
              "triggers": public_triggers(triggers)}

    def log(text):
        say(text, stream=stream, quiet=quiet)

    # the original model on the held-out images: clean accuracy, attack success of each real trigger
    original = store.get("original", common)
    if original is None:
        x_tune, y_tune, x_held, y_held = inputs.split()
        ev = evaluate_backdoor(load_trainable(model_path, allow_unsafe=allow_unsafe), x_held, y_held,
                               inputs.prepared.check.mode, true_trigs)
        original = store.put("original", {"clean_accuracy": ev["clean_accuracy"],
                                          "attack_success": dict(zip(names, ev["attack_success"])),
                                          "eval_images": int(len(y_held)), "fine_tune_images": int(len(y_tune)),
                                          "preprocess": inputs.prepared.check.mode}, common)
    else:
        log("original       evaluation reused from an earlier run")
    mode = original["preprocess"]

    per_method = {}
    shape = truth["_card"].data.get("input_shape")
    shape = tuple(shape) if shape else None
    for m in methods:
        cfg = make_config(m, presets.get(m), overrides.get(m), shape)
        faithful = nc_is_faithful(cfg) if m == "neural_cleanse" else tabor_is_default(cfg, shape)
        folder = out / DIR_NAMES[m]
        title = TITLES[m]
        scan_kw = dict(method=m, seed=seed, preset=cfg.preset, overrides=overrides.get(m) or {})

        def scan(stage, path, prepared=None, _m=m, _kw=scan_kw, _title=title, _faithful=faithful, _folder=folder):
            settings = {"stage": stage, "config": make_config(_m, _kw["preset"], _kw["overrides"]).to_dict(),
                        "identity": scan_identity(path, data_path=data, max_samples=max_samples,
                                                  preprocess=mode if stage == "rescan" else prep, **_kw)}
            key = f"{DIR_NAMES[_m]}-{stage}"
            record = store.get(key, settings)
            if record is not None:
                log(f"{_title:<14} {stage}: reused (flagged {record['flagged_labels'] or 'none'})")
                return record
            report_dir = _folder / stage
            claim(report_dir, settings["identity"], overwrite=True)  # resumes the same interrupted scan only
            if prepared is None:
                from ..scanning import prepare

                prepared = prepare(path, data, preprocess=mode, max_samples=max_samples,
                                   allow_unsafe=allow_unsafe, **synthetic)
            with ProgressBar(f"{_title} {stage}", stream=stream, quiet=quiet) as bar:
                result, report = run_scan(out_dir=report_dir, progress=bar, prepared=prepared, html=False, **_kw)
            rec = _scan_record(result, report, report_dir, triggers, truth, _faithful)
            log(f"{_title:<14} {stage}: flagged {rec['flagged_labels'] or 'none'} "
                f"(anomaly index {_num(rec['anomaly_index'])})")
            return store.put(key, rec, settings)

        scan1 = scan("scan1", model_path, inputs._prepared)
        entry = {"method": m, "title": title, "preset": cfg.preset, "overrides": dict(overrides.get(m) or {}),
                 "faithful": bool(faithful), "scan1": scan1, "patch": None, "rescan": None, "skipped": None}
        if not scan1["flagged_labels"]:
            entry["skipped"] = "scan 1 flagged no label: nothing to patch, no rescan"
            log(f"{title:<14} {entry['skipped']}")
        else:
            patched_path = folder / f"patched{suffix}"
            p_settings = {"scan1": scan1["settings"], "flagged_labels": scan1["flagged_labels"],
                          "unlearn": unlearn.to_dict(), "trigger": trigger, **common}
            key = f"{DIR_NAMES[m]}-patch"
            patch = store.get(key, p_settings)
            if patch is not None and patched_path.is_file() and sha256_path(patched_path) == patch.get("sha256"):
                log(f"{title:<14} patch: reused {patched_path}")
            else:
                x_tune, y_tune, x_held, y_held = inputs.split()
                log(f"{title:<14} patch: unlearning the {trigger} restored trigger(s) of label(s) "
                    f"{', '.join(map(str, scan1['flagged_labels']))} with {len(y_tune)} images")
                rec = patch_from_report(model_path, scan1["report_dir"], x_tune, y_tune, patched_path,
                                        labels=scan1["flagged_labels"], preprocess=mode, config=unlearn,
                                        eval_x=x_held, eval_y=y_held, true_triggers=true_trigs,
                                        allow_unsafe=allow_unsafe, trigger=trigger)
                for text in rec["warnings"]:
                    warn(text, stream=stream)
                k = len(rec["labels"])
                patch = store.put(key, {
                    "labels": rec["labels"], "model_path": rec["model_path"], "sha256": sha256_path(patched_path),
                    "clean_accuracy": {"before": rec["before"]["clean_accuracy"],
                                       "after": rec["after"]["clean_accuracy"]},
                    "restored_attack_success": {"before": rec["before"]["attack_success"][:k],
                                                "after": rec["after"]["attack_success"][:k]},
                    "attack_success": {"before": dict(zip(names, rec["before"]["attack_success"][k:])),
                                       "after": dict(zip(names, rec["after"]["attack_success"][k:]))},
                    "fine_tune_images": int(len(y_tune)), "eval_images": int(len(y_held)),
                    "warnings": rec["warnings"]}, p_settings)
            entry["patch"] = patch
            entry["rescan"] = scan("rescan", patched_path)
        entry.update(outcome(entry, triggers))
        per_method[m] = entry

    result = {
        "kind": "tabor-tf-experiment", "experiment": NAME, "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": str(model_path.resolve()), "model_sha256": model_sha, "data": common["data"],
        "truth": public(truth), "triggers": public_triggers(triggers), "one_trigger": len(triggers) == 1,
        "settings": {k: common[k] for k in ("max_samples", "preprocess", "seed", "holdout", "synthetic")}
        | {"unlearn": unlearn.to_dict(), "trigger": trigger},
        "original": {k: original[k] for k in ("clean_accuracy", "attack_success", "eval_images", "fine_tune_images")},
        "methods": list(methods), "results": per_method, "notes": notes,
        "seconds": time.perf_counter() - started,
    }
    result["rows"] = {m: table_rows(result, m) for m in methods}
    write_outputs(out, RESULT_NAME, result, to_markdown(result))
    return result


def outcome(entry: dict, triggers: list) -> dict:
    """``patched_targets``, ``found_again`` (per patched target with a real trigger: flagged by the
    rescan) and ``second_trigger_found`` (True / False; None when nothing was patched or no patched
    target has a second real trigger)."""
    patch, rescan = entry.get("patch"), entry.get("rescan")
    if not patch or not rescan:
        return {"patched_targets": [], "found_again": {}, "second_trigger_found": None}
    targets = {t["target"] for t in triggers}
    patched = [t for t in patch["labels"] if t in targets]
    again = {str(t): t in rescan["flagged_labels"] for t in patched}
    multi = [t for t in patched if sum(tr["target"] == t for tr in triggers) >= 2]
    found = any(t in rescan["flagged_labels"] for t in multi) if multi else None
    return {"patched_targets": patched, "found_again": again, "second_trigger_found": found}


# ----------------------------------------------------------------------------- tables


def _num(v, d: int = 2) -> str:
    return "–" if v is None else f"{float(v):.{d}f}"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def _f1_by_trigger(scan: Optional[dict], triggers: list) -> dict:
    """F1 of the restored mask of each real trigger's target label against that trigger, by name."""
    out = {}
    for t in triggers:
        ent = next((e for e in (scan or {}).get("targets", []) if e["target"] == t["target"]), {})
        out[t["name"]] = (ent.get("f1") or {}).get(t["name"])
    return out


def table_rows(result: dict, method: str) -> list:
    """Figure 8 rows of one method (dicts): the original model's scan, then the patched model's rescan."""
    entry, trig = result["results"][method], result["triggers"]
    rows = []

    def best(scan):
        return {str(e["target"]): e.get("best") for e in (scan or {}).get("targets", []) if "best" in e}

    scan1 = entry["scan1"]
    rows.append({"stage": "scan 1", "model": "original", "flagged_labels": scan1["flagged_labels"],
                 "best_match": best(scan1), "f1": _f1_by_trigger(scan1, trig),
                 "clean_accuracy": result["original"]["clean_accuracy"],
                 "attack_success": dict(result["original"]["attack_success"])})
    if entry["rescan"] is not None:
        rescan, patch = entry["rescan"], entry["patch"]
        rows.append({"stage": "rescan", "model": f"patched (label {', '.join(map(str, patch['labels']))})",
                     "flagged_labels": rescan["flagged_labels"], "best_match": best(rescan),
                     "f1": _f1_by_trigger(rescan, trig), "clean_accuracy": patch["clean_accuracy"]["after"],
                     "attack_success": dict(patch["attack_success"]["after"])})
    return rows


def to_markdown(result: dict) -> str:
    trig = result["triggers"]
    names = [t["name"] for t in trig]
    lines = [f"# Patch, then rescan (paper Figure 8): {result['truth'].get('name') or result['model']}", "",
             f"Model `{result['model']}`, clean data `{result['data']}`, seed {result['settings']['seed']}; "
             f"clean accuracy and attack success on {result['original']['eval_images']} held-out images "
             f"(unlearning used {result['original']['fine_tune_images']}; restored trigger unlearned: "
             f"{result['settings'].get('trigger', 'minimal')}).", "",
             "Real triggers (card):", ""]
    lines += [f"- **{t['name']}**: {t['description']}" for t in trig]
    for note in result["notes"]:
        lines += ["", f"Note: {note}"]
    header = (["stage", "model", "flagged", "restored ≈"] + [f"F1 vs {n}" for n in names] + ["clean acc"]
              + [f"attack success {n}" for n in names])
    for m in result["methods"]:
        entry = result["results"][m]
        setting = f"preset {entry['preset']}" + (f", overrides {entry['overrides']}" if entry["overrides"] else "")
        kind = "" if entry["faithful"] else (" — budget-reduced, NOT the faithful baseline" if m == "neural_cleanse"
                                               else " — modified settings")
        lines += ["", f"## {entry['title']} ({setting}{kind})", ""]
        rows = []
        for r in result["rows"][m]:
            rows.append([r["stage"], r["model"], ", ".join(map(str, r["flagged_labels"])) or "none",
                         ", ".join(f"{k}: {v}" for k, v in r["best_match"].items()) or "–"]
                        + [_num(r["f1"].get(n)) for n in names] + [_pct(r["clean_accuracy"])]
                        + [_pct(r["attack_success"].get(n)) for n in names])
        lines.append(markdown_table(header, rows))
        lines += [""] + [f"- {text}" for text in method_lines(entry)]
    return "\n".join(lines)


def method_lines(entry: dict) -> list:
    """Plain sentences on one method's run: what was patched, restored-trigger attack success, outcome."""
    if entry["skipped"]:
        return [entry["skipped"]]
    patch = entry["patch"]
    out = [f"patched: unlearned the restored trigger(s) of label(s) {', '.join(map(str, patch['labels']))}; "
           f"clean accuracy {_pct(patch['clean_accuracy']['before'])} -> {_pct(patch['clean_accuracy']['after'])}"]
    for label, a, b in zip(patch["labels"], patch["restored_attack_success"]["before"],
                           patch["restored_attack_success"]["after"]):
        out.append(f"restored trigger of label {label}: attack success {_pct(a)} -> {_pct(b)}")
    found = entry["second_trigger_found"]
    again = ", ".join(f"{t} {'flagged again' if v else 'not flagged'}" for t, v in entry["found_again"].items())
    out.append("second trigger found: " + {True: "yes", False: "no", None: "n/a"}[found]
               + (f" (rescan: {again})" if again else ""))
    return out


def summary_lines(result: dict) -> list:
    """The terminal summary: one block per method."""
    names = [t["name"] for t in result["triggers"]]
    out = ["triggers: " + "; ".join(f"{t['name']} = {t['description']}" for t in result["triggers"])]
    out += [f"note: {n}" for n in result["notes"]]
    for m in result["methods"]:
        entry = result["results"][m]
        out.append(f"{entry['title']}:")
        for r in result["rows"][m]:
            out.append(f"  {r['stage']:<7} flagged {', '.join(map(str, r['flagged_labels'])) or 'none':<8} "
                       + " ".join(f"F1({n}) {_num(r['f1'].get(n))}" for n in names)
                       + f"  clean {_pct(r['clean_accuracy'])}  "
                       + " ".join(f"AS({n}) {_pct(r['attack_success'].get(n))}" for n in names))
        out += [f"  {text}" for text in method_lines(entry)]
    return out
