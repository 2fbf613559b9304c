"""Simulator pieces the benchmark uses: length distributions, homogeneous baselines, Gantt."""

from __future__ import annotations

import numpy as np
import pytest

from hetero_sp.planner import PlannerConfig, plan_batch, validate_plan
from hetero_sp.planner.gantt import draw_gantt
from hetero_sp.planner.simulate import (
    DISTRIBUTIONS,
    homogeneous_plan,
    milp_bound,
    sample_lengths,
    step_lower_bound,
)
from tests.planner_common import synthetic_cost


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_long_tailed_lengths(name):
    dist = DISTRIBUTIONS[name]
    a = sample_lengths(dist, 4000, np.random.default_rng(5), max_len=100_000)
    assert a == sample_lengths(dist, 4000, np.random.default_rng(5), max_len=100_000)
    assert min(a) >= 16 and max(a) <= 100_000
    assert np.mean(np.array(a) < 8192) > 0.8  # most documents are short
    assert max(a) > 30_000  # and a tail


def test_homogeneous_baselines_are_valid_plans():
    cost = synthetic_cost(4, tokens_per_gpu=1000)
    lengths = [1800, 900, 400, 300, 200, 100, 50]
    for d in (2, 4):
        plan = homogeneous_plan(lengths, cost, d)
        validate_plan(plan, cost)
        assert {g.size for mb in plan.micro_batches for g in mb.groups if g.sequences} == {d}
    assert homogeneous_plan(lengths, cost, 1) is None  # 1800 tokens do not fit one GPU


def test_bounds_and_gantt(tmp_path):
    cost = synthetic_cost(8, tokens_per_gpu=1000)
    lengths = [3000, 1200, 800] + [100] * 30
    plan = plan_batch(lengths, cost, PlannerConfig(time_limit_s=0.3, min_time_limit_s=0.05))
    assert plan.predicted_step_s >= step_lower_bound(lengths, cost) * (1 - 1e-9)
    # Four distinct lengths in at most 16 buckets: every bucket holds one length, so the MILP
    # prices sequences exactly and its proven bound is a bound on any plan of this split (up
    # to HiGHS's feasibility tolerance, 1e-7 s on a load row, when it proves the plan optimal).
    assert {mb.solver.num_buckets for mb in plan.micro_batches} <= {1, 2, 3, 4}
    assert 0 < milp_bound(plan) <= plan.predicted_step_s * (1 + 1e-6)
    assert any(mb.solver.bound_s is not None for mb in plan.micro_batches)
    path = draw_gantt(plan, cost, tmp_path / "gantt.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
