"""Confirm TABOR's flags from fresh starts: keep only anomalies that repeat.

A low outlier of A can be a real trigger or the least-bad natural feature that one initialisation
and batch order happened to find. After the MAD test, every flagged label is optimised again
from ``confirm_seeds`` fresh starts (another seed: another initial trigger and batch order;
the starts run together as one search), the
new triggers are scored with the same metric, and each new A is placed on the first run's median
and MAD. A label stays flagged only when its index averaged over the first run and the fresh
starts still exceeds the threshold: the flagged labels were selected for a low A, so their first
A is biased low (the winner's curse); the average of independent starts is not.
The other labels are not re-run: the cost is the flagged labels' share of a scan (one or two
labels of 43, about 2-5%, per confirmation seed). Measured on the dev half of the evaluation zoo
(``benchmarks/confirm_flags.py``, docs/TABOR_CHOICES.md "Confirming flags").
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from tabor_tf.outliers import MadResult

def confirm_seeds(seed: int, count: int) -> list:
    """The seeds of ``count`` fresh starts for a scan with ``seed``: ``seed + 1 ... seed + count``."""
    return [int(seed) + 1 + j for j in range(int(count))]


def index_on(mad: MadResult, score: float) -> float:
    """Anomaly index of ``score`` on ``mad``'s median and MAD (positive = below the median)."""
    if mad.mad > 0:
        return float((mad.median - float(score)) / mad.mad)
    return float(np.inf if score < mad.median else 0.0)


def averaged_index(mad: MadResult, label: int, repeat_indices) -> float:
    """The label's index averaged over the first run and its fresh starts."""
    first = float(-mad.label_indices[int(label)])
    return float(np.mean([first, *[float(v) for v in repeat_indices]]))


def decision_index(mad: MadResult, indices: dict) -> float:
    """The anomaly index the confirmed verdict stands on: the largest of each re-run label's index
    averaged over its starts and each other unflagged label's first index (a flagged label without
    fresh starts is not evidence). Above ``mad.threshold`` exactly when a flag is kept; >= 0."""
    values = [averaged_index(mad, lab, v) for lab, v in indices.items() if v]
    values += [-float(i) for lab, i in mad.label_indices.items()
               if int(lab) not in indices and int(lab) not in mad.flagged_labels]
    return float(max([0.0, *values]))


def decide(mad: MadResult, repeats: dict) -> tuple:
    """``repeats``: label -> [A from each fresh start] -> ``(MadResult with only the flagged labels
    whose index averaged over the first run and the fresh starts still exceeds the threshold,
    {label: [index of each fresh start]})``. A label without fresh starts is not kept. The result's
    ``anomaly_index`` is the ``decision_index`` (what the calibrated probability is computed from)
    and ``first_anomaly_index`` the first start's; median, MAD and label indices stay the first run's."""
    indices = {int(lab): [round(index_on(mad, a), 4) for a in scores] for lab, scores in repeats.items()}
    kept = [lab for lab in mad.flagged_labels
            if indices.get(lab) and averaged_index(mad, lab, indices[lab]) > mad.threshold]
    return dataclasses.replace(mad, flagged_labels=kept, anomaly_index=decision_index(mad, indices),
                               first_anomaly_index=float(mad.anomaly_index)), indices


def run_confirmation(victim, x, y_ref, config, mode: str, seed: int, mad: MadResult, *, strategy=None,
                     score=None) -> Optional[dict]:
    """Re-optimise ``mad.flagged_labels`` from ``config.confirm_seeds`` fresh starts -> label -> [A]
    (None when there is nothing to confirm). ``score(engine_result) -> [A]`` scores triggers.

    All fresh starts of all flagged labels run as one search (``TriggerEngine(start_seeds=...)``:
    one compiled step, every start's images in one forward pass): start ``j`` takes its initial
    trigger and its batch order from seed ``seed + 1 + j``, so it is the search a scan with that
    seed would run for the label (up to float noise), as when each seed ran alone. One search
    instead of one per seed halves the confirmation's wall time on a CPU, where a step of one or
    two labels is dominated by per-step overhead and each new search compiles its step
    (``benchmarks/confirm_speed.py``)."""
    from .engine import TriggerEngine

    labels = list(mad.flagged_labels)
    if not labels or int(config.confirm_seeds) <= 0:
        return None
    seeds = confirm_seeds(seed, int(config.confirm_seeds))
    starts = [lab for _ in seeds for lab in labels]
    engine = TriggerEngine(victim.logits, x, y_ref, starts, config, preprocess=mode, seed=seeds[0],
                           strategy=strategy, start_seeds=[s for s in seeds for _ in labels])
    out = {lab: [] for lab in labels}
    for lab, a in zip(starts, score(engine.run())):  # seed by seed, so each list is in seed order
        out[lab].append(float(a))
    return out
