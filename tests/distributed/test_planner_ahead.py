"""The run-ahead worker: the next step's plan is solved while the current step runs, every rank
gets rank 0's plan, errors reach every rank."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hetero_sp.planner import PlanAhead, Planner, PlannerConfig, broadcast_share
from tests.planner_common import synthetic_cost
from tests.rank_pool import run_ranks

FAST = PlannerConfig(time_limit_s=0.3, min_time_limit_s=0.05)


def _batches(num: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(10, 1500, 30)] for _ in range(num)]


def _same(a, b) -> bool:
    """Plans equal up to the solver's wall times."""
    strip = lambda p: [(mb.groups, mb.makespan_s) for mb in p.micro_batches]  # noqa: E731
    return strip(a) == strip(b)


def test_next_plan_is_solved_while_the_step_runs():
    planner = Planner(synthetic_cost(8, 1500), FAST)
    started, release = threading.Event(), threading.Event()

    def solve(lengths):
        started.set()
        # Finish only after the "training step" below has seen the solve running: with a
        # submit() that solved in place this would time out instead.
        if not release.wait(timeout=120):
            raise TimeoutError("the step never released the solver")
        return planner(lengths)

    batches = _batches(2)
    with PlanAhead(solve) as ahead:
        release.set()
        ahead.submit(0, batches[0])
        ahead.get(0)
        started.clear()
        release.clear()
        ahead.submit(1, batches[1])  # step 0 starts training right after this returns
        assert started.wait(timeout=120), "the solve of step 1 never started"
        release.set()
        step_end = time.perf_counter()  # step 0's work is over
        plan = ahead.get(1)
    timing = ahead.timings[1]
    assert timing.submitted <= timing.started < step_end <= timing.finished
    assert _same(plan, planner(batches[1]))


def test_solver_errors_reach_get():
    def solve(lengths):
        raise ValueError("no plan for you")

    with PlanAhead(solve) as ahead:
        ahead.submit(3, [10])
        with pytest.raises(ValueError, match="no plan for you"):
            ahead.get(3)


def test_misuse_is_refused():
    planner = Planner(synthetic_cost(2, 1000), FAST)
    with pytest.raises(ValueError, match="needs `share`"):
        PlanAhead(planner, is_solver=False)
    with PlanAhead(planner) as ahead:
        with pytest.raises(ValueError, match="step 5 was never submitted"):
            ahead.get(5)
        ahead.submit(1, [10, 20])
        with pytest.raises(ValueError, match="step 1 was already submitted"):
            ahead.submit(1, [10, 20])
        ahead.get(1)
    with pytest.raises(ValueError, match="closed"):
        ahead.submit(2, [10])


def _broadcast_plans(rank: int, world_size: int, batches, fail: bool):
    planner = Planner(synthetic_cost(world_size, 1500), FAST)

    def solve(lengths):
        if fail:
            raise ValueError("rank 0 could not plan")
        return planner(lengths)

    plans = []
    with PlanAhead(solve, is_solver=rank == 0, share=broadcast_share()) as ahead:
        ahead.submit(0, batches[0])
        for step in range(len(batches)):
            if step + 1 < len(batches):
                ahead.submit(step + 1, batches[step + 1])
            try:
                plans.append(ahead.get(step).to_json())
            except (ValueError, RuntimeError) as err:
                plans.append(f"{type(err).__name__}: {err}")
    return plans


def test_every_rank_gets_rank_zeros_plan():
    batches = _batches(3, seed=1)
    per_rank = run_ranks(_broadcast_plans, 2, batches, False)
    assert per_rank[0] == per_rank[1]
    assert all(p.startswith("{") for p in per_rank[0])


def test_a_failed_solve_fails_every_rank():
    per_rank = run_ranks(_broadcast_plans, 2, _batches(1), True)
    assert per_rank[0] == ["ValueError: rank 0 could not plan"]
    assert per_rank[1] == ["RuntimeError: rank 0 failed to plan: ValueError: rank 0 could not plan"]


def _refuse(lengths):
    raise ValueError(f"no plan for {len(lengths)} sequences")


def test_process_worker_returns_the_threads_plans_and_errors():
    # Solved to optimality (tiny batches, generous limit), so both workers must agree exactly.
    planner = Planner(synthetic_cost(4, 1500), PlannerConfig(time_limit_s=20.0))
    batches = [[int(x) for x in np.random.default_rng(s).integers(10, 1500, 6)] for s in range(3)]
    with PlanAhead(planner, worker="process") as ahead:
        for step, lengths in enumerate(batches):
            ahead.submit(step, lengths)
        plans = [ahead.get(step) for step in range(len(batches))]
    for plan, lengths in zip(plans, batches):
        assert _same(plan, planner(lengths))
        assert all(mb.solver.status != "time_limit" for mb in plan.micro_batches)
    with PlanAhead(_refuse, worker="process") as ahead:
        ahead.submit(0, [10, 20])
        with pytest.raises(ValueError, match="no plan for 2 sequences"):
            ahead.get(0)


def test_process_worker_needs_a_picklable_solve():
    with pytest.raises(ValueError, match="cannot be pickled.*worker='thread'"):
        PlanAhead(lambda lengths: None, worker="process")
    with pytest.raises(ValueError, match="worker 'fork' is unknown; allowed: thread, process"):
        PlanAhead(_refuse, worker="fork")


def _make_in_daemon(rank, world_size):
    with pytest.raises(ValueError, match="daemonic process .* use worker='thread'"):
        PlanAhead(_refuse, worker="process")
    return True


def test_process_worker_is_refused_in_a_daemonic_process():
    assert run_ranks(_make_in_daemon, 1) == [True]  # pool ranks are daemonic processes


def _pid(lengths):
    import os

    return os.getpid()


def test_process_worker_solves_in_another_process():
    import os

    with PlanAhead(_pid, worker="process") as ahead:
        ahead.submit(0, [1])
        ahead.submit(1, [2])
        pids = {ahead.get(0), ahead.get(1)}
    assert len(pids) == 1 and os.getpid() not in pids  # one worker process, kept across steps
