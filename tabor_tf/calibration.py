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
whether they were fitted on a real zoo. A scan without a usable anomaly index (``None``: fewer
than 3 finite scores) gets ``None``; an infinite index maps to ``p = 1``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

DEFAULT_PATH = Path(__file__).parent / "assets" / "calibration.json"
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

    def to_dict(self) -> dict:
        return asdict(self)

    def probability(self, anomaly_index: Optional[float]) -> Optional[float]:
        if anomaly_index is None:
            return None
        return float(sigmoid(self.a * feature(anomaly_index) + self.b))


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


def fit(pairs: Iterable, *, method: str = "tabor", ridge: float = 1e-2, source: str = "",
        heldout: bool = True) -> Calibration:
    """Maximum-likelihood ``a, b`` on ``[(anomaly_index, infected)]`` (pairs with no index skipped);
    ``heldout``: also the leave-one-out cross-entropy and AUC. ``ValueError`` if fewer than 2 models
    or only one class."""
    from scipy.optimize import minimize

    ai, y = _clean_pairs(pairs)
    if len(y) < 2 or y.min() == y.max():
        raise ValueError("calibration needs at least one infected and one clean model with an anomaly index")
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
                      n_infected=int(y.sum()), ridge=float(ridge))
    if heldout and len(y) >= 3:
        p = leave_one_out(ai, y, method=method, ridge=ridge)
        cal = replace(cal, heldout_cross_entropy=cross_entropy(p, y), heldout_auc=roc_auc(p, y))
    return cal


def leave_one_out(ai: np.ndarray, y: np.ndarray, *, method: str = "tabor", ridge: float = 1e-2) -> np.ndarray:
    """Each model's probability from a fit on all the others (a fold with one class only falls back
    to the base rate of that fold)."""
    out = np.empty(len(y), dtype=np.float64)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        if y[keep].min() == y[keep].max():
            out[i] = float(np.clip(y[keep].mean(), EPS, 1 - EPS))
            continue
        cal = fit(zip(ai[keep], y[keep]), method=method, ridge=ridge, heldout=False)
        out[i] = cal.probability(float(ai[i]))
    return out


def pairs_from_compare(paths: Iterable, method: str) -> list:
    """``[(anomaly_index, infected)]`` of ``method`` (``tabor`` / ``neural_cleanse``) from compare.json
    files (or folders holding one) that carry a ground-truth card."""
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
        out.append((report.get("anomaly_index"), bool(truth.get("infected"))))
    return out


def load_default(method: str, path=DEFAULT_PATH) -> Calibration:
    """The shipped calibration of ``method`` (``tabor`` / ``neural_cleanse``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entry = data["methods"][method]
    return Calibration(method=method, **{k: v for k, v in entry.items() if k != "method"})


def save(calibrations: Sequence[Calibration], path, note: str = "") -> None:
    from .report import atomic_write_json

    atomic_write_json(path, {"mapping": "p = sigmoid(a * log(1 + max(anomaly_index, 0)) + b)", "note": note,
                             "methods": {c.method: {k: v for k, v in c.to_dict().items() if k != "method"}
                                         for c in calibrations}})


def report_block(report: dict, calibration: Optional[Calibration] = None) -> dict:
    """What a report.json could carry as ``trojan_probability``: the probability and the fit's quality."""
    from .report import method_key

    cal = calibration or load_default(method_key(report["method"]))
    return {"p": cal.probability(report.get("anomaly_index")), "a": cal.a, "b": cal.b,
            "provisional": cal.provisional, "heldout_cross_entropy": cal.heldout_cross_entropy,
            "heldout_auc": cal.heldout_auc, "n_models": cal.n_models}


def find_compare_files(paths: Iterable) -> list:
    """Every compare.json under ``paths`` (files or folders, searched recursively), sorted."""
    found = []
    for path in paths:
        path = Path(path)
        found.extend([path] if path.is_file() else sorted(path.rglob("compare.json")))
    return found


def main(argv=None) -> int:
    """``python -m tabor_tf.calibration ZOO_OUT... [--out calibration.json] [--ridge R]``: fit both
    methods on the compare.json files of a zoo and print the held-out cross-entropy and AUC."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tabor_tf.calibration", description=main.__doc__)
    parser.add_argument("paths", nargs="+", help="compare.json files or folders holding them (compare --zoo output)")
    parser.add_argument("--out", default=None, help="write the fitted calibration JSON here")
    parser.add_argument("--ridge", type=float, default=1e-2)
    args = parser.parse_args(argv)
    files = find_compare_files(args.paths)
    fitted = []
    for method in ("tabor", "neural_cleanse"):
        pairs = pairs_from_compare(files, method)
        try:
            cal = fit(pairs, method=method, ridge=args.ridge, source=f"{len(files)} compare.json under "
                      + ", ".join(str(p) for p in args.paths))
        except ValueError as exc:
            print(f"{method}: {exc} ({len(pairs)} models)", file=sys.stderr)
            continue
        fitted.append(cal)
        ce = "-" if cal.heldout_cross_entropy is None else f"{cal.heldout_cross_entropy:.3f}"
        auc = "-" if cal.heldout_auc is None else f"{cal.heldout_auc:.3f}"
        print(f"{method:<15} a={cal.a:.3f} b={cal.b:.3f}  models {cal.n_models} ({cal.n_infected} infected)  "
              f"leave-one-out cross-entropy {ce} nats, AUC {auc}")
    if args.out and fitted:
        save(fitted, args.out, note="fitted by python -m tabor_tf.calibration")
    return 0 if fitted else 2


if __name__ == "__main__":
    raise SystemExit(main())
