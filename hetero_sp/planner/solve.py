"""The planner: sequence lengths -> a validated :class:`Plan`, for one cost model.

Per step: check every sequence fits some group; split the batch into the fewest micro-batches
that fit in memory (sorted by length, consecutive, balanced by tokens); plan each micro-batch
(:mod:`hetero_sp.planner.solve_microbatch`: buckets, homogeneous warm start, MILP, assignment) within
the step's time budget (:class:`~hetero_sp.planner.solve_microbatch.StepBudget`); validate the plan
before returning it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hetero_sp.config import PlannerConfig
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.errors import PlanError
from hetero_sp.planner.plan import Plan, validate_plan
from hetero_sp.planner.solve_microbatch import StepBudget, plan_micro_batch

__all__ = ["Planner", "plan_batch", "split_micro_batches"]


def _fits(lengths: np.ndarray, cost: CostModel, sizes: Sequence[int]) -> bool:
    """Whether groups of one of ``sizes`` hold these sequences in memory (first fit by tokens)."""
    if int(np.sum(lengths)) <= cost.groups[sizes[-1]].max_tokens:
        return True  # the biggest group alone holds them all
    for d in reversed(sizes):
        cap = cost.groups[d].max_tokens
        bins = np.zeros(cost.topology.num_gpus // d, dtype=np.int64)
        for s in sorted(lengths, reverse=True):
            room = np.flatnonzero(bins + s <= cap)
            if not len(room):
                break
            bins[room[0]] += s
        else:
            return True
    return False


def split_micro_batches(
    lengths: Sequence[int], cost: CostModel, sizes: Sequence[int] | None = None
) -> list[list[int]]:
    """The fewest consecutive runs of the length-sorted batch, balanced by tokens, that each
    fit in memory at once on groups of ``sizes`` (default: every allowed size). Returns batch
    indices per micro-batch, longest first."""
    sizes = cost.sizes if sizes is None else tuple(sizes)
    if max(lengths) > cost.groups[sizes[-1]].max_tokens:
        raise PlanError(f"a sequence of {max(lengths)} tokens fits no group of sizes {sizes}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    arr = np.asarray(lengths, dtype=np.int64)
    for k in range(1, len(order) + 1):
        chunks = _balanced_chunks(arr[order], k)
        parts = [order[a:b] for a, b in chunks]
        if all(_fits(arr[p], cost, sizes) for p in parts):
            return parts
    raise AssertionError("unreachable: every single sequence was checked to fit")


def _balanced_chunks(sorted_lengths: np.ndarray, k: int) -> list[tuple[int, int]]:
    """At most k consecutive chunks minimising the largest chunk's tokens (binary search)."""
    lo, hi = int(sorted_lengths.max()), int(sorted_lengths.sum())
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_greedy(sorted_lengths, mid)) <= k:
            hi = mid
        else:
            lo = mid + 1
    return _greedy(sorted_lengths, lo)


def _greedy(values: np.ndarray, cap: int) -> list[tuple[int, int]]:
    """Consecutive chunks, each as long as it stays within ``cap`` tokens."""
    cum = np.concatenate([[0], np.cumsum(values)])
    out, start = [], 0
    while start < len(values):
        end = max(start + 1, int(np.searchsorted(cum, cum[start] + cap, side="right")) - 1)
        out.append((start, end))
        start = end
    return out


def plan_batch(
    lengths: Sequence[int], cost: CostModel, options: PlannerConfig | None = None
) -> Plan:
    """Plan one step: every sequence of ``lengths`` once, in the fewest micro-batches."""
    options = options or PlannerConfig()
    budget = StepBudget(options)
    cost.check_lengths(lengths)
    lengths = [int(s) for s in lengths]
    arr = np.asarray(lengths, dtype=np.int64)
    parts = split_micro_batches(lengths, cost)
    mbs = []
    for m, idx in enumerate(parts):
        budget.start_micro_batch(len(parts) - m)
        mbs.append(plan_micro_batch(arr[idx], idx, cost, options, budget))
    mbs = tuple(mbs)
    plan = Plan(
        world_size=cost.topology.num_gpus,
        lengths=tuple(lengths),
        micro_batches=mbs,
        memory_limit_bytes=cost.memory_limit_bytes,
    )
    validate_plan(plan, cost)
    return plan


class Planner:
    """``plan_batch`` bound to a cost model and options: ``planner(lengths) -> Plan``."""

    def __init__(self, cost: CostModel, options: PlannerConfig | None = None) -> None:
        self.cost, self.options = cost, options or PlannerConfig()

    def __call__(self, lengths: Sequence[int]) -> Plan:
        return plan_batch(lengths, self.cost, self.options)
