"""Simulated steps: long-tailed length distributions, the static and per-batch homogeneous
baselines, and lower bounds, all priced by the same cost model as the planner's plans.

Baselines are real plans (validated like the planner's): every group of one size, sequences
placed longest first with the same local search, micro-batches split by the same rule. So a
ratio between them and HeteroSP measures only the choice of groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hetero_sp.planner import assign
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.plan import MicroBatchPlan, Plan, SolverStats, validate_plan
from hetero_sp.planner.solve import split_micro_batches


@dataclass(frozen=True)
class LengthDistribution:
    """A lognormal body plus a ``tail_share`` of documents log-uniform in [tail_min, tail_max]:
    most documents short, a few very long."""

    name: str
    body_median: float
    body_sigma: float
    tail_share: float
    tail_min: int
    tail_max: int


DISTRIBUTIONS = {
    # Shapes after the corpora FlexSP and dataset-decomposition papers describe: web text is
    # short with a thin tail, code files have a heavier tail, encyclopedic articles sit between.
    "web": LengthDistribution("web", 900, 1.1, 0.03, 8192, 256 * 1024),
    "code": LengthDistribution("code", 1500, 1.3, 0.06, 8192, 1024 * 1024),
    "encyclopedic": LengthDistribution("encyclopedic", 2500, 0.9, 0.04, 8192, 512 * 1024),
}


def sample_lengths(
    dist: LengthDistribution, num: int, rng: np.random.Generator, max_len: int | None = None
) -> list[int]:
    """``num`` lengths; documents longer than ``max_len`` are cut to it (as a data pipeline cuts
    documents to the longest context the cluster can train)."""
    body = np.exp(rng.normal(np.log(dist.body_median), dist.body_sigma, num))
    tail = np.exp(rng.uniform(np.log(dist.tail_min), np.log(dist.tail_max), num))
    lengths = np.where(rng.random(num) < dist.tail_share, tail, body)
    cap = dist.tail_max if max_len is None else min(dist.tail_max, max_len)
    return [int(x) for x in np.clip(lengths, 16, cap)]


def homogeneous_plan(
    lengths: Sequence[int], cost: CostModel, size: int, improve_rounds: int = 300
) -> Plan | None:
    """Every micro-batch's groups all of ``size`` GPUs; None when a sequence does not fit."""
    if size not in cost.groups or max(lengths) > cost.groups[size].max_tokens:
        return None
    arr = np.asarray(lengths, dtype=np.int64)
    mbs = []
    for idx in split_micro_batches(lengths, cost, sizes=(size,)):
        pack = assign.homogeneous(arr[idx], cost, size, improve_rounds)
        if pack is None:
            return None
        stats = SolverStats(
            solver="homogeneous",
            status=f"size {size}",
            objective_s=None,
            bound_s=None,
            gap=None,
            solve_s=0.0,
            num_buckets=0,
            token_error=0.0,
        )
        mbs.append(
            MicroBatchPlan(
                groups=assign.group_plans(pack, idx),
                makespan_s=pack.makespan,
                lower_bound_s=cost.lower_bound(arr[idx]),
                solver=stats,
            )
        )
    plan = Plan(
        world_size=cost.topology.num_gpus,
        lengths=tuple(int(s) for s in lengths),
        micro_batches=tuple(mbs),
        memory_limit_bytes=cost.memory_limit_bytes,
    )
    validate_plan(plan, cost)
    return plan


def homogeneous_times(lengths: Sequence[int], cost: CostModel) -> dict[int, float]:
    """Predicted step time of the homogeneous plan of every size that fits the batch."""
    out = {}
    for d in cost.sizes:
        plan = homogeneous_plan(lengths, cost, d)
        if plan is not None:
            out[d] = plan.predicted_step_s
    return out


def step_lower_bound(lengths: Sequence[int], cost: CostModel) -> float:
    """A bound no plan beats, however it splits micro-batches: total GPU-seconds at each
    sequence's cheapest group size / GPUs, or the slowest single sequence."""
    return cost.lower_bound(lengths)


def milp_bound(plan: Plan) -> float:
    """Sum over micro-batches of the solver's proven bound (over bucketed lengths, given the
    micro-batch split); a micro-batch solved without the MILP contributes its lower bound.

    A bound on the plan's predicted time when every bucket holds one distinct length; coarser
    buckets price sequences at their bucket's mean, which can put it above the true optimum."""
    total = 0.0
    for mb in plan.micro_batches:
        bound = mb.solver.bound_s
        total += bound if bound is not None else mb.lower_bound_s
    return total
