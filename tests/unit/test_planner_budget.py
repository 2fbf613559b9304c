"""``time_limit_s`` is a wall-clock budget for the whole step: MILP rounds are scheduled to end
by the deadline (only the step's first round may take ``min_time_limit_s`` past it) and local
search stops at it."""

from __future__ import annotations

import time

import numpy as np

from hetero_sp.planner import PlannerConfig, assign, plan_batch, solve_microbatch, validate_plan
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
