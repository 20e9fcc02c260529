"""Two-stage TABOR scan: screen every label with the real metric, then spend the budget where a
verdict can still change.

Stage 1 runs every label for ``screen_rounds`` rounds and scores the kept triggers with the
quality metric A (``detector.score_triggers``). Stage 2 continues only the labels that can still
matter to the MAD test; the others keep their screened trigger ("screened out").

Which labels can matter. A label is flagged when ``A <= median`` and ``(median - A) / MAD >
threshold``. With ``s`` screened-out labels that all lie above the median, both in this scan and in
the full-budget one, and ``s < K / 2``, the median is the score of a label that ran the full budget
in both, so it is the same; the flagged labels are among those that ran the full budget; and the
MAD (of the lower half, ``side="low"``, from 20 labels up) does not see the labels above the
median at all. So screening out labels that stay above the median cannot change the verdict. A
label is screened out when its A is above ``median + keep_margin * MAD`` at the screen (and it
reached the attack threshold phi there, so it is not a large trigger still growing), at most
``max_fraction`` of all labels, the highest scores first. ``keep_margin`` is the slack for a label
that would have dropped below the median in the rest of the full run; measured on the dev half of
the evaluation zoo (``benchmarks/stopping_rules.py``, docs/TABOR_CHOICES.md "Two-stage scan").

The argument needs the low-side MAD, so ``detector.scan`` runs two stages only where the decision
uses it (``mad_side`` "low": from 20 candidate labels up); with fewer labels the scan is short
anyway and runs one stage. Pure numpy; ``detector.scan`` drives the two stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tabor_tf.outliers import CONSISTENCY as MAD_CONSISTENCY


@dataclass(frozen=True)
class TwoStageSettings:
    """``screen_rounds``: rounds every label runs before the screen; ``keep_margin``: screened-out
    labels lie above ``median + keep_margin * MAD`` of A; ``max_fraction``: at most this share of
    the labels is screened out (< 0.5, so the median is a label that ran the full budget);
    ``protect``: the top ``protect`` labels of the logit pre-screen are never screened out."""

    screen_rounds: int = 10
    keep_margin: float = 1.0
    max_fraction: float = 0.45
    protect: int = 0

    def __post_init__(self):
        if int(self.screen_rounds) < 1:
            raise ValueError(f"screen_rounds must be >= 1, got {self.screen_rounds}")
        if not self.keep_margin >= 0:
            raise ValueError(f"keep_margin must be >= 0, got {self.keep_margin}")
        if not 0 <= self.max_fraction < 0.5:
            raise ValueError(f"max_fraction must be in [0, 0.5), got {self.max_fraction}")
        if int(self.protect) < 0:
            raise ValueError(f"protect must be >= 0, got {self.protect}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config) -> "TwoStageSettings":
        return cls(int(config.screen_rounds), float(config.screen_margin), float(config.screen_max_fraction),
                   int(getattr(config, "screen_protect", 0)))


def screen_keep(scores, done, reached, settings: TwoStageSettings, side: str = "low",
                protected=None) -> np.ndarray:
    """``[K]`` A at the screen, ``[K]`` bool already stopped, ``[K]`` bool reached phi -> ``[K]``
    bool: the label runs on in stage 2 (stopped labels are kept as they are: True).

    The MAD is taken as the decision will take it (``side``: ``low`` = deviations of the scores at
    or below the median, ``both`` = all), scaled by 1.4826. ``protected [K]`` bool: labels never
    screened out (the top of the logit pre-screen, ``prescreen.py``).
    """
    a = np.asarray(scores, np.float64)
    done = np.asarray(done, bool)
    reached = np.asarray(reached, bool)
    k = len(a)
    keep = np.ones(k, bool)
    if k == 0:
        return keep
    median = float(np.median(a))
    dev = np.abs(a - median)
    if side == "low":
        dev = dev[a <= median]
    mad = MAD_CONSISTENCY * float(np.median(dev)) if len(dev) else 0.0
    line = median + float(settings.keep_margin) * mad
    shielded = np.zeros(k, bool) if protected is None else np.asarray(protected, bool)
    candidates = np.flatnonzero((a > line) & reached & ~done & ~shielded)
    cap = int(np.floor(float(settings.max_fraction) * k))
    candidates = candidates[np.argsort(-a[candidates], kind="stable")][:cap]
    keep[candidates] = False
    return keep
