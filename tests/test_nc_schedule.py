"""Neural Cleanse's cost schedule / early stop / best mask, against sequences worked out by hand."""

import math

import pytest

from neural_cleanse_baseline import preset
from neural_cleanse_baseline.schedule import ScheduleSettings, initial_state, update

S, F = 1.0, 0.5  # a successful step (acc >= 0.99) and a failed one


def run(settings, steps):
    """Feed (acc, reg) pairs; return the list of (state, actions) after each step."""
    state = initial_state(settings)
    out = []
    for acc, reg in steps:
        state, actions = update(state, settings, acc, reg)
        out.append((state, actions))
    return out


def test_cost_starts_at_zero_and_is_set_after_patience_successes():
    st = ScheduleSettings(init_cost=1e-3, patience=3, cost_multiplier=2.0, early_stop=False)
    assert initial_state(st).cost == 0.0
    trace = run(st, [(S, 50.0)] * 5)
    costs = [s.cost for s, _ in trace]
    # steps 1-2 count towards the start; step 3 sets init_cost (and the up counter restarts at 1);
    # steps 4-5 bring the up counter to 3 = patience -> cost doubles on step 5
    assert costs == [0.0, 0.0, 1e-3, 1e-3, 2e-3]
    assert [a.cost_event for _, a in trace] == ["", "", "start", "", "up"]
    s3 = trace[2][0]
    assert (s3.cost_set_counter, s3.cost_up_counter, s3.cost_up_flag) == (3, 1, False)
    assert trace[4][0].cost_up_flag and trace[4][0].cost_up_counter == 0


def test_a_failure_restarts_the_cost_start_count():
    st = ScheduleSettings(init_cost=1e-3, patience=3, early_stop=False)
    trace = run(st, [(S, 9.0), (S, 9.0), (F, 9.0), (S, 9.0), (S, 9.0), (S, 9.0)])
    assert [s.cost for s, _ in trace] == [0.0] * 5 + [1e-3]
    assert [s.cost_set_counter for s, _ in trace] == [1, 2, 0, 1, 2, 3]


def test_cost_goes_down_by_multiplier_to_the_1_5_after_patience_failures():
    st = ScheduleSettings(init_cost=1e-2, patience=2, cost_multiplier=2.0, reset_cost_to_zero=False,
                          early_stop=False)
    assert initial_state(st).cost == 1e-2
    trace = run(st, [(F, 9.0), (F, 9.0), (S, 9.0), (F, 9.0), (F, 9.0)])
    down = 2.0 ** 1.5
    assert [s.cost for s, _ in trace] == pytest.approx([1e-2, 1e-2 / down, 1e-2 / down, 1e-2 / down, 1e-2 / down**2])
    assert [a.cost_event for _, a in trace] == ["", "down", "", "", "down"]
    assert trace[1][0].cost_down_flag and not trace[1][0].cost_up_flag
    # the success on step 3 reset the down counter, so step 4 alone did not lower the cost
    assert trace[3][0].cost_down_counter == 1


def test_success_and_failure_counters_reset_each_other():
    st = ScheduleSettings(init_cost=1.0, patience=3, cost_multiplier=1.5, reset_cost_to_zero=False,
                          early_stop=False)
    trace = run(st, [(S, 1), (S, 1), (F, 1), (S, 1), (S, 1), (S, 1)])
    assert [(s.cost_up_counter, s.cost_down_counter) for s, _ in trace] == [
        (1, 0), (2, 0), (0, 1), (1, 0), (2, 0), (0, 0)]
    assert trace[-1][0].cost == pytest.approx(1.5)


def test_best_mask_needs_threshold_and_a_strictly_smaller_norm():
    st = ScheduleSettings(attack_success_threshold=0.99, early_stop=False)
    trace = run(st, [(0.98, 5.0), (0.99, 40.0), (1.0, 30.0), (1.0, 30.0), (0.5, 1.0), (0.995, 29.9)])
    assert [a.save_best for _, a in trace] == [False, True, True, False, False, True]
    assert [s.reg_best for s, _ in trace] == [math.inf, 40.0, 30.0, 30.0, 30.0, 29.9]


def test_early_stop_only_after_both_cost_flags_and_the_patience():
    st = ScheduleSettings(init_cost=1.0, patience=1, cost_multiplier=2.0, reset_cost_to_zero=False,
                          early_stop=True, early_stop_threshold=1.0, early_stop_patience=2)
    trace = run(st, [(S, 10.0), (S, 10.0), (F, 10.0), (S, 10.0), (S, 10.0)])
    # step 1: best 10, counter stays 0 (10 >= 1.0 * inf is false), cost up -> up flag
    # step 2: no improvement -> counter 1; cost up again
    # step 3: counter 2 >= patience but the down flag is not set yet -> no stop; cost down
    # step 4: counter 3, both flags set -> stop, and the cost is left alone
    assert [s.early_stop_counter for s, _ in trace[:4]] == [0, 1, 2, 3]
    assert [a.stop for _, a in trace[:4]] == [False, False, False, True]
    assert [s.cost for s, _ in trace[:4]] == pytest.approx([2.0, 4.0, 4.0 / 2**1.5, 4.0 / 2**1.5])
    assert trace[3][0].step == 4 and trace[3][1].cost_event == ""


def test_early_stop_counter_waits_for_a_valid_mask_and_resets_on_improvement():
    st = ScheduleSettings(init_cost=1.0, patience=100, reset_cost_to_zero=False, early_stop=True,
                          early_stop_threshold=0.99, early_stop_patience=3)
    trace = run(st, [(F, 5.0), (F, 5.0), (S, 10.0), (S, 9.95), (S, 9.8), (S, 9.79)])
    # no valid mask for two steps: counter untouched. Then best 10 (counter 0, es_best 10);
    # 9.95 >= 0.99 * 10 -> no real improvement (counter 1), es_best 9.95;
    # 9.8 < 0.99 * 9.95 = 9.8505 -> improvement (counter 0); 9.79 >= 0.99 * 9.8 -> counter 1
    assert [s.early_stop_counter for s, _ in trace] == [0, 0, 0, 1, 0, 1]
    assert [s.early_stop_reg_best for s, _ in trace] == [math.inf, math.inf, 10.0, 9.95, 9.8, 9.79]
    assert not any(a.stop for _, a in trace)


def test_early_stop_off_never_stops():
    st = ScheduleSettings(init_cost=1.0, patience=1, reset_cost_to_zero=False, early_stop=False,
                          early_stop_patience=1)
    trace = run(st, [(S, 1.0), (F, 1.0)] * 10)
    assert not any(a.stop for _, a in trace)
    assert trace[-1][0].early_stop_counter == 0


def test_gtsrb_preset_numbers_drive_the_schedule():
    cfg = preset("gtsrb")
    st = cfg.schedule()
    assert (st.patience, st.cost_up, st.cost_down) == (5, 2.0, 2.0**1.5)
    assert (st.early_stop_threshold, st.early_stop_patience, st.init_cost) == (1.0, 25, 1e-3)
    # always successful with a constant norm: cost set on step 5, doubled every 5 steps after;
    # the down flag is never set, so the search never stops early
    trace = run(st, [(1.0, 20.0)] * 40)
    costs = [s.cost for s, _ in trace]
    assert costs[3] == 0.0 and costs[4] == 1e-3
    assert costs[9] == pytest.approx(2e-3) and costs[14] == pytest.approx(4e-3)
    assert costs[39] == pytest.approx(1e-3 * 2**7)
    assert not any(a.stop for _, a in trace)
    # then alternating failures set the down flag; the stale best norm stops the run
    state = trace[-1][0]
    stopped_at = None
    for i in range(200):
        state, actions = update(state, st, 0.0, 20.0)
        if actions.stop:
            stopped_at = i + 1
            break
    # down flag set after 5 failures; the counter (already >= 25 after 40 stale steps) stops it next
    assert stopped_at == 6


def test_reference_defaults_preset():
    st = preset("reference-defaults").schedule()
    assert (st.patience, st.cost_up, st.early_stop_threshold, st.early_stop_patience) == (10, 1.5, 0.99, 20)
    assert st.cost_down == pytest.approx(1.5**1.5)
