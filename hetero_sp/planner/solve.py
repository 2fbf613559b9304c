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

import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from hetero_sp.config import PlannerConfig
from hetero_sp.planner import assign
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.errors import PlanError
from hetero_sp.planner.plan import Plan, validate_plan
from hetero_sp.planner.solve_microbatch import StepBudget, _kinds_by_bound, plan_micro_batch

__all__ = ["Planner", "passes_allowed", "plan_batch", "split_micro_batches"]


def _fits(lengths: np.ndarray, cost: CostModel, sizes: Sequence[int]) -> bool:
    """Whether groups of one of ``sizes`` hold these sequences in memory (first fit by tokens)."""
    total, longest = int(np.sum(lengths)), int(np.max(lengths))
    if total <= cost.capacity(sizes[-1]):
        return True  # the biggest group alone holds them all
    ordered = sorted(lengths.tolist(), reverse=True)
    for d in reversed(sizes):
        cap, count = cost.capacity(d), cost.topology.max_groups(d)
        if longest > cap or total > count * cap:
            continue  # no packing into these groups can hold them
        bins = np.zeros(count, dtype=np.int64)
        for s in ordered:
            j = int(np.argmax(bins + s <= cap))  # the first group with room, if any
            if bins[j] + s > cap:
                break
            bins[j] += s
        else:
            return True
    return False


def _memory_room(cost: CostModel, sizes: Sequence[int]) -> int:
    """The most tokens one micro-batch of groups of one of ``sizes`` holds at once."""
    return max(cost.topology.max_groups(d) * cost.capacity(d) for d in sizes)


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
    room = _memory_room(cost, sizes)
    fewest = max(1, -(-int(arr.sum()) // room))  # no fewer micro-batches hold the tokens
    for k in range(fewest, len(order) + 1):
        chunks = _balanced_chunks(arr[order], k)
        parts = [order[a:b] for a, b in chunks]
        if all(_fits(arr[p], cost, sizes) for p in parts):
            return parts
    raise AssertionError("unreachable: every single sequence was checked to fit")


def _balanced_chunks(sorted_lengths: np.ndarray, k: int) -> list[tuple[int, int]]:
    """At most k consecutive chunks minimising the largest chunk's tokens (binary search)."""
    total = int(sorted_lengths.sum())
    # no cap under the mean of k chunks (or the longest sequence) makes k chunks or fewer
    lo, hi = max(int(sorted_lengths.max()), -(-total // k)), total
    cum = np.concatenate([[0], np.cumsum(sorted_lengths)])
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_greedy(cum, mid, stop_after=k)) <= k:
            hi = mid
        else:
            lo = mid + 1
    return _greedy(cum, lo)


def _greedy(cum: np.ndarray, cap: int, stop_after: int | None = None) -> list[tuple[int, int]]:
    """Consecutive chunks of the values whose cumulative sums (from 0) are ``cum``, each as
    long as it stays within ``cap`` tokens; with ``stop_after``, stops one chunk past it."""
    n = len(cum) - 1
    # where a chunk from each start ends, for every start at once (one sequence at least)
    ends = np.maximum(np.searchsorted(cum, cum[:-1] + cap, side="right") - 1, np.arange(1, n + 1))
    ends = ends.tolist()
    out, start = [], 0
    while start < n and (stop_after is None or len(out) <= stop_after):
        out.append((start, ends[start]))
        start = ends[start]
    return out


_DP_CELLS = 2e7
_DP_ROWS = 12_000
"""Most (micro-batches x sequences^2 / 2) cells, and (micro-batches x sequences) numpy rows, the
bound-minimising split may take (about 0.1 s); bigger batches keep the token-balanced
candidate only."""


def _split_bound(parts: Sequence[Sequence[int]], arr: np.ndarray, cost: CostModel) -> float:
    """Sum over micro-batches of their lower bounds (``CostModel.lower_bound``): no plan of
    this split is faster."""
    return float(sum(cost.lower_bound(arr[list(p)]) for p in parts))


def _bound_splits(
    arr: np.ndarray, cost: CostModel, room: float, k_max: int
) -> dict[int, list[tuple[int, int]]]:
    """For every k <= ``k_max``: the cut of ``arr`` (lengths sorted longest first) into exactly k
    consecutive runs, each of at most ``room`` tokens, that minimises the sum of the runs'
    lower bounds (:meth:`CostModel.lower_bound`: work / GPUs, the longest single time, the
    sequences only a group of over half the GPUs holds in series). ``single`` does not
    increase along the sorted batch, so a run's single-sequence bound is its first element's.
    Dynamic programming over (runs, end), vectorised over the start."""
    m, n = len(arr), cost.topology.num_gpus
    work, single = cost.sequence_bounds(arr)
    alone, fixed = cost.exclusive_bounds(arr)
    cum_w = np.concatenate([[0.0], np.cumsum(work)])
    cum_a = np.concatenate([[0.0], np.cumsum(alone)])
    cum_c = np.concatenate([[0], np.cumsum(alone > 0)])
    cum_t = np.concatenate([[0], np.cumsum(arr)])
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    cuts = np.zeros((k_max, m + 1), dtype=np.int64)
    out = {}
    for j in range(k_max):
        nxt = np.full(m + 1, np.inf)
        for b in range(1, m + 1):
            serial = np.where(cum_c[b] > cum_c[:b], cum_a[b] - cum_a[:b] + fixed, 0.0)
            run = np.maximum(np.maximum((cum_w[b] - cum_w[:b]) / n, single[:b]), serial)
            total = best[:b] + run
            total[cum_t[b] - cum_t[:b] > room] = np.inf
            i = int(np.argmin(total))
            nxt[b], cuts[j, b] = total[i], i
        best = nxt
        if np.isfinite(best[m]):
            ends, b = [m], m
            for jj in range(j, 0, -1):
                b = int(cuts[jj, b])
                ends.append(b)
            bounds = [0, *reversed(ends)]
            out[j + 1] = list(zip(bounds, bounds[1:]))
    return out


_PASSES_SPLITS = 8
"""With passes, the most micro-batches a bound-minimising candidate split has (each a layout of
groups running passes, like the rounds of a scheduler that regroups the GPUs a few times per
step: long sequences on big groups first, then smaller groups)."""


def candidate_splits(
    lengths: Sequence[int], cost: CostModel, base: Sequence[Sequence[int]], passes: bool = False
) -> list[tuple[float, list[list[int]]]]:
    """Other splits worth planning than ``base``, each with its lower bound, best bound first.

    Without passes (``base`` the token-balanced split): the bound-minimising consecutive cuts
    into len(base), +1 and +2 micro-batches, and the token-balanced cut into len(base) + 1;
    only splits whose every micro-batch fits in memory at once. With passes, memory bounds a
    pass, not a micro-batch: the bound-minimising cuts into 2 .. ``_PASSES_SPLITS``
    micro-batches, with no limit on their tokens."""
    arr = np.asarray(lengths, dtype=np.int64)
    order = sorted(range(len(arr)), key=lambda i: (-arr[i], i))
    k0 = 2 if passes else len(base)
    k_max = min(_PASSES_SPLITS if passes else k0 + 2, len(arr))
    found: list[list[list[int]]] = []
    if k_max * len(arr) ** 2 / 2 <= _DP_CELLS and k_max * len(arr) <= _DP_ROWS:
        room = np.inf if passes else _memory_room(cost, cost.sizes)
        for k, runs in sorted(_bound_splits(arr[order], cost, room, k_max).items()):
            if k >= k0:
                found.append([order[a:b] for a, b in runs])
    if not passes and k0 < len(arr):
        found.append([order[a:b] for a, b in _balanced_chunks(arr[order], k0 + 1)])
    seen = {tuple(map(tuple, base))}
    out = []
    for parts in found:
        key = tuple(map(tuple, parts))
        if key in seen or not (passes or all(_fits(arr[p], cost, cost.sizes) for p in parts)):
            continue
        seen.add(key)
        out.append((_split_bound(parts, arr, cost), parts))
    return sorted(out, key=lambda c: c[0])


_WHOLE_MARGIN = 0.1
"""With passes, the whole step as one micro-batch is planned too where its estimate is within
this fraction of the best split's (the MILP often improves on the estimate there)."""


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
        self,
        arr: np.ndarray,
        cost: CostModel,
        options: PlannerConfig,
        budget: StepBudget,
        passes: bool = False,
    ) -> None:
        self.arr, self.cost, self.budget, self.passes = arr, cost, budget, passes
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
            elif not (self.passes or _fits(lengths, self.cost, self.cost.sizes)):
                self.memo[key] = float("inf")
            else:
                mb = plan_micro_batch(
                    lengths, list(key), self.cost, self.options, passes=self.passes
                )
                self.memo[key] = mb.makespan_s
        return self.memo[key]


def improve_split(
    plan: Plan,
    arr: np.ndarray,
    cost: CostModel,
    options: PlannerConfig,
    budget: StepBudget,
    passes: bool = False,
) -> list[list[int]] | None:
    """Local search over the plan's split: move one sequence to another (or a new) micro-batch,
    or swap two, while the sum of the micro-batches' estimated makespans falls (best move
    first, until the deadline; with ``passes``, micro-batches estimated with passes). Returns
    the improved split, None when no move helped (or the batch is too big for the search)."""
    parts = [sorted(i for g in mb.groups for i in g.sequences) for mb in plan.micro_batches]
    if len(arr) > _MOVE_LIMIT or not budget.time_left():
        return None
    quick = _Estimates(arr, cost, options, budget, passes)
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
    passes: bool = False,
) -> Plan | None:
    """Plan each micro-batch of ``parts`` (with ``passes``: groups may run several passes);
    with ``within_budget``, give up (None) once the step's deadline passes before the last
    one, so a candidate costs at most one micro-batch of planning past the deadline.
    ``reserve``: shares of time to leave for later work, each the size of one micro-batch's."""
    mbs = []
    for m, idx in enumerate(parts):
        if within_budget and m and not budget.time_left():
            return None
        budget.start_micro_batch(len(parts) - m + reserve)
        mbs.append(
            plan_micro_batch(arr[list(idx)], list(idx), cost, options, budget, passes=passes)
        )
    return Plan(
        world_size=cost.topology.num_gpus,
        lengths=tuple(int(s) for s in arr),
        micro_batches=tuple(mbs),
        memory_limit_bytes=cost.memory_limit_bytes,
    )


_DP_ROWS_PASSES = 4096
"""Most (micro-batches x sequences) numpy rows of the bound-minimising cuts in
:func:`rounds_split` (about 0.05 s); bigger batches keep the estimated cuts only."""


class _RunEstimates:
    """Estimated makespans of consecutive runs ``[a, b)`` of the length-sorted batch planned as
    one micro-batch (with ``passes``, groups running passes): the
    :func:`~hetero_sp.planner.assign.proportional` layout (no local search; a few
    milliseconds), memoised; inf where that layout does not hold the run. Without passes
    (the memory-filling split, a few dozen estimates) the better of
    :func:`~hetero_sp.planner.assign.proportional_best` and the single-kind layout of the
    kind best by bound; with passes (the passes split's dynamic programme, hundreds at 256
    GPUs) the plain layout, which keeps it within its time."""

    def __init__(
        self, ordered: np.ndarray, cost: CostModel, deadline: float, passes: bool = True
    ) -> None:
        self.ordered, self.cost, self.deadline, self.passes = ordered, cost, deadline, passes
        self.memo: dict[tuple[int, int], float] = {}

    def __call__(self, a: int, b: int) -> float:
        if (a, b) not in self.memo:
            run = self.ordered[a:b]
            if self.passes:
                packs = [assign.proportional(run, self.cost, 0, self.deadline, passes=True)]
            else:
                packs = [assign.proportional_best(run, self.cost, 0, self.deadline)]
                kinds = _kinds_by_bound(run, self.cost)
                if kinds:
                    packs.append(assign.homogeneous(run, self.cost, kinds[0], 0))
            self.memo[a, b] = min((p.makespan for p in packs if p is not None), default=np.inf)
        return self.memo[a, b]

    def total(self, bounds: Sequence[int]) -> float:
        return float(sum(self(a, b) for a, b in zip(bounds, bounds[1:])))


def rounds_split(
    arr: np.ndarray, cost: CostModel, deadline: float
) -> tuple[float, list[list[int]], float] | None:
    """With passes: a consecutive cut of the length-sorted batch into micro-batches whose groups
    run passes, long sequences in the first on big groups, shorter ones later on smaller groups
    (as a scheduler that regroups the GPUs a few times per step does). Candidates: the
    bound-minimising cuts into 2 .. ``_PASSES_SPLITS`` runs, and the cut with the least
    estimated makespan (:class:`_RunEstimates`) among those at the points where the smallest
    group size that holds a sequence changes (dynamic programming over those few points); the
    better by estimate then has its cut points moved while that helps and time lasts.

    Returns (estimate, batch indices per micro-batch, longest first, the estimate of the whole
    batch as one micro-batch), or None when no candidate was found before the deadline."""
    m = len(arr)
    order = np.array(sorted(range(m), key=lambda i: (-arr[i], i)), dtype=np.int64)
    ordered = arr[order]
    est = _RunEstimates(ordered, cost, deadline)
    found: list[list[int]] = []
    # the smallest size holding each sequence; inside a node only powers of two count, which
    # keeps the points (and the estimates, one per pair of points) few
    sizes = [
        d for d in cost.sizes if d >= cost.topology.node or d & (d - 1) == 0 or d == cost.sizes[-1]
    ]
    need = np.searchsorted(np.array([cost.capacity(d) for d in sizes]), ordered)
    points = [0, *(int(i) for i in np.flatnonzero(np.diff(need)) + 1), m]
    best_at = {0: (0.0, [0])}  # point index -> (estimate, bounds) of the best cut up to it
    for j in range(1, len(points)):
        if time.perf_counter() > deadline:
            break
        options = []  # the first always; the others while time lasts (each a few ms or more)
        for i in range(j):
            if i in best_at and (not options or time.perf_counter() < deadline):
                total = best_at[i][0] + est(points[i], points[j])
                options.append((total, [*best_at[i][1], points[j]]))
        best_at[j] = min(options, key=lambda o: o[0])
    last = max(best_at)
    if last == len(points) - 1:
        found.append(best_at[last][1])
    elif last:  # cut short by the deadline: the best cut so far, the rest as one micro-batch
        found.append([*best_at[last][1], m])
    k_max = min(_PASSES_SPLITS, m)
    if k_max * m <= _DP_ROWS_PASSES and time.perf_counter() < deadline:
        for k, runs in _bound_splits(ordered, cost, np.inf, k_max).items():
            if k > 1:
                found.append([0, *(b for _, b in runs)])
    scored = []
    for bounds in found:
        if scored and time.perf_counter() > deadline:
            break
        scored.append((est.total(bounds), bounds))
    if not scored:
        return None
    total, bounds = _move_cuts(*min(scored, key=lambda c: c[0]), est, deadline)
    parts = [order[a:b].tolist() for a, b in zip(bounds, bounds[1:])]
    return total, parts, est(0, m)


def _move_cuts(
    total: float,
    bounds: list[int],
    est: _RunEstimates,
    deadline: float,
    step: int | None = None,
) -> tuple[float, list[int]]:
    """Move the inner cut points of ``bounds`` (steps halving from ``step``, by default an
    eighth of the batch) while the estimated total falls and time lasts."""
    step = max(1, bounds[-1] // 8 if step is None else step)
    while step >= 1 and time.perf_counter() < deadline:
        moved = False
        for c in range(1, len(bounds) - 1):
            for cut in (bounds[c] - step, bounds[c] + step):
                if not bounds[c - 1] < cut < bounds[c + 1] or time.perf_counter() > deadline:
                    continue
                trial = [*bounds[:c], cut, *bounds[c + 1 :]]
                value = est.total(trial)
                if value < total * (1 - 1e-9):
                    total, bounds, moved = value, trial, True
        if not moved:
            step //= 2
    return total, bounds


def fill_split(
    arr: np.ndarray, cost: CostModel, base: Sequence[Sequence[int]], deadline: float
) -> tuple[float, list[list[int]], float] | None:
    """Without passes: the length-sorted batch cut into runs of mixed groups, each cut where
    the run's estimate (:class:`_RunEstimates`) plus a bound on the rest is least, then cut
    points moved while the estimated total falls (steps halving from the search's
    resolution). The token-balanced split (``base``) asks
    every micro-batch to fit on groups of one size, so where the longest sequences need half
    the GPUs each, it runs them one per micro-batch on all GPUs; here two share a micro-batch
    on two halves.

    A run that starts with the longest sequences left has a makespan that rises steeply while
    they join, stays nearly flat while shorter ones fill its groups, then rises again, while
    the rest gets faster the more the run takes. Each cut minimises the run's estimate plus the
    rest's lower bound (the rest cut by the tokens the GPUs hold, each part's
    :meth:`CostModel.lower_bound`; it tracks the rest's estimate where many short sequences
    fill it, at a fraction of the time): over doublings of the run, then by golden-section
    search between the best doubling's neighbours. Where the rest would fit as one run, the
    cut must also beat that by estimate. Three candidates, one after another while time
    lasts: the first run cut by the bound and the rest as long as the layouts hold them
    (memory-filled), all runs memory-filled, and every run cut by the bound; each has its
    cut points moved, best by estimate first, while time lasts, and the best after the moves
    wins.

    Returns (estimate, batch indices per micro-batch, longest first, the estimate of ``base``
    (inf where those layouts do not hold one of its micro-batches)), or None when
    the deadline passed first."""
    m = len(arr)
    order = np.array(sorted(range(m), key=lambda i: (-arr[i], i)), dtype=np.int64)
    ordered = arr[order]
    est = _RunEstimates(ordered, cost, deadline, passes=False)
    room = _memory_room(cost, cost.sizes)
    cum = np.concatenate([[0], np.cumsum(ordered)])
    width = max(2, m // 128)  # the cut searches' resolution; the moves refine below it

    def room_end(a: int) -> int:
        """Where a run from ``a`` holds at most the GPUs' tokens (one sequence at least)."""
        return max(a + 1, int(np.searchsorted(cum, cum[a] + room, side="right")) - 1)

    rest_memo: dict[int, float] = {}

    def rest_bound(b: int) -> float:
        """The rest from ``b`` cut greedily by the GPUs' tokens, each part's lower bound."""
        if b not in rest_memo:
            parts = _greedy(cum[b:] - cum[b], room)
            rest_memo[b] = sum(cost.lower_bound(ordered[b + s : b + e]) for s, e in parts)
        return rest_memo[b]

    def best_cut(a: int) -> int:
        """The end of the run from ``a`` whose estimate plus the rest's bound is least."""
        hi = room_end(a)

        def proxy(b: int) -> float:
            return est(a, b) + rest_bound(b)

        grid = [a + 1]  # one sequence always fits: its smallest holding group exists
        while (
            grid[-1] < hi
            and time.perf_counter() < deadline
            and np.isfinite(est(a, min(a + 2 * (grid[-1] - a), hi)))
        ):
            grid.append(min(a + 2 * (grid[-1] - a), hi))
        j = min(range(len(grid)), key=lambda j: proxy(grid[j]))
        if time.perf_counter() > deadline:
            return grid[j]  # out of time: the best doubling (its run fits)
        lo, up = grid[max(0, j - 1)], grid[min(len(grid) - 1, j + 1)]
        if up < hi and j == len(grid) - 1:
            up = hi  # the next doubling did not fit: the best may lie below it
            while up > lo + 1 and not np.isfinite(est(a, up)):
                up = lo + (up - lo) // 2
        x, y = up - round(0.618 * (up - lo)), lo + round(0.618 * (up - lo))
        while up - lo > width and time.perf_counter() < deadline:
            if proxy(x) <= proxy(y):
                up, y = y, x
                x = up - round(0.618 * (up - lo))
            else:
                lo, x = x, y
                y = lo + round(0.618 * (up - lo))
        seen = [b for b in (lo, up, x, y, grid[j]) if lo <= b <= up or b == grid[j]]
        b = min(seen, key=proxy)
        if hi == m and b < m and np.isfinite(est(a, m)):
            # the rest fits as one run: the bound flatters cutting it, the estimates decide
            whole = est(a, m)
            if est(a, b) + est(b, m) >= whole or time.perf_counter() > deadline:
                return m
        return b

    def longest_fit(a: int) -> int:
        """The longest run from ``a`` the layouts hold (binary search)."""
        lo, hi = a + 1, room_end(a)
        if hi == m and np.isfinite(est(a, m)):
            return m
        while lo < hi and time.perf_counter() < deadline:  # past it: the longest known to fit
            mid = (lo + hi + 1) // 2
            if np.isfinite(est(a, mid)):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def split(
        first: Callable[[int], int], later: Callable[[int], int], lenient: bool
    ) -> list[int] | None:
        """Cut points: the first run ended by ``first``, the others by ``later``; None when
        time runs out (with ``lenient``, the rest then ends as one run where that fits)."""
        bounds = [0]
        while bounds[-1] < m:
            late = time.perf_counter() > deadline
            if late and not (lenient and np.isfinite(est(bounds[-1], m))):
                return None
            bounds.append(m if late else (first if len(bounds) == 1 else later)(bounds[-1]))
        return bounds

    # The first run cut by the bound and the rest memory-filled first (at 256 GPUs the time
    # may allow no other), then all runs memory-filled, each with its cuts moved (best by
    # estimate first: moves can take the second past the first; from the search's resolution
    # where the bound cut it, from an eighth of the batch where memory did); then, while time
    # lasts, every run cut by the bound (where the rest holds many long sequences, the bound
    # misjudges the later cuts, so this one only competes).
    found: list[tuple[list[int], int]] = []
    for first, step in ((best_cut, width), (longest_fit, m // 8)):
        if not found or time.perf_counter() < deadline:
            bounds = split(first, longest_fit, lenient=not found)
            if bounds is not None:
                found.append((bounds, step))
    if not found:
        return None
    best: tuple[float, list[int]] | None = None

    def keep(bounds: list[int], step: int) -> None:
        nonlocal best
        moved = _move_cuts(est.total(bounds), bounds, est, deadline, step)
        best = moved if best is None or moved[0] < best[0] else best

    for _, bounds, step in sorted({(est.total(b), tuple(b), s) for b, s in found}):
        if best is None or time.perf_counter() < deadline:
            keep(list(bounds), step)
    if time.perf_counter() < deadline:
        bounds = split(best_cut, best_cut, lenient=False)
        if bounds is not None:
            keep(bounds, width)
    assert best is not None
    base_bounds = [0, *np.cumsum([len(p) for p in base]).tolist()]
    base_total = est.total(base_bounds)
    total, bounds = best
    parts = [order[a:b].tolist() for a, b in zip(bounds, bounds[1:])]
    return total, parts, base_total


def passes_allowed(cost: CostModel, options: PlannerConfig) -> bool:
    """Whether groups may run several passes: ``planner.passes`` on, ZeRO stage 0 or 1 (whose
    backward does not communicate, so groups need not run the same number of passes), and
    more than one GPU."""
    return options.passes and cost.zero_stage <= 1 and cost.topology.num_gpus > 1


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (back on after it, if it was on).

    A full collection walks every object of the process: in one that imported torch and
    megatron-core it took 0.22 s, nearly half a step's planning budget, at a moment the
    planner does not choose. The planner's own objects (pulp models, numpy arrays, plans) are
    freed by reference counting; whatever cycles the block leaves are collected once the
    collector runs again."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def plan_batch(
    lengths: Sequence[int], cost: CostModel, options: PlannerConfig | None = None
) -> Plan:
    """Plan one step: every sequence of ``lengths`` once (the garbage collector paused, see
    :func:`_collector_paused`). Where passes are allowed
    (:func:`passes_allowed`), a few micro-batches of groups running passes
    (:func:`rounds_split`) and the whole step as one; without passes, runs that fill memory
    with mixed groups (:func:`fill_split`) where they are estimated faster; the token-balanced
    split into the fewest micro-batches; then, while the step's time lasts, the other
    candidate splits whose lower bound can beat the best so far; the fastest plan is
    returned."""
    with _collector_paused():
        return _plan_batch(lengths, cost, options or PlannerConfig())


def _plan_batch(lengths: Sequence[int], cost: CostModel, options: PlannerConfig) -> Plan:
    budget = StepBudget(options)
    cost.check_lengths(lengths)
    lengths = [int(s) for s in lengths]
    arr = np.asarray(lengths, dtype=np.int64)
    base = split_micro_batches(lengths, cost)
    with_passes = passes_allowed(cost, options)
    plan, one, rounds, filled = None, None, None, None
    base_estimate = np.inf
    if with_passes and len(base) > 1:
        # Memory splits the step, but with passes memory bounds a pass, not a micro-batch: a
        # few micro-batches of groups running passes, long sequences first on big groups
        # (estimated in at most 40% of the budget), planned in half of what is left.
        found = rounds_split(arr, cost, time.perf_counter() + 0.4 * budget.time_left())
        if found is not None:
            estimate, parts, whole = found
            if len(parts) > 1:
                rounds = _plan_split(
                    parts, arr, cost, options, budget, reserve=len(parts), passes=True
                )
                plan = rounds
            late = plan is not None and budget.out_of_time()
            if len(parts) == 1 or (
                whole <= estimate * (1 + _WHOLE_MARGIN)
                and not (late and whole >= plan.predicted_step_s)
            ):
                # the whole step as one micro-batch with passes, in half of what is left (past
                # the deadline only where its estimate beats the plan in hand: planned late,
                # 2,048 sequences took 0.1 s)
                budget.start_micro_batch(2)
                one = plan_micro_batch(
                    arr, list(range(len(arr))), cost, options, budget, passes=True
                )
    if not with_passes and len(base) > 1 and options.split_search and cost.topology.num_gpus > 1:
        # Memory splits the step and every micro-batch is one stream per group: runs that fill
        # memory with mixed groups (estimated in at most a quarter of the budget), planned
        # first where their estimate beats the token-balanced split's, which keeps its share.
        found = fill_split(arr, cost, base, time.perf_counter() + 0.25 * budget.time_left())
        if found is not None and found[0] < found[2] * (1 - 1e-9):
            filled = _plan_split(found[1], arr, cost, options, budget, reserve=len(base))
            plan = filled
            base_estimate = found[2]
    if one is not None and (plan is None or one.makespan_s < plan.predicted_step_s):
        plan = Plan(
            world_size=cost.topology.num_gpus,
            lengths=tuple(lengths),
            micro_batches=(one,),
            memory_limit_bytes=cost.memory_limit_bytes,
        )
    if plan is None or (
        _split_bound(base, arr, cost) < plan.predicted_step_s
        and not (plan is filled and budget.out_of_time() and plan.predicted_step_s <= base_estimate)
    ):
        # the token-balanced split, unless its bound cannot beat the plan in hand, or, past the
        # deadline, the memory-filling split's plan beats its estimate (planned late, its 19
        # micro-batches of 2,048 sequences took 0.09 s at 256 GPUs)
        split = _plan_split(base, arr, cost, options, budget, reserve=int(with_passes and not one))
        if plan is None or split.predicted_step_s < plan.predicted_step_s:
            plan = split
    if with_passes and len(base) == 1:
        # Everything fits at once: passes can still let a group hold more, in what is left.
        budget.start_micro_batch(1)
        one = plan_micro_batch(arr, list(range(len(arr))), cost, options, budget, passes=True)
        if one.makespan_s < plan.predicted_step_s:
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
        # the plan's micro-batches were planned with passes: moves are judged and planned so
        passes = with_passes and (plan is rounds or len(plan.micro_batches) == 1)
        moved = improve_split(plan, arr, cost, options, budget, passes)
        if moved is not None:
            other = _plan_split(
                moved, arr, cost, options, budget, within_budget=True, passes=passes
            )
            if other is not None:
                tried += 1
                if other.predicted_step_s < plan.predicted_step_s:
                    plan, kept = other, tried
    if tried or plan is filled:
        first = plan.micro_batches[0]
        if kept:
            which = f"candidate {kept}"
        elif plan is filled:
            which = "the memory-filling split"
        elif plan is rounds:
            which = "the passes split"
        elif len(plan.micro_batches) == 1 and len(base) > 1:
            which = "the whole step with passes"
        else:
            which = "the token-balanced split"
        note = f"split search: {which} kept ({len(plan.micro_batches)} micro-batches)" + (
            f", {tried} other split(s) planned" if tried else ""
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
