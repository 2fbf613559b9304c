"""HeteroSP plans as the schedule of Megatron's hybrid context parallelism.

Megatron's hybrid-CP schedule (``hybrid_context_parallel_forward_backward``, megatron-core 0.16)
takes, per step, ``sample_id_groups[j][r]``: the sub-samples (sequences) DP x CP rank r runs in
phase j, phases separated by a barrier. A sequence listed on k ranks of a phase runs over those
ranks' group of k (``get_hybrid_data_context_parallel_groups(group_size=k)``: the aligned block
of k ranks holding the rank), so the ranks sharing a sequence must be exactly such a block.
Megatron builds blocks of 2, 4, ..., W / 2 ranks and the whole DP x CP group of W; for a power
of two W these are the blocks of a HeteroSP plan (``hetero_sp.planner.plan``).

A plan maps one to one: micro-batch m is phase m, and each group's sequences are listed, in its
stream order, on each of its ranks. The schedule indexes every rank's last sub-sample of the
last phase, so no rank may be idle there: when the plan's last micro-batch leaves a rank idle,
a micro-batch with no idle rank goes last (phases add gradients, their order is free); when
every micro-batch has one, the last is filled (:func:`fill_idle`): an idle block takes over a
group of its sibling block, and a group alone in a block grows to the block, so no group gets
smaller and no rank needs more memory.

Nothing here imports megatron; :class:`HeteroSPCPScheduler` is what Megatron's wrapper calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hetero_sp.core.errors import UserError
from hetero_sp.planner.baselines import megatron_block
from hetero_sp.planner.cluster import is_power_of_two
from hetero_sp.planner.plan import Plan

Phase = list[list[int]]
"""Per DP x CP rank, the batch indices it runs in one phase, in order."""


def megatron_group_sizes(world_size: int) -> tuple[int, ...]:
    """Group sizes Megatron's hybrid CP can run a sub-sample on for ``world_size`` DP x CP ranks
    (``parallel_state.create_hybrid_dp_cp_groups``: 2, 4, ... below ``2**floor(log2 W)``, the
    whole group, and one rank without a group)."""
    sizes, d = [1], 2
    while 2 * d <= world_size:
        sizes.append(d)
        d *= 2
    return (*sizes, world_size) if world_size > 1 else (1,)


def megatron_max_group_size(world_size: int) -> int:
    """The largest group a HeteroSP plan may use so that its groups are Megatron's: the whole
    world, which must be a power of two (HeteroSP's blocks are then exactly Megatron's)."""
    if world_size < 2 or not is_power_of_two(world_size):
        raise UserError(
            f"HeteroSP's scheduler for hybrid context parallelism needs a power-of-two number "
            f"of DP x CP ranks (2, 4, 8, ...), got {world_size}; Megatron's groups for "
            f"{world_size} ranks are of sizes {megatron_group_sizes(world_size)}"
        )
    return world_size


@dataclass(frozen=True)
class _Group:
    start: int
    size: int
    sequences: tuple[int, ...]
    tokens: int


def _fill(start: int, size: int, groups: list[_Group]) -> list[_Group]:
    """Groups covering the block [start, start + size) with no idle rank, from ``groups`` (at
    least one, disjoint, inside the block): one group grows to the block; otherwise each half
    is filled with its own groups, an empty half first taking the lightest group of the other
    (which holds at least two, each at most half the block)."""
    if len(groups) == 1:
        return [_Group(start, size, groups[0].sequences, groups[0].tokens)]
    half = size // 2
    left = [g for g in groups if g.start < start + half]
    right = [g for g in groups if g.start >= start + half]
    if not left or not right:
        full = left or right
        lightest = min(full, key=lambda g: (g.tokens, g.start))
        full.remove(lightest)
        moved = _Group(
            start if not left else start + half, half, lightest.sequences, lightest.tokens
        )
        (left if not left else right).append(moved)
    return _fill(start, half, left) + _fill(start + half, half, right)


def fill_idle(groups: Sequence[tuple[Sequence[int], Sequence[int]]], lengths: Sequence[int]):
    """A micro-batch's ``(ranks, sequences)`` groups (every rank in one) redrawn so that no
    rank is idle (see the module doc); the world size is a power of two."""
    world = sum(len(ranks) for ranks, _ in groups)
    busy = [
        _Group(ranks[0], len(ranks), tuple(seqs), sum(lengths[i] for i in seqs))
        for ranks, seqs in groups
        if seqs
    ]
    if not busy:
        raise ValueError("a micro-batch needs at least one sequence")
    return [(tuple(range(g.start, g.start + g.size)), g.sequences) for g in _fill(0, world, busy)]


def _phase(groups, world: int) -> Phase:
    out: Phase = [[] for _ in range(world)]
    for ranks, seqs in groups:
        for r in ranks:
            out[r] = list(seqs)
    return out


def plan_phases(plan: Plan) -> list[Phase]:
    """The plan as Megatron's hybrid-CP phases: ``phases[j][r]`` are the batch indices rank r
    runs in phase j (see the module doc for the order of phases and the filled last one)."""
    world = plan.world_size
    megatron_max_group_size(world)
    for mb in plan.micro_batches:
        for g in mb.groups:
            if g.passes:
                raise UserError(
                    "the plan has groups running several passes, which Megatron's hybrid-CP "
                    "phases cannot express; plan with planner.passes=false"
                )
            if not megatron_block(g.ranks, world):
                raise UserError(
                    f"the plan has a group on ranks {g.ranks[0]}..{g.ranks[-1]}, which Megatron's "
                    "hybrid CP has no group for (it builds aligned power-of-two blocks); plan "
                    "with planner.group_shapes=power_of_two"
                )
    mbs = [[(g.ranks, g.sequences) for g in mb.groups] for mb in plan.micro_batches]
    full = [m for m, groups in enumerate(mbs) if all(seqs for _, seqs in groups)]
    if full:
        last = full[-1]
        mbs = mbs[:last] + mbs[last + 1 :] + [mbs[last]]
    else:
        mbs[-1] = fill_idle(mbs[-1], plan.lengths)
    return [_phase(groups, world) for groups in mbs]


class HeteroSPCPScheduler:
    """A scheduler for Megatron's ``HybridCPDataLoaderWrapper`` (its ``cp_balancing_scheduler``)
    that plans every step with HeteroSP: ``plan_fn(lengths) -> Plan`` (a
    :class:`~hetero_sp.planner.Planner` over the DP x CP ranks) on rank 0 of ``dp_cp_group``,
    the plan broadcast over it (a time-limited solve may differ between ranks), mapped by
    :func:`plan_phases`. ``last_plan`` is the latest step's plan.
    """

    def __init__(self, plan_fn: Callable[[Sequence[int]], Plan], dp_cp_group=None) -> None:
        self.plan_fn, self.dp_cp_group = plan_fn, dp_cp_group
        self.last_plan: Plan | None = None

    def _plan(self, lengths: list[int]) -> Plan:
        if self.dp_cp_group is None:
            return self.plan_fn(lengths)
        import torch.distributed as dist

        from hetero_sp.planner.ahead import broadcast_share

        share = broadcast_share(self.dp_cp_group, src=dist.get_global_rank(self.dp_cp_group, 0))
        if self.dp_cp_group.rank() != 0:
            return share(None)
        try:
            plan = self.plan_fn(lengths)
        except BaseException as error:  # noqa: BLE001 - the peers must hear of it too
            return share(error)
        return share(plan)

    def get_groups_and_subsamples(self, sample_id_seqlens, config=None):
        """Megatron's interface: ``[(sample id, length), ...]`` of the whole step ->
        ``(lengths[j][r], sample_ids[j][r])`` per phase j and DP x CP rank r."""
        ids = [int(i) for i, _ in sample_id_seqlens]
        lengths = [int(n) for _, n in sample_id_seqlens]
        plan = self._plan(lengths)
        if len(plan.lengths) != len(lengths) or list(plan.lengths) != lengths:
            raise ValueError("the plan is for another batch than the one scheduled")
        if self.dp_cp_group is not None and plan.world_size != self.dp_cp_group.size():
            raise ValueError(
                f"the plan is for {plan.world_size} ranks, the DP x CP group has "
                f"{self.dp_cp_group.size()}"
            )
        self.last_plan = plan
        phases = plan_phases(plan)
        groups = [[[lengths[i] for i in seqs] for seqs in phase] for phase in phases]
        sample_ids = [[[ids[i] for i in seqs] for seqs in phase] for phase in phases]
        return groups, sample_ids
