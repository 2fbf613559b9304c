"""Plan one micro-batch: bucket, warm start, MILP, assignment.

1. Bucket the lengths (DP); the MILP prices a sequence at its bucket's mean length and admits a
   bucket to a group size only when its longest sequence fits.
2. Warm start, upper bound and fallback: the best homogeneous layout (one group size for all).
   When it already meets the lower bound, no MILP runs.
3. First MILP round with every size of many possible groups aggregated (fast), then its bucket
   counts are assigned to concrete groups. If the assignment falls short of what the MILP
   promised (the aggregation hides how sequences pack into groups), a second round models the
   big sizes group by group (``explicit_slots``), warm-started from the best plan so far.
4. The best concrete plan (true lengths) wins; ranks are placed last.

Time: a :class:`StepBudget` caps the MILP rounds and the local search of a whole step; the
bucketing, the homogeneous packings and the final assignment always run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from hetero_sp.config import PlannerConfig
from hetero_sp.planner import assign
from hetero_sp.planner.bucketing import Buckets, bucket_lengths
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.milp import MilpInput, SlotCounts, solve_milp
from hetero_sp.planner.plan import MicroBatchPlan, SolverStats, relative_gap

_FIRST_ROUND_SHARE = 0.5  # of the micro-batch's MILP time, for the aggregated first round


class StepBudget:
    """One step's planning time: ``options.time_limit_s`` of wall clock from its creation,
    shared by the step's micro-batches, each getting an equal part of what is left when it
    starts. A MILP round gets a fraction of what is left of its micro-batch's part, at least
    ``min_time_limit_s`` and never past the deadline, and starts only while that floor is left;
    the step's first round always gets the floor (so one round may overrun the deadline by up to
    ``min_time_limit_s``). Local search stops at the deadline; that of micro-batches planned
    after it, all together, at most ``_LATE_SEARCH_SHARE`` of the limit later."""

    def __init__(self, options: PlannerConfig) -> None:
        self.deadline = time.perf_counter() + options.time_limit_s
        self.floor_s = options.round_floor_s
        self.part_end = self.deadline
        self.floor_given = False
        self.late_search_end = self.deadline + _LATE_SEARCH_SHARE * options.time_limit_s

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def start_micro_batch(self, num_left: int) -> None:
        """The next micro-batch's part: 1 / ``num_left`` of the time left (this one included)."""
        now = time.perf_counter()
        self.part_end = now + max(0.0, self.deadline - now) / num_left

    def out_of_time(self) -> bool:
        """True once no MILP round may start any more (the floor was given and less than it is
        left): later micro-batches keep their fastest single-kind layout."""
        return self.floor_given and self.deadline - time.perf_counter() < self.floor_s

    def milp_limit(self, fraction: float) -> float:
        """Seconds for the next MILP round; 0: no time left to start one."""
        now = time.perf_counter()
        if self.floor_given and self.deadline - now < self.floor_s:
            return 0.0
        self.floor_given = True
        return max(self.floor_s, min(self.deadline - now, fraction * (self.part_end - now)))


_LATE_PLACEMENTS = 1024
"""Most sequence placements (sequences x kinds, some 20 us each: 20 ms) the single-kind layouts
of a micro-batch planned after the deadline may take, the kinds tried best bound first; the
proportional layout always runs."""

_LATE_SEARCH_S = 0.015
"""The local search on the best layout of a micro-batch planned after the deadline: a few
milliseconds that took 3.4% and 4.6% off two late micro-batches of a 1,024-document step at
256 GPUs, and on many others nothing or hundredths of a percent."""

_LATE_SEARCH_SHARE = 0.05
"""How far past the deadline, as a share of ``time_limit_s``, the late micro-batches' local
searches may run together (a step with 20 late micro-batches would otherwise overrun by 0.3 s)."""


def _late_micro_batch(
    lengths: np.ndarray,
    index: Sequence[int],
    cost: CostModel,
    options: PlannerConfig,
    lb: float,
    start: float,
    search_end: float,
    passes: bool = False,
) -> MicroBatchPlan:
    """A micro-batch planned after the step's deadline, when no MILP round may start: the best
    of the proportional mixed layout and single-kind layouts (the kinds best by bound, as many
    as ``_LATE_PLACEMENTS`` placements allow, one at least; all of them where no layout so far
    holds the batch), on its true lengths, the winner improved by local search for at most
    ``_LATE_SEARCH_S`` and never past ``search_end``, without the bucketing only the MILP
    needs. Once ``search_end`` has passed, the first single-kind layout by bound that holds the
    batch alone (a step of 79 late micro-batches at 64 GPUs took 0.1 s)."""
    kinds = _kinds_by_bound(lengths, cost)
    if time.perf_counter() > search_end:
        for kind in kinds:
            pack = assign.homogeneous(lengths, cost, kind, improve_rounds=0, passes=passes)
            if pack is not None:
                return _late_plan(pack, index, lb, start)
    packs = [assign.proportional(lengths, cost, 0, None, passes)]
    for j, kind in enumerate(kinds):
        if j * len(lengths) >= _LATE_PLACEMENTS and any(p is not None for p in packs):
            break
        packs.append(assign.homogeneous(lengths, cost, kind, improve_rounds=0, passes=passes))
    best = min((p for p in packs if p is not None), key=lambda p: p.makespan, default=None)
    if best is None:
        raise RuntimeError(
            "no plan fits this micro-batch in memory; a planner bug, since the micro-batch "
            "split accepted it"
        )
    best.improve(options.improve_rounds, min(time.perf_counter() + _LATE_SEARCH_S, search_end))
    return _late_plan(best, index, lb, start)


def _late_plan(
    best: assign.Packing, index: Sequence[int], lb: float, start: float
) -> MicroBatchPlan:
    groups = assign.group_plans(best, index)
    return MicroBatchPlan(
        groups=groups,
        makespan_s=max(g.predicted_s for g in groups),
        lower_bound_s=lb,
        solver=SolverStats(
            solver="homogeneous",
            status="no MILP",
            objective_s=None,
            bound_s=None,
            gap=None,
            solve_s=time.perf_counter() - start,
            num_buckets=0,
            token_error=0.0,
            note="no planning time left for MILP round 1",
        ),
    )


def _milp_input(
    cost: CostModel, buckets: Buckets, means: tuple[int, ...], passes: bool = False
) -> MilpInput:
    """The MILP over ``cost.kinds``: every group kind (size and strategy pair) a decision."""
    kinds, topology = cost.kinds, cost.topology
    packing = topology.needs_node_packing(cost.sizes)
    return MilpInput(
        passes=passes,
        max_groups=tuple(topology.max_groups(k.size) for k in kinds),
        node=topology.node if packing else 0,
        num_gpus=cost.topology.num_gpus,
        sizes=tuple(k.size for k in kinds),
        fixed_s=tuple(k.fixed_s for k in kinds),
        max_tokens=tuple(k.max_tokens for k in kinds),
        values=buckets.values,
        tokens=means,
        counts=buckets.counts,
        times=np.array([[k.seq_time(v) for k in kinds] for v in means]),
    )


def _as_slots(pack: assign.Packing, bucket_of: np.ndarray, num_buckets: int) -> tuple:
    """The packing's busy groups as bucket counts (and passes)."""
    kinds = pack.cost.kinds
    return tuple(
        SlotCounts(
            pack.sizes[g],
            tuple(int(np.sum(bucket_of[pack.where == g] == k)) for k in range(num_buckets)),
            kinds.index(pack.specs[g]),
            len(pack.pass_bins(g)),
        )
        for g in range(len(pack.sizes))
        if pack.count[g] > 0
    )


def _milp_makespan(slots: tuple, inp: MilpInput) -> float:
    """A plan's makespan as the MILP prices it (bucket mean lengths)."""
    return max(
        inp.fixed_s[s.kind] * s.passes + float(inp.times[:, s.kind] @ np.asarray(s.counts))
        for s in slots
    )


_KINDS_ALWAYS = 2
"""Single-kind layouts a micro-batch always tries (the best by bound first); the others only
while less than ``_KINDS_SHARE`` of its share of the step's time is spent."""

_KINDS_SHARE = 0.5
"""Of a micro-batch's share of the step, what the single-kind layouts beyond the first
``_KINDS_ALWAYS`` and the local search of the warm starts may use; the rest is the MILP's
(with many kinds, e.g. 49 at 256 GPUs, or 1,000 sequences to search, they would take it
all)."""


def _kinds_by_bound(lengths: np.ndarray, cost: CostModel) -> list:
    """The kinds that hold every sequence, by the bound on a layout of that kind alone (its
    work over the GPUs, or the longest sequence's time), least first."""
    s = lengths.astype(float)
    n = cost.topology.num_gpus
    out = []
    for kind in cost.kinds:
        if int(lengths.max()) > kind.max_tokens:
            continue
        t = kind.per_token2_s * s * s + kind.per_token_s * s
        out.append((max(float(t.sum()) * kind.size / n, float(t.max()) + kind.fixed_s), kind))
    return [k for _, k in sorted(out, key=lambda o: o[0])]


def plan_micro_batch(
    lengths: np.ndarray,
    index: Sequence[int],
    cost: CostModel,
    options: PlannerConfig,
    budget: StepBudget | None = None,
    passes: bool = False,
) -> MicroBatchPlan:
    """Plan one micro-batch (``lengths`` are its sequences, ``index`` their batch indices)
    within ``budget`` (default: a step of this micro-batch alone); with ``passes``, a group may
    run several passes."""
    start = time.perf_counter()
    if budget is None:
        budget = StepBudget(options)
    lb = cost.lower_bound(lengths)
    if budget.out_of_time() and cost.topology.num_gpus > 1:
        return _late_micro_batch(
            lengths, index, cost, options, lb, start, budget.late_search_end, passes
        )
    buckets = bucket_lengths(
        lengths, options.bucket_cap, options.max_bucket_error, options.num_buckets
    )
    means = tuple(int(round(float(np.mean(lengths[list(m)])))) for m in buckets.members)
    bucket_of = np.empty(len(lengths), dtype=np.int64)
    rounded = np.empty(len(lengths), dtype=np.int64)
    for k, members in enumerate(buckets.members):
        bucket_of[list(members)] = k
        rounded[list(members)] = means[k]
    inp = _milp_input(cost, buckets, means, passes)

    best, warm = None, None  # best: true lengths; warm: its layout over bucket means
    kinds = _kinds_by_bound(lengths, cost)
    kinds_end = start + _KINDS_SHARE * max(0.0, budget.part_end - start)
    # the layouts over bucket means in the first half, the same kinds on true lengths after
    means_end = start + 0.5 * (kinds_end - start)
    for j, kind in enumerate(kinds):
        if j >= _KINDS_ALWAYS and time.perf_counter() > means_end:
            kinds = kinds[:j]  # out of this micro-batch's time: the likeliest kinds only
            break
        pack = assign.homogeneous(rounded, cost, kind, improve_rounds=0, passes=passes)
        if pack is not None and (warm is None or pack.makespan < warm.makespan):
            warm = pack
    if warm is not None:
        # The fall-back is the best single-kind layout of the true lengths, which need not be
        # the kind that is best over bucket means (the MILP's warm start).
        packs = [
            assign.homogeneous(lengths, cost, kind, improve_rounds=0, passes=passes)
            for kind in kinds
        ]
        packs = [p for p in packs if p is not None] or [warm]
        top = min(p.makespan for p in packs)
        # Local search reorders close candidates, so improve every kind within 2% of the best.
        for kind in [p.specs[0] for p in packs if p.makespan <= top * 1.02]:
            pack = assign.homogeneous(
                lengths, cost, kind, options.improve_rounds, kinds_end, passes
            )
            if pack is not None and (best is None or pack.makespan < best.makespan):
                best = pack
    if cost.topology.num_gpus > 1:
        # A mixed layout sized by each sequence's cheapest kind: a fall-back and warm start
        # the MILP may not beat in its time where one kind fits the batch badly.
        mixed = assign.proportional_best(rounded, cost, 0, kinds_end, passes)
        if mixed is not None and (warm is None or mixed.makespan < warm.makespan):
            warm = mixed
        mixed = assign.proportional_best(lengths, cost, options.improve_rounds, kinds_end, passes)
        if mixed is not None and (best is None or mixed.makespan < best.makespan):
            best = mixed
    stats = dict(solver="homogeneous", status="no MILP", objective_s=None, bound_s=None, gap=None)
    notes = []
    if cost.topology.num_gpus == 1:
        notes.append("one GPU: nothing to plan")
    elif best is not None and best.makespan <= lb * (1 + options.rel_gap):
        notes.append("the homogeneous plan meets the lower bound; no MILP needed")
    else:
        warm_slots = _as_slots(warm, bucket_of, len(means)) if warm is not None else None
        for round_, slots in enumerate(sorted({0, options.explicit_slots})):
            share = _FIRST_ROUND_SHARE if round_ == 0 and options.explicit_slots else 1.0
            limit = budget.milp_limit(share)
            if not limit:
                notes.append(f"no planning time left for MILP round {round_ + 1}")
                break
            result = solve_milp(
                inp,
                upper_bound=_milp_makespan(warm_slots, inp) if warm_slots else _safe_upper(inp),
                warm=warm_slots,
                explicit_slots=slots,
                time_limit_s=limit,
                rel_gap=options.rel_gap,
                threads=options.threads,
                solver=options.solver,
            )
            if result is None:
                notes.append(f"round {round_ + 1}: the MILP found no better solution in time")
                continue
            # A round cut off before proving a bound keeps the earlier round's (same model).
            bounds = [b for b in (stats["bound_s"], result.bound) if b is not None]
            bound = max(bounds) if bounds else None
            stats = dict(
                solver=result.solver,
                status=result.status,
                objective_s=result.objective,
                bound_s=bound,
                gap=None if bound is None else relative_gap(result.objective, bound),
            )
            pack = assign.realize(
                lengths, cost, buckets, result, options.improve_rounds, budget.deadline, passes
            )
            if pack is not None and (best is None or pack.makespan < best.makespan):
                best = pack
                warm_slots = _as_slots(best, bucket_of, len(means))
            else:
                notes.append(f"round {round_ + 1}: assigned, no better than the plan before")
            if pack is not None and pack.makespan <= result.objective * (1 + options.rel_gap):
                break  # the assignment delivered what the model promised
    if best is None:  # the bucket means left no room: any true-length layout
        packs = [
            assign.homogeneous(lengths, cost, d, options.improve_rounds, budget.deadline, passes)
            for d in cost.sizes
        ]
        best = min((p for p in packs if p is not None), key=lambda p: p.makespan, default=None)
        notes.append("kept the best homogeneous plan")
    if best is None:
        raise RuntimeError(
            "no plan fits this micro-batch in memory; a planner bug, since the micro-batch "
            "split accepted it"
        )
    groups = assign.group_plans(best, index)
    return MicroBatchPlan(
        groups=groups,
        makespan_s=max(g.predicted_s for g in groups),
        lower_bound_s=lb,
        solver=SolverStats(
            **stats,
            solve_s=time.perf_counter() - start,
            num_buckets=len(buckets.values),
            token_error=buckets.token_error,
            note="; ".join(notes),
        ),
    )


def _safe_upper(inp: MilpInput) -> float:
    """A makespan no feasible solution exceeds: every sequence at its slowest, one group (with
    passes, every sequence its own pass)."""
    passes = int(np.sum(inp.counts)) if inp.passes else 1
    slowest = float(np.sum(np.max(inp.times, axis=1) * np.asarray(inp.counts)))
    return slowest + max(inp.fixed_s) * passes
