"""The planner: sequence lengths -> a validated :class:`Plan`, for one cost model.

Per step: check every sequence fits some group; split the batch into the fewest micro-batches
that fit in memory (sorted by length, consecutive, balanced by tokens); plan each micro-batch
(:mod:`hetero_sp.planner.solve_microbatch`: buckets, homogeneous warm start, MILP, assignment) within
the step's time budget (:class:`~hetero_sp.planner.solve_microbatch.StepBudget`); validate the plan
before returning it.

The token-balanced split ignores that attention is quadratic and that a micro-batch is as slow as
its slowest group: two long sequences together on two big groups can beat one long sequence
beside the rest. So with planning time left after that split, other splits are planned too
(:func:`candidate_splits`: the consecutive cuts of the length-sorted batch into k, k+1 and k+2
micro-batches that minimise the sum of the micro-batches' lower bounds, and the token-balanced
cut into k+1), best bound first, skipping any whose bound cannot beat the plan in hand; the
fastest plan wins. The token-balanced split is always planned first with the step's whole
budget, so the result is never slower than it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from hetero_sp.config import PlannerConfig
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.errors import PlanError
from hetero_sp.planner.plan import Plan, validate_plan
from hetero_sp.planner.solve_microbatch import StepBudget, plan_micro_batch

__all__ = ["Planner", "passes_allowed", "plan_batch", "split_micro_batches"]


def _fits(lengths: np.ndarray, cost: CostModel, sizes: Sequence[int]) -> bool:
    """Whether groups of one of ``sizes`` hold these sequences in memory (first fit by tokens)."""
    if int(np.sum(lengths)) <= cost.capacity(sizes[-1]):
        return True  # the biggest group alone holds them all
    for d in reversed(sizes):
        cap = cost.capacity(d)
        bins = np.zeros(cost.topology.max_groups(d), dtype=np.int64)
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
    if max(lengths) > cost.capacity(sizes[-1]):
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


_DP_CELLS = 2e7
_DP_ROWS = 12_000
"""Most (micro-batches x sequences^2 / 2) cells, and (micro-batches x sequences) numpy rows, the
bound-minimising split may take (about 0.1 s); bigger batches keep the token-balanced
candidate only."""


def _split_bound(parts: Sequence[Sequence[int]], work: np.ndarray, single: np.ndarray, n: int):
    """Sum over micro-batches of their lower bounds (see ``CostModel.lower_bound``): no plan of
    this split is faster."""
    return float(sum(max(work[list(p)].sum() / n, single[list(p)].max()) for p in parts))


def _bound_splits(
    work: np.ndarray, single: np.ndarray, tokens: np.ndarray, room: int, n: int, k_max: int
) -> dict[int, list[tuple[int, int]]]:
    """For every k <= ``k_max``: the cut of the length-sorted batch into exactly k consecutive
    runs, each of at most ``room`` tokens, that minimises the sum of the runs' lower bounds
    (``max(work / n, longest single time)``). ``single`` does not increase along the sorted
    batch, so a run's single-sequence bound is its first element's. Dynamic programming over
    (runs, end), vectorised over the start."""
    m = len(work)
    cum_w = np.concatenate([[0.0], np.cumsum(work)])
    cum_t = np.concatenate([[0], np.cumsum(tokens)])
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    cuts = np.zeros((k_max, m + 1), dtype=np.int64)
    out = {}
    for j in range(k_max):
        nxt = np.full(m + 1, np.inf)
        for b in range(1, m + 1):
            starts = np.arange(b)
            total = best[:b] + np.maximum((cum_w[b] - cum_w[:b]) / n, single[:b])
            total[cum_t[b] - cum_t[:b] > room] = np.inf
            i = int(np.argmin(total))
            nxt[b], cuts[j, b] = total[i], starts[i]
        best = nxt
        if np.isfinite(best[m]):
            ends, b = [m], m
            for jj in range(j, 0, -1):
                b = int(cuts[jj, b])
                ends.append(b)
            bounds = [0, *reversed(ends)]
            out[j + 1] = list(zip(bounds, bounds[1:]))
    return out


def candidate_splits(
    lengths: Sequence[int], cost: CostModel, base: Sequence[Sequence[int]]
) -> list[tuple[float, list[list[int]]]]:
    """Other splits worth planning than ``base`` (the token-balanced one), each with its lower
    bound, best bound first: the bound-minimising consecutive cuts into len(base), +1 and +2
    micro-batches, and the token-balanced cut into len(base) + 1. Only splits whose every
    micro-batch fits in memory are returned."""
    arr = np.asarray(lengths, dtype=np.int64)
    order = sorted(range(len(arr)), key=lambda i: (-arr[i], i))
    work, single = cost.sequence_bounds(arr[order])
    n, k0 = cost.topology.num_gpus, len(base)
    k_max = min(k0 + 2, len(arr))
    found: list[list[list[int]]] = []
    if k_max * len(arr) ** 2 / 2 <= _DP_CELLS and k_max * len(arr) <= _DP_ROWS:
        room = max(cost.topology.max_groups(d) * cost.capacity(d) for d in cost.sizes)
        for k, runs in sorted(_bound_splits(work, single, arr[order], room, n, k_max).items()):
            if k >= k0:
                found.append([order[a:b] for a, b in runs])
    if k0 < len(arr):
        found.append([order[a:b] for a, b in _balanced_chunks(arr[order], k0 + 1)])
    seen = {tuple(map(tuple, base))}
    out = []
    all_work, all_single = cost.sequence_bounds(arr)
    for parts in found:
        key = tuple(map(tuple, parts))
        if key in seen or not all(_fits(arr[p], cost, cost.sizes) for p in parts):
            continue
        seen.add(key)
        out.append((_split_bound(parts, all_work, all_single, n), parts))
    return sorted(out, key=lambda c: c[0])


_MOVE_LIMIT = 64
"""Batches of at most this many sequences get the move/swap search between micro-batches (its
rounds try every sequence against every other micro-batch)."""


_QUICK_MILP_S = 0.05
"""MILP time of one micro-batch estimate in the move search."""


class _Estimates:
    """Micro-batch makespans for the move search, memoised by member set: the planner's own
    plan of the micro-batch with a short MILP (the homogeneous layouts alone misjudge mixed
    ones); inf when the members fit no layout."""

    def __init__(
        self, arr: np.ndarray, cost: CostModel, options: PlannerConfig, budget: StepBudget
    ) -> None:
        self.arr, self.cost, self.budget = arr, cost, budget
        self.options = dataclasses.replace(
            options, time_limit_s=_QUICK_MILP_S, min_time_limit_s=_QUICK_MILP_S
        )
        self.memo: dict[tuple[int, ...], float] = {}

    def __call__(self, members: Sequence[int]) -> float:
        key = tuple(sorted(members))
        if key not in self.memo and not self.budget.time_left():
            return float("inf")  # out of time: no new estimates, so no move is taken on them
        if key not in self.memo:
            lengths = self.arr[list(key)]
            if not key:
                self.memo[key] = 0.0
            elif not _fits(lengths, self.cost, self.cost.sizes):
                self.memo[key] = float("inf")
            else:
                mb = plan_micro_batch(lengths, list(key), self.cost, self.options)
                self.memo[key] = mb.makespan_s
        return self.memo[key]


def improve_split(
    plan: Plan, arr: np.ndarray, cost: CostModel, options: PlannerConfig, budget: StepBudget
) -> list[list[int]] | None:
    """Local search over the plan's split: move one sequence to another (or a new) micro-batch,
    or swap two, while the sum of the micro-batches' estimated makespans falls (best move
    first, until the deadline). Returns the improved split, None when no move helped (or the
    batch is too big for the search)."""
    parts = [sorted(i for g in mb.groups for i in g.sequences) for mb in plan.micro_batches]
    if len(arr) > _MOVE_LIMIT or not budget.time_left():
        return None
    quick = _Estimates(arr, cost, options, budget)
    est = [mb.makespan_s for mb in plan.micro_batches]
    for p, e in zip(parts, est):
        quick.memo[tuple(p)] = e
    changed = False
    while budget.time_left():
        base, best = sum(est), None
        for a, src in enumerate(parts):
            for i in src:
                rest = [x for x in src if x != i]
                left = quick(rest)
                for b in range(len(parts) + 1):
                    if b == a or (b == len(parts) and len(src) == 1):
                        continue
                    dst = parts[b] + [i] if b < len(parts) else [i]
                    into = quick(dst)
                    old = est[b] if b < len(parts) else 0.0
                    total = base - est[a] - old + left + into
                    if total < base * (1 - 1e-9) and (best is None or total < best[0]):
                        best = (total, ("move", a, b, i, left, into))
                for b in range(a + 1, len(parts)):
                    for j in parts[b]:
                        one = sorted([*rest, j])
                        two = sorted([x for x in parts[b] if x != j] + [i])
                        e1, e2 = quick(one), quick(two)
                        total = base - est[a] - est[b] + e1 + e2
                        if total < base * (1 - 1e-9) and (best is None or total < best[0]):
                            best = (total, ("swap", a, b, i, j, e1, e2))
        if best is None:
            break
        changed = True
        if best[1][0] == "move":
            _, a, b, i, left, into = best[1]
            parts[a] = [x for x in parts[a] if x != i]
            est[a] = left
            if b == len(parts):
                parts.append([i])
                est.append(into)
            else:
                parts[b] = sorted(parts[b] + [i])
                est[b] = into
        else:
            _, a, b, i, j, e1, e2 = best[1]
            parts[a] = sorted([x for x in parts[a] if x != i] + [j])
            parts[b] = sorted([x for x in parts[b] if x != j] + [i])
            est[a], est[b] = e1, e2
        keep = [k for k, p in enumerate(parts) if p]
        parts, est = [parts[k] for k in keep], [est[k] for k in keep]
    if not changed:
        return None
    order = sorted(range(len(parts)), key=lambda k: -max(arr[parts[k]]))
    return [parts[k] for k in order]


def _plan_split(
    parts: Sequence[Sequence[int]],
    arr: np.ndarray,
    cost: CostModel,
    options: PlannerConfig,
    budget: StepBudget,
    within_budget: bool = False,
    reserve: int = 0,
) -> Plan | None:
    """Plan each micro-batch of ``parts``; with ``within_budget``, give up (None) once the
    step's deadline passes before the last one, so a candidate costs at most one micro-batch
    of planning past the deadline. ``reserve``: shares of time to leave for later work, each
    the size of one micro-batch's."""
    mbs = []
    for m, idx in enumerate(parts):
        if within_budget and m and not budget.time_left():
            return None
        budget.start_micro_batch(len(parts) - m + reserve)
        mbs.append(plan_micro_batch(arr[list(idx)], list(idx), cost, options, budget))
    return Plan(
        world_size=cost.topology.num_gpus,
        lengths=tuple(int(s) for s in arr),
        micro_batches=tuple(mbs),
        memory_limit_bytes=cost.memory_limit_bytes,
    )


def passes_allowed(cost: CostModel, options: PlannerConfig) -> bool:
    """Whether groups may run several passes: ``planner.passes`` on, ZeRO stage 0 or 1 (whose
    backward does not communicate, so groups need not run the same number of passes), and
    more than one GPU."""
    return options.passes and cost.zero_stage <= 1 and cost.topology.num_gpus > 1


def plan_batch(
    lengths: Sequence[int], cost: CostModel, options: PlannerConfig | None = None
) -> Plan:
    """Plan one step: every sequence of ``lengths`` once. Where passes are allowed
    (:func:`passes_allowed`), the whole step as one micro-batch of groups running passes; the
    token-balanced split into the fewest micro-batches; then, while the step's time lasts, the
    other candidate splits whose lower bound can beat the best so far; the fastest plan is
    returned."""
    options = options or PlannerConfig()
    budget = StepBudget(options)
    cost.check_lengths(lengths)
    lengths = [int(s) for s in lengths]
    arr = np.asarray(lengths, dtype=np.int64)
    base = split_micro_batches(lengths, cost)
    with_passes = passes_allowed(cost, options)
    one = None
    if with_passes and len(base) > 1:
        # Memory splits the step: the whole step as one micro-batch whose groups run passes
        # (no barrier between passes; memory bounds a pass) first, in half the budget.
        budget.start_micro_batch(2)
        one = plan_micro_batch(arr, list(range(len(arr))), cost, options, budget, passes=True)
    if one is not None and one.makespan_s <= _split_bound(
        base, *cost.sequence_bounds(arr), cost.topology.num_gpus
    ):
        # no plan of the split can beat the plan with passes: it is not planned
        plan = Plan(
            world_size=cost.topology.num_gpus,
            lengths=tuple(lengths),
            micro_batches=(one,),
            memory_limit_bytes=cost.memory_limit_bytes,
        )
    else:
        plan = _plan_split(base, arr, cost, options, budget, reserve=int(with_passes and not one))
    if with_passes and one is None:
        # Everything fits at once: passes can still let a group hold more, in what is left.
        budget.start_micro_batch(1)
        one = plan_micro_batch(arr, list(range(len(arr))), cost, options, budget, passes=True)
    if one is not None and one.makespan_s < plan.predicted_step_s:
        plan = dataclasses.replace(plan, micro_batches=(one,))
    tried = kept = 0
    if options.split_search and cost.topology.num_gpus > 1 and not budget.out_of_time():
        for bound, parts in candidate_splits(lengths, cost, base):
            if bound >= plan.predicted_step_s * (1 - options.rel_gap):
                continue  # cannot beat the plan in hand
            if not budget.time_left():
                break
            other = _plan_split(parts, arr, cost, options, budget, within_budget=True)
            if other is None:
                break  # the deadline passed while planning it
            tried += 1
            if other.predicted_step_s < plan.predicted_step_s:
                plan, kept = other, tried
        moved = improve_split(plan, arr, cost, options, budget)
        if moved is not None:
            other = _plan_split(moved, arr, cost, options, budget, within_budget=True)
            if other is not None:
                tried += 1
                if other.predicted_step_s < plan.predicted_step_s:
                    plan, kept = other, tried
    if tried:
        first = plan.micro_batches[0]
        note = f"split search: {tried} other split(s) planned, " + (
            f"kept candidate {kept} ({len(plan.micro_batches)} micro-batches)"
            if kept
            else "the token-balanced split stayed best"
        )
        solver = dataclasses.replace(
            first.solver, note="; ".join(x for x in (first.solver.note, note) if x)
        )
        plan = dataclasses.replace(
            plan,
            micro_batches=(dataclasses.replace(first, solver=solver), *plan.micro_batches[1:]),
        )
    validate_plan(plan, cost)
    return plan


class Planner:
    """``plan_batch`` bound to a cost model and options: ``planner(lengths) -> Plan``."""

    def __init__(self, cost: CostModel, options: PlannerConfig | None = None) -> None:
        self.cost, self.options = cost, options or PlannerConfig()

    def __call__(self, lengths: Sequence[int]) -> Plan:
        return plan_batch(lengths, self.cost, self.options)
