"""Settings of the Neural Cleanse baseline: ``NCConfig`` and the two presets of the reference.

``gtsrb``               the authors' example script (``gtsrb_visualize_example.py``)
``reference-defaults``  the defaults of the reference ``Visualizer`` class
``gtsrb-scheduled-unfaithful``  NOT the reference algorithm: ``gtsrb`` with the budget scheduler
                        (``scheduler="retire"``, see ``detector.py``), for quick looks only
Both share lr 0.1, Adam betas 0.5 / 0.9, batch 32, 1000 // 32 = 31 mini-batches per step,
1000 steps, init_cost 1e-3, attack-success threshold 0.99, cost starting at zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from tabor_tf.errors import TaborError
from tabor_tf.settings import with_overrides

from .schedule import ScheduleSettings

REGULARIZATIONS = ("l1", "l2")
# "softmax_ce": softmax cross-entropy of the target label (what the paper and the spec describe).
# "reference_keras22": the loss the reference code actually computed. It calls Keras 2.2's
#   categorical_crossentropy(model_output, y_true) with the arguments swapped, which evaluates
#   -sum_k p_k * log(clip(onehot_k, eps, 1 - eps)) ~= -log(eps) * (1 - p_target)
#   (bolunwang/backdoor issue #11).
CE_FORMS = ("softmax_ce", "reference_keras22")
# What the MAD test runs on. "l1": the float L1 norm of the best mask. "l1_png8": the L1 norm
# the reference's mad_outlier_detection.py read back from the 8-bit mask PNG (floor(255 m) / 255).
MAD_SCORES = ("l1", "l1_png8")


@dataclass(frozen=True)
class NCConfig:
    """Every parameter of one Neural Cleanse scan (defaults = the ``gtsrb`` preset)."""

    init_cost: float = 1e-3
    steps: int = 1000
    mini_batch: int = 1000 // 32  # batches per step (NB_SAMPLE // BATCH_SIZE)
    batch_size: int = 32
    lr: float = 0.1
    beta_1: float = 0.5
    beta_2: float = 0.9
    attack_success_threshold: float = 0.99
    patience: int = 5
    cost_multiplier: float = 2.0  # up: x m, down: / m ** 1.5
    reset_cost_to_zero: bool = True
    early_stop: bool = True
    early_stop_threshold: float = 1.0
    early_stop_patience: int = 25
    regularization: str = "l1"
    upsample_size: int = 1
    mad_threshold: float = 2.0
    suspected_target: Optional[int] = None
    ce_form: str = "softmax_ce"
    mad_score: str = "l1"
    # Budget scheduler, NOT part of Neural Cleanse (default "none" = faithful). "retire": every label
    # first runs at most scheduler_warmup_steps steps; labels whose L1 is >= median + margin * MAD of
    # those warm-up norms keep their warm-up trigger, the others are re-run in full (detector.py).
    scheduler: str = "none"
    scheduler_warmup_steps: int = 100
    scheduler_margin: float = 1.5
    scheduler_max_fraction: float = 0.45
    preset: str = "gtsrb"

    def __post_init__(self):
        ints = ("steps", "mini_batch", "batch_size", "patience", "early_stop_patience", "upsample_size")
        for name in ints:
            if int(getattr(self, name)) < 1:
                raise TaborError(f"Neural Cleanse setting {name} must be >= 1, got {getattr(self, name)}")
        if self.regularization not in REGULARIZATIONS:
            raise TaborError(f"regularization must be one of {REGULARIZATIONS}, got {self.regularization!r}")
        if self.ce_form not in CE_FORMS:
            raise TaborError(f"ce_form must be one of {CE_FORMS}, got {self.ce_form!r}")
        if self.mad_score not in MAD_SCORES:
            raise TaborError(f"mad_score must be one of {MAD_SCORES}, got {self.mad_score!r}")
        if not self.lr > 0 or not self.init_cost >= 0 or not self.cost_multiplier > 0:
            raise TaborError("lr and cost_multiplier must be > 0 and init_cost >= 0")
        if not 0.0 <= self.attack_success_threshold <= 1.0:
            raise TaborError("attack_success_threshold must be in [0, 1]")
        if self.scheduler not in ("none", "retire"):
            raise TaborError(f"scheduler must be 'none' (faithful) or 'retire', got {self.scheduler!r}")
        if int(self.scheduler_warmup_steps) < 1 or not self.scheduler_margin >= 0 \
                or not 0 <= self.scheduler_max_fraction < 0.5:
            raise TaborError("scheduler settings need warmup_steps >= 1, margin >= 0, 0 <= max_fraction < 0.5")

    def schedule(self) -> ScheduleSettings:
        return ScheduleSettings(
            init_cost=float(self.init_cost),
            attack_success_threshold=float(self.attack_success_threshold),
            patience=int(self.patience),
            cost_multiplier=float(self.cost_multiplier),
            reset_cost_to_zero=bool(self.reset_cost_to_zero),
            early_stop=bool(self.early_stop),
            early_stop_threshold=float(self.early_stop_threshold),
            early_stop_patience=int(self.early_stop_patience),
        )

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "gtsrb": NCConfig(),
    "reference-defaults": NCConfig(
        patience=10,
        cost_multiplier=1.5,
        early_stop_threshold=0.99,
        early_stop_patience=20,  # 2 * patience
        preset="reference-defaults",
    ),
    "gtsrb-scheduled-unfaithful": NCConfig(scheduler="retire", preset="gtsrb-scheduled-unfaithful"),
}


def preset(name: str = "gtsrb", **overrides) -> NCConfig:
    """The named preset with ``overrides`` applied (any ``NCConfig`` field)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise TaborError(f"unknown Neural Cleanse preset {name!r}; choose one of {', '.join(PRESETS)}")
    return with_overrides(PRESETS[key], overrides, "Neural Cleanse")
