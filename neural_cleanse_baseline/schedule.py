"""Neural Cleanse's cost schedule, early stop and best-mask bookkeeping as a pure state machine.

Plain Python (no TensorFlow), evaluated once per optimisation step on the step's averages
(mean attack accuracy over all images of the step's mini-batches, mean mask norm over its
batches). ``update`` applies the reference's per-step order exactly:

    1. best result   acc >= threshold and reg < reg_best  -> keep the current mask, reg_best = reg
    2. early stop    counter against early_stop_threshold * early_stop_reg_best; stop once both
                     cost flags are set and the counter reaches early_stop_patience
                     (a stopped step skips 3 and 4, as the reference ``break``s there)
    3. cost start    cost == 0 and acc >= threshold for ``patience`` steps -> cost = init_cost,
                     up/down counters and flags reset
    4. cost adjust   ``patience`` successes in a row -> cost *= m (up flag);
                     ``patience`` failures in a row   -> cost /= m ** 1.5 (down flag)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ScheduleSettings:
    """The numbers the schedule needs (a subset of ``NCConfig``)."""

    init_cost: float = 1e-3
    attack_success_threshold: float = 0.99
    patience: int = 5
    cost_multiplier: float = 2.0
    reset_cost_to_zero: bool = True
    early_stop: bool = True
    early_stop_threshold: float = 1.0
    early_stop_patience: int = 25

    @property
    def cost_up(self) -> float:
        return float(self.cost_multiplier)

    @property
    def cost_down(self) -> float:
        return float(self.cost_multiplier) ** 1.5


@dataclass(frozen=True)
class ScheduleState:
    """Counters and flags between steps. ``step`` counts finished steps."""

    cost: float
    reg_best: float = math.inf
    cost_set_counter: int = 0
    cost_up_counter: int = 0
    cost_down_counter: int = 0
    cost_up_flag: bool = False
    cost_down_flag: bool = False
    early_stop_counter: int = 0
    early_stop_reg_best: float = math.inf
    step: int = 0


@dataclass(frozen=True)
class StepActions:
    """What the optimiser loop must do after a step.

    ``save_best``: copy the current mask and pattern as the best result.
    ``stop``: early stop now (the step's cost changes were not applied).
    ``cost_event``: "", "start", "up" or "down" (the cost change made this step; "start"
    may be followed by "up" in the same step, then it reads "start+up").
    """

    save_best: bool = False
    stop: bool = False
    cost_event: str = ""


def initial_state(settings: ScheduleSettings) -> ScheduleState:
    """State before the first step: cost 0 when ``reset_cost_to_zero`` else ``init_cost``."""
    return ScheduleState(cost=0.0 if settings.reset_cost_to_zero else float(settings.init_cost))


def update(
    state: ScheduleState, settings: ScheduleSettings, mean_acc: float, mean_reg: float
) -> tuple[ScheduleState, StepActions]:
    """One step of the schedule on the step's mean attack accuracy and mean mask norm."""
    s = settings
    success = float(mean_acc) >= s.attack_success_threshold
    reg_best = state.reg_best
    save_best = False
    # 1. best result
    if success and float(mean_reg) < reg_best:
        reg_best = float(mean_reg)
        save_best = True

    # 2. early stop
    es_counter = state.early_stop_counter
    es_reg_best = state.early_stop_reg_best
    if s.early_stop:
        if reg_best < math.inf:
            if reg_best >= s.early_stop_threshold * es_reg_best:
                es_counter += 1
            else:
                es_counter = 0
        es_reg_best = min(reg_best, es_reg_best)
        if state.cost_down_flag and state.cost_up_flag and es_counter >= s.early_stop_patience:
            stopped = replace(
                state,
                reg_best=reg_best,
                early_stop_counter=es_counter,
                early_stop_reg_best=es_reg_best,
                step=state.step + 1,
            )
            return stopped, StepActions(save_best=save_best, stop=True)

    cost = state.cost
    set_counter = state.cost_set_counter
    up_counter, down_counter = state.cost_up_counter, state.cost_down_counter
    up_flag, down_flag = state.cost_up_flag, state.cost_down_flag
    events = []

    # 3. cost start
    if cost == 0 and success:
        set_counter += 1
        if set_counter >= s.patience:
            cost = float(s.init_cost)
            up_counter = down_counter = 0
            up_flag = down_flag = False
            events.append("start")
    else:
        set_counter = 0

    # 4. cost adjust
    if success:
        up_counter += 1
        down_counter = 0
    else:
        up_counter = 0
        down_counter += 1
    if up_counter >= s.patience:
        up_counter = 0
        cost *= s.cost_up
        up_flag = True
        events.append("up")
    elif down_counter >= s.patience:
        down_counter = 0
        cost /= s.cost_down
        down_flag = True
        events.append("down")

    new = ScheduleState(
        cost=cost,
        reg_best=reg_best,
        cost_set_counter=set_counter,
        cost_up_counter=up_counter,
        cost_down_counter=down_counter,
        cost_up_flag=up_flag,
        cost_down_flag=down_flag,
        early_stop_counter=es_counter,
        early_stop_reg_best=es_reg_best,
        step=state.step + 1,
    )
    return new, StepActions(save_best=save_best, stop=False, cost_event="+".join(events))
