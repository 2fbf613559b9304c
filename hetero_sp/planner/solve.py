"""The planner: sequence lengths -> a validated :class:`Plan`, for one cost model.

Per step: check every sequence fits some group; split the batch into the fewest micro-batches
that fit in memory (sorted by length, consecutive, balanced by tokens); per micro-batch bucket
the lengths (DP), build the best homogeneous plan (one group size for all) as warm start and
fallback, solve the MILP under a time limit, turn its bucket counts into concrete groups, and
keep whichever of the MILP's plan and the homogeneous one has the smaller predicted makespan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hetero_sp.planner import assign
from hetero_sp.planner.bucketing import bucket_lengths
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.milp import SOLVERS, MilpInput, SlotCounts, solve_milp
from hetero_sp.planner.plan import MicroBatchPlan, Plan, SolverStats, validate_plan


@dataclass(kw_only=True, frozen=True)
class PlannerOptions:
    """How hard the planner works on each step."""

    num_buckets: int = 16
    """Length buckets of the MILP (DP bucketing)."""
    time_limit_s: float = 0.6
    """MILP time per step, shared by its micro-batches (each gets the rest of the budget over
    the micro-batches left, at least ``min_time_limit_s``); the best plan found by then is used."""
    min_time_limit_s: float = 0.05
    """Least MILP time a micro-batch gets."""
    rel_gap: float = 0.005
    """Relative MILP gap at which the solver stops early."""
    explicit_slots: int = 8
    """Group sizes with at most this many possible groups get one MILP slot per group."""
    improve_rounds: int = 300
    """Local-search moves after assignment (each move lowers the busiest group)."""
    solver: str = "auto"
    """auto (HiGHS when highspy is installed, else CBC), highs or cbc."""
    threads: int = 1
    """Solver threads (1 keeps the CPU free for the training step it overlaps)."""

    def __post_init__(self) -> None:
        if self.num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {self.num_buckets}")
        if not 0 < self.min_time_limit_s <= self.time_limit_s:
            raise ValueError("need 0 < min_time_limit_s <= time_limit_s")
        if not 0 <= self.rel_gap < 1:
            raise ValueError(f"rel_gap must be in [0, 1), got {self.rel_gap}")
        if self.explicit_slots < 0 or self.improve_rounds < 0 or self.threads < 1:
            raise ValueError("explicit_slots and improve_rounds must be >= 0, threads >= 1")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver {self.solver!r} is unknown; allowed: {', '.join(SOLVERS)}")


def lower_bound(lengths: np.ndarray, cost: CostModel) -> float:
    """max(sum over sequences of the fewest GPU-seconds any group size gives it / GPUs,
    the longest time any one sequence needs on its best group)."""
    s = np.asarray(lengths, dtype=float)
    work = np.full(len(s), np.inf)
    single = np.full(len(s), np.inf)
    for g in cost.groups.values():
        t = np.where(s <= g.max_tokens, g.per_token2_s * s * s + g.per_token_s * s, np.inf)
        work = np.minimum(work, g.size * t)
        single = np.minimum(single, g.fixed_s + t)
    return float(max(work.sum() / cost.topology.num_gpus, single.max()))


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
        raise ValueError(f"a sequence of {max(lengths)} tokens fits no group of sizes {sizes}")
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


def plan_micro_batch(
    lengths: np.ndarray,
    index: Sequence[int],
    cost: CostModel,
    options: PlannerOptions,
    time_limit_s: float | None = None,
) -> MicroBatchPlan:
    """Plan one micro-batch (``lengths`` are its sequences, ``index`` their batch indices)."""
    start = time.perf_counter()
    lb = lower_bound(lengths, cost)
    buckets = bucket_lengths(lengths, options.num_buckets)
    rounded = np.empty(len(lengths), dtype=np.int64)
    for value, members in zip(buckets.values, buckets.members):
        rounded[list(members)] = value
    # Warm start and upper bound: the best homogeneous layout over bucket lengths (plain LPT).
    warm, upper = None, np.inf
    for d in cost.sizes:
        pack = assign.homogeneous(rounded, cost, d, improve_rounds=0)
        if pack is not None and pack.makespan < upper:
            warm, upper = pack, pack.makespan
    best, note = None, ""
    if warm is not None:
        d = warm.sizes[0]
        best = assign.homogeneous(lengths, cost, d, options.improve_rounds)
    stats = dict(solver="homogeneous", status="no MILP", objective_s=None, bound_s=None, gap=None)
    if cost.topology.num_gpus > 1:
        bucket_of = np.empty(len(lengths), dtype=np.int64)
        for k, members in enumerate(buckets.members):
            bucket_of[list(members)] = k
        inp = MilpInput(
            num_gpus=cost.topology.num_gpus,
            sizes=cost.sizes,
            fixed_s=tuple(cost.groups[d].fixed_s for d in cost.sizes),
            max_tokens=tuple(cost.groups[d].max_tokens for d in cost.sizes),
            values=buckets.values,
            counts=buckets.counts,
            times=np.array(
                [[cost.groups[d].seq_time(v) for d in cost.sizes] for v in buckets.values]
            ),
        )
        warm_groups = None
        if warm is not None:
            warm_groups = tuple(
                SlotCounts(
                    warm.sizes[g],
                    tuple(
                        int(np.sum(bucket_of[warm.where == g] == k))
                        for k in range(len(buckets.values))
                    ),
                )
                for g in range(len(warm.sizes))
                if warm.count[g] > 0
            )
        ub = upper if warm is not None else _safe_upper(inp)
        result = None
        if best is not None and best.makespan <= lb * (1 + options.rel_gap):
            note = "the homogeneous plan meets the lower bound; no MILP needed"
        else:
            result = solve_milp(
                inp,
                upper_bound=ub,
                warm=warm_groups,
                explicit_slots=options.explicit_slots,
                time_limit_s=time_limit_s or options.time_limit_s,
                rel_gap=options.rel_gap,
                threads=options.threads,
                solver=options.solver,
            )
            if result is None:
                note = "the MILP found no solution in time; kept the homogeneous plan"
        if result is not None:
            stats = dict(
                solver=result.solver,
                status=result.status,
                objective_s=result.objective,
                bound_s=result.bound,
                gap=result.gap,
            )
            pack = assign.realize(lengths, cost, buckets, result, options.improve_rounds)
            if pack is not None and (best is None or pack.makespan <= best.makespan):
                best = pack
            else:
                note = "kept the homogeneous plan: the MILP's plan was not better once assigned"
    if best is None:  # bucket rounding made the batch too tight: any true-length layout
        packs = [assign.homogeneous(lengths, cost, d, options.improve_rounds) for d in cost.sizes]
        best = min((p for p in packs if p is not None), key=lambda p: p.makespan, default=None)
        note = note or "bucket rounding left no room; kept the best homogeneous plan"
    if best is None:
        raise ValueError(
            "no plan fits this micro-batch in memory; this is a planner bug when "
            "split_micro_batches accepted it"
        )
    groups = assign.group_plans(best, index)
    return MicroBatchPlan(
        groups=groups,
        makespan_s=best.makespan,
        lower_bound_s=lb,
        solver=SolverStats(
            **stats,
            solve_s=time.perf_counter() - start,
            num_buckets=len(buckets.values),
            token_error=buckets.token_error,
            note=note,
        ),
    )


def _safe_upper(inp: MilpInput) -> float:
    """A makespan no feasible solution exceeds: every sequence at its slowest, one group."""
    return float(np.sum(np.max(inp.times, axis=1) * np.asarray(inp.counts))) + max(inp.fixed_s)


def plan_batch(
    lengths: Sequence[int], cost: CostModel, options: PlannerOptions | None = None
) -> Plan:
    """Plan one step: every sequence of ``lengths`` once, in the fewest micro-batches."""
    options = options or PlannerOptions()
    cost.check_lengths(lengths)
    lengths = [int(s) for s in lengths]
    arr = np.asarray(lengths, dtype=np.int64)
    parts = split_micro_batches(lengths, cost)
    begin, mbs = time.perf_counter(), []
    for m, idx in enumerate(parts):
        left = options.time_limit_s - (time.perf_counter() - begin)
        limit = max(options.min_time_limit_s, left / (len(parts) - m))
        mbs.append(plan_micro_batch(arr[idx], idx, cost, options, limit))
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

    def __init__(self, cost: CostModel, options: PlannerOptions | None = None) -> None:
        self.cost, self.options = cost, options or PlannerOptions()

    def __call__(self, lengths: Sequence[int]) -> Plan:
        return plan_batch(lengths, self.cost, self.options)
