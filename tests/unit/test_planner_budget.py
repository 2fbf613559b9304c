"""``time_limit_s`` is a wall-clock budget for the whole step: MILP rounds are scheduled to end
by the deadline (only the step's first round may take ``min_time_limit_s`` past it) and local
search stops at it."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

from hetero_sp.planner import (
    CostModel,
    PlannerConfig,
    assign,
    milp,
    plan_batch,
    solve,
    solve_microbatch,
    validate_plan,
)
from hetero_sp.planner.errors import PlanError
from hetero_sp.planner.estimate import h100_estimate
from hetero_sp.planner.simulate import DISTRIBUTIONS, sample_lengths
from tests.planner_common import synthetic_cost

LIMIT, FLOOR = 0.2, 0.05


def _many_micro_batches():
    # 400 lengths up to 1.9 GPUs of memory on 16 GPUs with slow links: 35 micro-batches, most
    # of which need a MILP. Planned without a step budget (a floor per micro-batch and round)
    # this took 1.6 s of wall clock here for a 0.2 s limit.
    cost = synthetic_cost(16, 1000, fit=dict(intra_bw=1e7, inter_bw=1e6))
    lengths = [int(x) for x in np.random.default_rng(0).integers(50, 1900, 400)]
    return cost, lengths


def test_milp_rounds_end_by_the_step_deadline(monkeypatch):
    calls = []
    solve = solve_microbatch.solve_milp

    def recording(*args, time_limit_s, **kwargs):
        calls.append((time.perf_counter(), time_limit_s))
        return solve(*args, time_limit_s=time_limit_s, **kwargs)

    monkeypatch.setattr(solve_microbatch, "solve_milp", recording)
    cost, lengths = _many_micro_batches()
    # passes off: many micro-batches are the point here
    options = PlannerConfig(time_limit_s=LIMIT, min_time_limit_s=FLOOR, rel_gap=0.0, passes=False)
    start = time.perf_counter()
    plan = plan_batch(lengths, cost, options)
    validate_plan(plan, cost)
    assert len(plan.micro_batches) > 10 and calls
    assert all(limit >= FLOOR for _, limit in calls)
    # The budget starts a few microseconds after ``start``; 10 ms covers that, far less than the
    # floor each late round used to get.
    for called, limit in calls[1:]:
        assert called + limit <= start + LIMIT + 0.01
    # Past the deadline, micro-batches keep their homogeneous plan and say why.
    assert any(
        mb.solver.note == "no planning time left for MILP round 1" for mb in plan.micro_batches
    )


def test_a_step_finishes_near_its_time_limit():
    cost, lengths = _many_micro_batches()
    options = PlannerConfig(time_limit_s=LIMIT, min_time_limit_s=FLOOR, rel_gap=0.0)
    start = time.perf_counter()
    plan_batch(lengths, cost, options)
    wall = time.perf_counter() - start
    # Generous, for a loaded machine: bucketing and the homogeneous fall-back of the 35
    # micro-batches always run (0.1 s on an idle core here), and one round may use the floor.
    assert wall < 3 * LIMIT + 0.9, wall


def test_local_search_stops_at_the_deadline():
    cost = synthetic_cost(4, 5000)
    lengths = np.array([900, 800, 700, 600, 500, 400, 300, 200])
    spread = assign.Packing(lengths, cost, [1, 1, 1, 1])
    for i in range(len(lengths)):
        spread.add(i, 0)  # everything on one group: local search has work to do
    before = spread.makespan
    spread.improve(300, deadline=time.perf_counter() - 1.0)
    assert spread.makespan == before
    spread.improve(300, deadline=time.perf_counter() + 60.0)
    assert spread.makespan < before / 2


def test_the_collector_is_paused_while_planning_and_restored_after(monkeypatch):
    # A full collection in a process holding torch took 0.22 s, half a step's budget.
    seen = []
    plan_one = solve.plan_micro_batch

    def recording(*args, **kwargs):
        seen.append(gc.isenabled())
        return plan_one(*args, **kwargs)

    monkeypatch.setattr(solve, "plan_micro_batch", recording)
    cost = synthetic_cost(4, 1000)
    options = PlannerConfig(time_limit_s=LIMIT, min_time_limit_s=FLOOR)
    assert gc.isenabled()
    plan_batch([900, 700, 500, 300], cost, options)
    assert seen and not any(seen)
    assert gc.isenabled()
    with pytest.raises(PlanError):  # an error restores it too
        plan_batch([10**9], cost, options)
    assert gc.isenabled()
    gc.disable()  # a caller who turned it off keeps it off
    try:
        plan_batch([900, 700], cost, options)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_round_limit_counts_building_the_model(monkeypatch):
    limits = []
    make = milp.make_solver

    def recording(name, time_limit_s, rel_gap, threads):
        limits.append(time_limit_s)
        return make(name, time_limit_s, rel_gap, threads)

    monkeypatch.setattr(milp, "make_solver", recording)
    cost, lengths = _many_micro_batches()
    options = PlannerConfig(time_limit_s=LIMIT, min_time_limit_s=FLOOR, passes=False)
    calls = []
    solve_one = solve_microbatch.solve_milp

    def given(*args, time_limit_s, **kwargs):
        calls.append(time_limit_s)
        return solve_one(*args, time_limit_s=time_limit_s, **kwargs)

    monkeypatch.setattr(solve_microbatch, "solve_milp", given)
    plan_batch(lengths, cost, options)
    assert calls and len(limits) == len(calls)
    for solver_s, round_s in zip(limits, calls):
        # the solver gets what building left of the round, a quarter of it at least
        assert 0.25 * round_s <= solver_s < round_s


def test_a_late_micro_batch_tries_few_single_kind_layouts(monkeypatch):
    # 25 kinds at 64 GPUs: a micro-batch planned after the deadline tries the best by bound
    # within about 1,024 placements (here 200 sequences: 6 kinds), with the proportional layout.
    profile = h100_estimate()
    cost = CostModel(profile, profile.topology(64), zero_stage=3)
    lengths = sample_lengths(DISTRIBUTIONS["web"], 200, np.random.default_rng(1), 40_000)
    tried = []
    single = assign.homogeneous

    def recording(lengths, cost, kind, *args, **kwargs):
        tried.append(kind)
        return single(lengths, cost, kind, *args, **kwargs)

    monkeypatch.setattr(assign, "homogeneous", recording)
    arr = np.asarray(lengths)
    now = time.perf_counter()
    mb = solve_microbatch._late_micro_batch(
        arr, list(range(len(arr))), cost, PlannerConfig(), 0.0, now, now + 1.0
    )
    assert len(cost.kinds) == 25 and 1 <= len(tried) <= 6
    assert tried == solve_microbatch._kinds_by_bound(arr, cost)[: len(tried)]
    assert sorted(i for g in mb.groups for i in g.sequences) == list(range(len(arr)))
    assert mb.makespan_s == max(g.predicted_s for g in mb.groups)


def test_a_late_micro_batch_gets_a_short_local_search_within_the_steps_allowance(monkeypatch):
    # 150 encyclopedic-like documents at 256 GPUs that the GPUs' memory holds: the local
    # search takes the best late layout lower (here 2.2446 s -> 2.2443 s) in a few ms, never
    # past the end it is given; a step's late searches together end 5% of the limit after
    # the deadline.
    profile = h100_estimate()
    cost = CostModel(profile, profile.topology(256), zero_stage=3)
    cut = cost.capacity(cost.sizes[-1]) // 4
    drawn = np.asarray(
        sample_lengths(DISTRIBUTIONS["encyclopedic"], 4000, np.random.default_rng(1), cut)
    )
    held = drawn[np.cumsum(drawn) <= 0.85 * solve._memory_room(cost, cost.sizes)][:150]
    index = list(range(len(held)))
    options = PlannerConfig()
    now = time.perf_counter()
    searched = solve_microbatch._late_micro_batch(held, index, cost, options, 0.0, now, now + 1)
    monkeypatch.setattr(solve_microbatch, "_LATE_SEARCH_S", 0.0)
    now = time.perf_counter()
    plain = solve_microbatch._late_micro_batch(held, index, cost, options, 0.0, now, now + 1)
    assert len(held) == 150
    assert searched.makespan_s < plain.makespan_s * (1 - 1e-5)
    budget = solve_microbatch.StepBudget(PlannerConfig(time_limit_s=0.4))
    assert budget.late_search_end == pytest.approx(budget.deadline + 0.02)


def test_past_the_late_allowance_a_micro_batch_takes_the_first_single_kind_layout(monkeypatch):
    # Once the step's late searches have used their allowance, a late micro-batch tries the
    # single-kind layouts best bound first and keeps the first that holds it: no proportional
    # layout, no search.
    profile = h100_estimate()
    cost = CostModel(profile, profile.topology(64), zero_stage=1)
    cut = cost.capacity(8)
    lengths = np.asarray(sample_lengths(DISTRIBUTIONS["code"], 30, np.random.default_rng(2), cut))
    tried, single = [], assign.homogeneous

    def recording(lengths, cost, kind, *args, **kwargs):
        out = single(lengths, cost, kind, *args, **kwargs)
        tried.append((kind, out is not None))
        return out

    def no_proportional(*args, **kwargs):
        raise AssertionError("the proportional layout was tried past the allowance")

    monkeypatch.setattr(assign, "homogeneous", recording)
    monkeypatch.setattr(assign, "proportional", no_proportional)
    now = time.perf_counter()
    index = list(range(len(lengths)))
    mb = solve_microbatch._late_micro_batch(lengths, index, cost, PlannerConfig(), 0.0, now, now)
    kinds = solve_microbatch._kinds_by_bound(lengths, cost)
    assert [k for k, _ in tried] == kinds[: len(tried)]
    assert [ok for _, ok in tried] == [False] * (len(tried) - 1) + [True]
    assert sorted(i for g in mb.groups for i in g.sequences) == index
    used = {(g.size, g.softmax_strategy, g.linear_strategy) for g in mb.groups if g.sequences}
    last = tried[-1][0]
    assert used == {(last.size, last.softmax_strategy, last.linear_strategy)}
