"""A calibrated trojan probability from a scan's anomaly index.

Mapping (one per method)::

    z = log(1 + max(anomaly_index, 0))         # the anomaly index is heavy-tailed; log tames it
    p = sigmoid(a * z + b)                      # probability that the model carries a backdoor

``a`` and ``b`` are fitted by maximum likelihood (logistic regression on one feature, with a small
L2 penalty ``ridge * a**2`` so that a perfectly separable zoo gives finite parameters) on per-model
``(anomaly_index, infected)`` pairs: ``compare.json`` files of a zoo (``reports[method]
["anomaly_index"]`` and ``truth["infected"]``) or an explicit list. The fit's quality is the
held-out (leave-one-out) binary cross-entropy and ROC-AUC, as in the TrojAI evaluations.

Default parameters ship in ``tabor_tf/assets/calibration.json``; its ``provisional`` flag says
whether they were fitted on a real zoo. A scan without a usable anomaly index gets ``None``; an
infinite index (MAD 0, written as ``null`` in report.json next to an ``infected`` verdict) maps
to ``p = 1``.

Why the anomaly index alone: it is the evidence the verdict itself is drawn from (flagged iff
index > threshold), so the probability is monotone in the verdict's evidence and a model flagged
by the MAD test never gets a lower probability than a clean-looking one with a smaller index. A
second feature (e.g. the gap between the two smallest scores) would need a zoo far larger than
the ~10 models a GTSRB zoo has to be estimated without overfitting; the leave-one-out figures
reported with the fit are the check on that choice.

Every report.json carries the result as ``trojan_probability`` (``report_block``), and
``python -m tabor_tf.calibration fit OUT... --out FILE`` fits a new file from the output folder
of ``python -m tabor_tf.compare --zoo ZOO --out OUT`` (it reads every ``OUT/<name>/compare.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

DEFAULT_PATH = Path(__file__).parent / "assets" / "calibration.json"
# a held-out AUC below this does not make the probability a usable number (0.5 = chance)
MIN_USEFUL_AUC = 0.75
# held-out figures from fewer models than this are rough: the probability stays provisional
MIN_HELDOUT_MODELS = 10
MAPPING = "p = sigmoid(a * log(1 + max(anomaly_index, 0)) + b)"
TEST_SPLIT = "test split"  # heldout_kind of figures measured on models outside the fit (fit --test)
EPS = 1e-7


@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(a * log(1 + max(anomaly_index, 0)) + b)`` for one method."""

    method: str
    a: float
    b: float
    provisional: bool = True
    source: str = ""
    n_models: int = 0
    n_infected: int = 0
    heldout_cross_entropy: Optional[float] = None
    heldout_auc: Optional[float] = None
    ridge: float = 1e-2
    # the models it was fitted on: {"input_shapes": [[H, W, C], ...], "num_classes": [K, ...]}
    domain: Optional[dict] = None
    heldout_kind: str = "leave-one-out"  # how heldout_* were measured: leave-one-out, or TEST_SPLIT
    test_models: int = 0  # with heldout_kind TEST_SPLIT: the models of the test half, none of them in the fit
    test_infected: int = 0
    decision_rule: Optional[str] = None  # the method's outlier rule when fitted (None: before rules were named)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def heldout_models(self) -> int:
        """How many models the held-out figures were measured on."""
        return self.test_models if self.heldout_kind == TEST_SPLIT else self.n_models

    def provisional_reasons(self, model: Optional[dict] = None) -> list:
        """Why the probability of a scan of ``model`` (report.json's ``model`` block) is not
        validated: no fit on a zoo, no or a useless held-out AUC, or a model unlike the fit's."""
        reasons = []
        if self.provisional or self.n_models <= 0:
            reasons.append("not fitted on a zoo")
            return reasons
        if self.decision_rule != decision_rule(self.method):
            reasons.append("fitted on anomaly indices of an earlier decision rule; not refitted for the current one")
        if self.heldout_auc is None:
            reasons.append("no held-out measurement")
        elif self.heldout_auc < MIN_USEFUL_AUC:
            where = ("on the test split" if self.heldout_kind == TEST_SPLIT
                     else f"on the fitting zoo ({self.heldout_kind})")
            reasons.append(f"its held-out AUC {where} is {self.heldout_auc:.2f}, below"
                           f" {MIN_USEFUL_AUC:.2f}: the index does not separate clean from infected there")
        elif self.heldout_models < MIN_HELDOUT_MODELS:
            reasons.append(f"its held-out AUC ({self.heldout_auc:.2f}) rests on {self.heldout_models} models only,"
                           f" fewer than {MIN_HELDOUT_MODELS}")
        if model is not None:
            unlike = _outside_domain(self.domain, model)
            if unlike:
                reasons.append(unlike)
        return reasons

    def probability(self, anomaly_index: Optional[float]) -> Optional[float]:
        if anomaly_index is None:
            return None
        return float(sigmoid(self.a * feature(anomaly_index) + self.b))


def decision_rule(method: str) -> Optional[str]:
    """The outlier rule the method's default anomaly index comes from; a calibration fitted under
    another one does not apply. NC keeps its paper's rule (``None``); TABOR's is read off its
    default settings (``TaborConfig.decision_rule``), so it cannot drift from them."""
    if method != "tabor":
        return None
    from .tabor.presets import TaborConfig

    return TaborConfig().decision_rule()


def _shape_text(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def _outside_domain(domain: Optional[dict], model: dict) -> Optional[str]:
    """A line saying how ``model`` differs from the models of the fit (``None``: it is like them)."""
    if not domain:
        return "the models it was fitted on are not recorded"
    shapes = [list(map(int, s)) for s in domain.get("input_shapes") or ()]
    classes = [int(k) for k in domain.get("num_classes") or ()]
    shape = model.get("input_shape")
    k = model.get("num_classes")
    fitted = (", ".join(_shape_text(s) for s in shapes) or "?") + " inputs, " + (
        "/".join(map(str, classes)) or "?") + " classes"
    if (shape is not None and shapes and list(map(int, shape)) not in shapes) or (
            k is not None and classes and int(k) not in classes):
        this = f"{_shape_text(shape) if shape is not None else '?'} input, {k} classes"
        return f"fitted on models with {fitted}; this model has {this}"
    return None


def domain_of(models: Iterable[dict]) -> dict:
    """The ``domain`` of a fit from report.json ``model`` blocks (input shape, class count)."""
    shapes, classes = [], []
    for m in models:
        if m.get("input_shape") is not None and list(map(int, m["input_shape"])) not in shapes:
            shapes.append(list(map(int, m["input_shape"])))
        if m.get("num_classes") is not None and int(m["num_classes"]) not in classes:
            classes.append(int(m["num_classes"]))
    return {"input_shapes": sorted(shapes), "num_classes": sorted(classes)}


def feature(anomaly_index) -> np.ndarray:
    """``log(1 + max(ai, 0))`` elementwise; ``inf`` stays ``inf``."""
    ai = np.asarray(anomaly_index, dtype=np.float64)
    return np.log1p(np.maximum(ai, 0.0))


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))
    return np.where(np.isposinf(z), 1.0, np.where(np.isneginf(z), 0.0, out))


def cross_entropy(p: Sequence[float], y: Sequence[int]) -> float:
    """Mean binary cross-entropy (nats) of probabilities ``p`` for truths ``y`` (1 = infected)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def roc_auc(scores: Sequence[float], y: Sequence[int]) -> Optional[float]:
    """Probability that an infected model scores above a clean one (ties count half); ``None`` if
    one class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _clean_pairs(pairs: Iterable) -> tuple:
    ai, y = [], []
    for a, infected in pairs:
        if a is None or (isinstance(a, float) and math.isnan(a)):
            continue
        ai.append(float(a))
        y.append(1 if infected else 0)
    return np.asarray(ai, dtype=np.float64), np.asarray(y, dtype=np.int64)


MIN_PER_CLASS = 2  # a fit (and its leave-one-out check) needs at least 2 clean and 2 infected models


def fit(pairs: Iterable, *, method: str = "tabor", ridge: float = 1e-2, source: str = "",
        heldout: bool = True, min_per_class: int = MIN_PER_CLASS, domain: Optional[dict] = None) -> Calibration:
    """Maximum-likelihood ``a, b`` on ``[(anomaly_index, infected)]`` (pairs with no index skipped);
    ``heldout``: also the leave-one-out cross-entropy and AUC. ``ValueError`` with fewer than
    ``min_per_class`` infected or clean models."""
    from scipy.optimize import minimize

    ai, y = _clean_pairs(pairs)
    n_inf, n_clean = int(y.sum()), int(len(y) - y.sum())
    if min(n_inf, n_clean) < max(1, int(min_per_class)):
        raise ValueError(f"calibration needs at least {max(1, int(min_per_class))} infected and "
                         f"{max(1, int(min_per_class))} clean models with an anomaly index; "
                         f"got {n_inf} infected and {n_clean} clean")
    z = np.minimum(feature(ai), 50.0)  # an infinite index is a certain detection; keep the fit finite

    def loss(theta):
        a, b = theta
        t = a * z + b
        # log(1 + e^t) - y t, stable
        nll = np.logaddexp(0.0, t) - y * t
        grad_t = sigmoid(t) - y
        return nll.mean() + ridge * a * a, np.array([np.mean(grad_t * z) + 2 * ridge * a, np.mean(grad_t)])

    res = minimize(loss, x0=np.array([1.0, -1.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    cal = Calibration(method=method, a=a, b=b, provisional=False, source=source, n_models=int(len(y)),
                      n_infected=n_inf, ridge=float(ridge), domain=domain, decision_rule=decision_rule(method))
    if heldout and len(y) >= 3:
        p = leave_one_out(ai, y, method=method, ridge=ridge)
        cal = replace(cal, heldout_cross_entropy=cross_entropy(p, y), heldout_auc=roc_auc(p, y))
    return cal


def evaluate(cal: Calibration, pairs: Iterable) -> dict:
    """``cal`` on models outside its fit -> ``{n_models, n_infected, cross_entropy, auc}`` (pairs
    with no index skipped; ``auc`` ``None`` when one class is missing)."""
    ai, y = _clean_pairs(pairs)
    if len(y) == 0:
        raise ValueError("no test model with an anomaly index and a ground-truth card")
    p = np.asarray([cal.probability(a) for a in ai], dtype=np.float64)
    return {"n_models": int(len(y)), "n_infected": int(y.sum()), "cross_entropy": cross_entropy(p, y),
            "auc": roc_auc(p, y)}


def with_test_split(cal: Calibration, pairs: Iterable) -> Calibration:
    """``cal`` with its held-out figures measured on a test split (``pairs`` of models that were not
    in the fit) instead of leave-one-out on the fit's own models."""
    result = evaluate(cal, pairs)
    return replace(cal, heldout_kind=TEST_SPLIT, heldout_cross_entropy=result["cross_entropy"],
                   heldout_auc=result["auc"], test_models=result["n_models"], test_infected=result["n_infected"])


def leave_one_out(ai: np.ndarray, y: np.ndarray, *, method: str = "tabor", ridge: float = 1e-2) -> np.ndarray:
    """Each model's probability from a fit on all the others (a fold with one class only falls back
    to the base rate of that fold)."""
    out = np.empty(len(y), dtype=np.float64)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        if y[keep].min() == y[keep].max():
            out[i] = float(np.clip(y[keep].mean(), EPS, 1 - EPS))
            continue
        cal = fit(zip(ai[keep], y[keep]), method=method, ridge=ridge, heldout=False, min_per_class=1)
        out[i] = cal.probability(float(ai[i]))
    return out


def report_anomaly_index(report: dict) -> Optional[float]:
    """The anomaly index of a report.json dictionary; its ``null`` (an infinite index: MAD 0 and a
    score below the median) is ``inf`` when the report flags a label, else ``None`` (no evidence).
    A TABOR report written before ``first_start_anomaly_index`` existed whose labels carry fresh
    starts (``parts.confirm_indices``) gets the index its verdict stood on (``confirm.decision_index``)."""
    value = report.get("anomaly_index")
    if value is not None and "first_start_anomaly_index" not in report:
        value = _confirmed_index(report, float(value))
    if value is None:
        return math.inf if report.get("flagged_labels") or report.get("verdict") == "infected" else None
    return float(value)


def _confirmed_index(report: dict, first: float) -> float:
    """``confirm.decision_index`` of an older report's label rows (``first`` when none re-ran)."""
    from .outliers import MadResult
    from .tabor.confirm import decision_index

    rows = report.get("labels") or []
    repeats = {int(r["label"]): [float(v) for v in (r.get("parts") or {}).get("confirm_indices") or ()]
               for r in rows}
    repeats = {lab: v for lab, v in repeats.items() if v}
    if not repeats or any(r.get("anomaly_index") is None for r in rows):
        return first
    # the rows' indices on a unit scale: index_on / averaged_index then read them back unchanged
    mad = MadResult(median=0.0, mad=1.0, anomaly_index=first, threshold=float(report["mad"]["threshold"]),
                    flagged_labels=sorted(repeats), label_indices={int(r["label"]): -float(r["anomaly_index"])
                                                                   for r in rows})
    return decision_index(mad, repeats)


def models_from_compare(paths: Iterable) -> list:
    """The report ``model`` blocks of compare.json files with a ground-truth card (the fit's models)."""
    out = []
    for path in paths:
        path = Path(path)
        data = json.loads((path / "compare.json" if path.is_dir() else path).read_text(encoding="utf-8"))
        if data.get("truth") is not None and isinstance(data.get("model"), dict):
            out.append(data["model"])
    return out


def pairs_from_compare(paths: Iterable, method: str) -> list:
    """``[(anomaly_index, infected)]`` of ``method`` (``tabor`` / ``neural_cleanse``) from compare.json
    files (or folders holding one) that carry a ground-truth card; models without truth are skipped."""
    out = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "compare.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        truth = data.get("truth")
        report = (data.get("reports") or {}).get(method)
        if truth is None or report is None:
            continue
        out.append((report_anomaly_index(report), bool(truth.get("infected"))))
    return out


def load_default(method: str, path=DEFAULT_PATH) -> Calibration:
    """The shipped calibration of ``method`` (``tabor`` / ``neural_cleanse``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entry = data["methods"][method]
    known = {f.name for f in fields(Calibration)} - {"method"}
    return Calibration(method=method, **{k: v for k, v in entry.items() if k in known})


def save(calibrations: Sequence[Calibration], path, note: str = "") -> None:
    """Write ``calibrations`` (one per method) as a calibration file (atomically)."""
    import time

    from . import __version__
    from .report import atomic_write_json

    atomic_write_json(path, {"mapping": MAPPING, "note": note, "tool_version": __version__,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "methods": {c.method: {k: v for k, v in c.to_dict().items() if k != "method"}
                                         for c in calibrations}})


def calibration_info(cal: Calibration, file: Optional[str] = None, model: Optional[dict] = None) -> dict:
    """The ``calibration`` part of a report's ``trojan_probability`` block; ``model``: the scanned
    model (report.json's ``model``), for ``validated`` / ``provisional_reasons``."""
    reasons = cal.provisional_reasons(model)
    info = {"mapping": MAPPING, **cal.to_dict(),
            "fitted_on_zoo": (not cal.provisional) and cal.n_models > 0,
            "validated": not reasons, "provisional_reasons": reasons, "domain_checked": model is not None}
    if file is not None:
        info["file"] = file
    return info


def report_block(method: str, anomaly_index: Optional[float], calibration: Optional[Calibration] = None,
                 path=DEFAULT_PATH, model: Optional[dict] = None) -> dict:
    """The ``trojan_probability`` block of report.json for one scan.

    ``{"probability": p or None, "anomaly_index": the evidence (inf allowed; strict JSON writes
    it as null), "calibration": {mapping, method, a, b, provisional, fitted_on_zoo, source,
    n_models, n_infected, heldout_cross_entropy, heldout_auc, ridge, file}}``. ``calibration``:
    use this one instead of the shipped file at ``path``. A missing or unreadable calibration
    file gives ``probability: None`` and an ``error`` line instead of failing the scan.
    """
    from .report import method_key

    key = method_key(method)
    evidence = None if anomaly_index is None else float(anomaly_index)
    if calibration is None:
        try:
            calibration = load_default(key, path)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            return {"probability": None, "anomaly_index": evidence, "calibration": None,
                    "error": f"no usable calibration for {key} in {path}: {exc}"}
        file = Path(path).name
    else:
        file = None
    return {"probability": calibration.probability(evidence), "anomaly_index": evidence,
            "calibration": calibration_info(calibration, file, model)}


def probability_validated(report: dict) -> bool:
    """Whether a report.json's trojan probability was validated on models like the one scanned."""
    cal = (report.get("trojan_probability") or {}).get("calibration") or {}
    return bool(cal.get("validated", False))


def probability_text(report: dict) -> Optional[str]:
    """``"0.97 (provisional calibration, not fitted on a zoo)"`` from a report's
    ``trojan_probability`` block (``None`` for a report without one)."""
    block = report.get("trojan_probability")
    if not isinstance(block, dict):
        return None
    p = block.get("probability")
    cal = block.get("calibration") or {}
    value = "unknown" if p is None else f"{p:.2f}"
    if not cal:
        how = block.get("error") or "no calibration"
    elif cal.get("validated", False):
        if cal.get("heldout_kind") == TEST_SPLIT:
            measured = f"AUC {cal.get('heldout_auc'):.2f} on {cal.get('test_models')} other test models"
        else:
            measured = f"{cal.get('heldout_kind')} AUC {cal.get('heldout_auc'):.2f}"
        how = (f"calibrated on {cal.get('n_models')} zoo models{' like this one' if cal.get('domain_checked') else ''},"
               f" {measured}")
    else:
        reasons = cal.get("provisional_reasons") or (
            ["not fitted on a zoo"] if not cal.get("fitted_on_zoo") else ["not validated on models like this one"])
        how = "PROVISIONAL: " + "; ".join(reasons)
    return f"{value} ({how})"


def probability_line(report: dict) -> Optional[str]:
    """The scan summary's line: ``trojan prob.     0.97 (...)`` (``None`` without a block)."""
    text = probability_text(report)
    return None if text is None else f"trojan prob.     {text}"


def find_compare_files(paths: Iterable) -> list:
    """Every compare.json under ``paths`` (files or folders, searched recursively), sorted, each
    once; ``ValueError`` for a path that does not exist."""
    found, seen = [], set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"{path} does not exist")
        for f in ([path] if path.is_file() else sorted(path.rglob("compare.json"))):
            if f.resolve() not in seen:
                seen.add(f.resolve())
                found.append(f)
    return found


def fit_files(paths: Sequence, *, ridge: float = 1e-2, methods=("tabor", "neural_cleanse"),
              test_paths: Sequence = ()) -> tuple:
    """Fit every method on the compare.json files under ``paths`` -> ``(calibrations, problems)``:
    the fitted ``Calibration``s and one line per method that could not be fitted. ``test_paths``:
    compare.json files of a test split (e.g. the evaluation zoo's test half); the held-out figures
    are then measured there, not by leave-one-out. A model in both is refused (``ValueError``)."""
    files = find_compare_files(paths)
    test_files = find_compare_files(test_paths) if test_paths else []
    overlap = {f.resolve() for f in files} & {f.resolve() for f in test_files}
    names = {_model_name(f) for f in files} & {_model_name(f) for f in test_files} - {None}
    if overlap or names:
        raise ValueError("the test split shares models with the fit: "
                         + ", ".join(sorted(map(str, names or overlap))[:5]))
    fitted, problems = [], []
    where = ", ".join(str(Path(p).resolve()) for p in paths)
    domain = domain_of(models_from_compare(list(files) + list(test_files)))
    for method in methods:
        pairs = pairs_from_compare(files, method)
        try:
            cal = fit(pairs, method=method, ridge=ridge, domain=domain,
                      source=f"fitted on {len(pairs)} zoo models (compare.json under {where})")
            if test_files:
                cal = with_test_split(cal, pairs_from_compare(test_files, method))
            fitted.append(cal)
        except ValueError as exc:
            problems.append(f"{method}: {exc} ({len(files)} compare.json files, {len(test_files)} test)")
    return fitted, problems


def _model_name(path) -> Optional[str]:
    """The victim name of a compare.json's ground-truth card (``None`` without one), for the split check."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (data.get("truth") or {}).get("name")


def describe(cal: Calibration) -> str:
    """One line: parameters, models and the held-out quality."""
    ce = "-" if cal.heldout_cross_entropy is None else f"{cal.heldout_cross_entropy:.3f}"
    auc = "-" if cal.heldout_auc is None else f"{cal.heldout_auc:.3f}"
    state = "provisional" if cal.provisional_reasons() else "fitted"
    where = "leave-one-out" if cal.heldout_kind != TEST_SPLIT else (
        f"on the test split ({cal.test_models} models, {cal.test_infected} infected)")
    return (f"{cal.method:<15} a={cal.a:.3f} b={cal.b:.3f}  n={cal.n_models} ({cal.n_infected} infected, "
            f"{cal.n_models - cal.n_infected} clean)  {where} cross-entropy {ce} nats, AUC {auc}  [{state}]")


def main(argv=None) -> int:
    """Fit or show the trojan-probability calibration.

    ``python -m tabor_tf.calibration fit OUT... [--test TEST_OUT...] [--out FILE] [--ridge R]``:
    fit both methods on every compare.json under OUT (the folder of ``python -m tabor_tf.compare
    --zoo ZOO --out OUT``) and print n, the held-out cross-entropy and AUC per method (on the
    models under TEST_OUT when given, e.g. dev half fitted, test half measured; else leave-one-out); ``--out`` writes the file
    (e.g. ``tabor_tf/assets/calibration.json``). ``python -m tabor_tf.calibration show [FILE]``:
    print a calibration file (default: the shipped one). Exit 0, or 2 when nothing could be fitted.
    The old form without ``fit`` (``python -m tabor_tf.calibration OUT...``) still works.
    """
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["show"]:
        path = Path(argv[1]) if len(argv) > 1 else DEFAULT_PATH
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cals = [load_default(m, path) for m in data["methods"]]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            print(f"tabor-tf: error: cannot read calibration {path}: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {data.get('mapping', MAPPING)}")
        for cal in cals:
            print(describe(cal))
            print(f"{'':<15} source: {cal.source}")
        return 0
    if argv[:1] == ["fit"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="python -m tabor_tf.calibration fit", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="OUT",
                        help="compare --zoo output folders (or compare.json files); searched recursively")
    parser.add_argument("--out", default=None, help="write the fitted calibration JSON here")
    parser.add_argument("--ridge", type=float, default=1e-2, help="L2 penalty on the slope a (default 0.01)")
    parser.add_argument("--test", nargs="+", default=[], metavar="TEST_OUT",
                        help="compare output folders of a test split (models not in the fit, e.g. the evaluation "
                             "zoo's test half): the cross-entropy and AUC are measured there, not leave-one-out")
    args = parser.parse_args(argv)
    try:
        fitted, problems = fit_files(args.paths, ridge=args.ridge, test_paths=args.test)
    except (OSError, ValueError) as exc:
        print(f"tabor-tf: error: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"tabor-tf: cannot fit {line}", file=sys.stderr)
    for cal in fitted:
        print(describe(cal))
        if cal.heldout_models < MIN_HELDOUT_MODELS:
            print(f"{'':<15} only {cal.heldout_models} held-out models: the held-out figures are rough"
                  " (the probability stays PROVISIONAL)")
    if args.out and fitted:
        kept = []
        if Path(args.out).is_file():  # keep the methods this zoo could not fit from the file replaced
            for method in ("tabor", "neural_cleanse"):
                if method not in {c.method for c in fitted}:
                    try:
                        kept.append(load_default(method, args.out))
                        print(f"{method}: kept the calibration already in {args.out}")
                    except (OSError, KeyError, ValueError, TypeError):
                        pass
        note = "fitted by python -m tabor_tf.calibration fit " + " ".join(args.paths)
        if args.test:
            note += " --test " + " ".join(args.test)
        save(fitted + kept, args.out, note=note)
        print(f"wrote {args.out}")
    return 0 if fitted else 2


if __name__ == "__main__":
    raise SystemExit(main())
