"""The peers' schedulers as baselines, priced by the planner's cost model on the same batches.

- **Megatron-core hybrid context parallelism** (``BalancedCPScheduler`` of megatron-core 0.16,
  ``megatron/core/pipeline_parallel/hybrid_cp_schedule.py``), called as it is. Megatron-core
  imports torch, so it is imported inside :class:`MegatronBaseline`, never when
  ``hetero_sp.planner`` loads.
- **FlexSP's formulation** (arXiv 2412.01523): this planner restricted to Ulysses groups of
  2, 4, 8, ... GPUs (:func:`flexsp_cost`).

How a Megatron schedule runs (``hybrid_context_parallel_forward_backward``): it is a list of
rounds with a barrier after each; in a round every rank is in one CP group, and the group runs
each of its sub-samples as its own forward and backward (gradients accumulate), one after the
other. The runtime finds a sub-sample's CP group by size (``local_cp_size`` = how many ranks
hold it) among the aligned blocks ``create_hybrid_dp_cp_groups`` builds: sizes 2, 4, ... below
the world at multiples of their size, and the whole world. So a round takes its slowest group,
a group the sum of its per-sequence passes (each with the group's fixed cost), and a schedule
that puts a group on other ranks than such a block cannot run as scheduled.

At ZeRO stage 2 or 3 the passes of a round are not independent: every backward
reduce-scatters gradients over all ranks (and at stage 3 every forward and backward gathers
parameters from all of them), so pass k of every group is one collective step of the whole
world, and a group with fewer sub-samples than the round's most runs padding passes, as this
project's engine does. There a round takes the sum over k of its groups' slowest k-th pass (a
padding pass priced as one token on its group). That is the least such lockstep costs: the
gathers are per layer, which makes the groups wait for each other more often than once a
pass.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from hetero_sp.core.names import GroupShapes, SoftmaxSP
from hetero_sp.planner.cluster import is_power_of_two
from hetero_sp.planner.cost import CostModel, GroupCost

MEGATRON_SCHEDULER = "megatron.core.pipeline_parallel.hybrid_cp_schedule.BalancedCPScheduler"


class BaselineStatus(StrEnum):
    """What became of a baseline's schedule for one step."""

    OK = "ok"
    """Priced: the step time counts."""
    MISALIGNED = "misaligned"
    """A group is not a block the runtime has a process group for (not priced)."""
    MEMORY = "memory"
    """A pass needs more memory per GPU than the cost model allows on every strategy pair."""
    UNPLANNABLE = "unplannable"
    """The baseline cannot schedule this batch at all (a sequence too long for it)."""
    FAILED = "failed"
    """The peer's scheduler raised."""
    UNAVAILABLE = "unavailable"
    """The peer's code is not installed."""


@dataclass(frozen=True)
class MegatronGroup:
    ranks: tuple[int, ...]
    sequences: tuple[int, ...]
    """Batch indices, in the order the group runs them (one pass each)."""
    softmax_strategy: str
    linear_strategy: str
    predicted_s: float
    """Sum of the per-sequence passes; 0 when the schedule is not priced."""
    pass_s: tuple[float, ...] = ()
    """Each pass's time, in :attr:`sequences` order; empty when not priced."""


@dataclass(frozen=True)
class MegatronPlan:
    status: BaselineStatus
    reason: str
    """Why the schedule is not priced (empty when it is)."""
    rounds: tuple[tuple[MegatronGroup, ...], ...]
    round_s: tuple[float, ...]
    """Each round's time (its slowest group; at ZeRO 2/3 the sum of its slowest k-th passes);
    empty when not priced."""
    schedule_s: float
    """Wall time of Megatron's scheduler."""
    cap: int
    """max_seq_len_per_rank given to the scheduler."""

    @property
    def step_s(self) -> float | None:
        return sum(self.round_s) if self.status == BaselineStatus.OK else None


def megatron_cap(cost: CostModel) -> int:
    """Megatron's ``max_seqlen_per_dp_cp_rank`` from the cost model: the tokens one GPU holds by
    itself (``cost.groups[1].max_tokens``, model states and activations within the memory
    limit). It is what a user sets from memory: Megatron gives a sequence the fewest
    power-of-two GPUs whose caps add up to its length. It is not shaved for what an SP strategy
    adds on bigger groups (padding, all-gather K/V's gathered K and V), which is what the
    memory check of :class:`MegatronBaseline` catches."""
    return cost.groups[1].max_tokens


def megatron_block(ranks: Sequence[int], world: int) -> bool:
    """Whether Megatron's runtime has a CP group on exactly these ranks: one rank, the whole
    world, or an aligned power-of-two block smaller than the world (see the module docstring)."""
    size = len(ranks)
    if size == 0 or list(ranks) != list(range(ranks[0], ranks[0] + size)):
        return False
    if ranks[0] < 0 or ranks[-1] >= world:
        return False
    if size in (1, world):
        return True
    return is_power_of_two(size) and ranks[0] % size == 0


class _Size:
    """The one thing ``BalancedCPScheduler`` asks of its ``dp_cp_group``: ``size()``."""

    def __init__(self, size: int) -> None:
        self._size = size

    def size(self) -> int:
        return self._size


class MegatronBaseline:
    """Megatron-core's ``BalancedCPScheduler`` on a batch, priced by the cost model:
    ``MegatronBaseline(cost)(lengths) -> MegatronPlan``.

    Each CP group is priced with the fastest strategy pair that holds every one of its passes in
    memory. Megatron-core's CP runs softmax attention by all-to-all (like Ulysses), all-gather
    (like all-gather K/V) or a ring (not in this cost model); it has no linear-attention SP, so
    its L layers get this project's LASP-2 or ZeCO, which flatters it."""

    def __init__(self, cost: CostModel, cap: int | None = None) -> None:
        with warnings.catch_warnings():  # its optional-dependency notices (Apex, TE)
            warnings.simplefilter("ignore")
            from megatron.core.pipeline_parallel.hybrid_cp_schedule import BalancedCPScheduler
        self.cost = cost
        self.cap = megatron_cap(cost) if cap is None else cap
        self.world = cost.topology.num_gpus
        self.scheduler = BalancedCPScheduler(self.cap, _Size(self.world))

    def _unpriced(self, status, reason, schedule_s, rounds=()) -> MegatronPlan:
        return MegatronPlan(status, reason, tuple(rounds), (), schedule_s, self.cap)

    def __call__(self, lengths: Sequence[int]) -> MegatronPlan:
        lengths = [int(s) for s in lengths]
        start = time.perf_counter()
        for i, s in enumerate(lengths):
            need = self.scheduler.gpus_needed(s)
            if need > self.world:
                return self._unpriced(
                    BaselineStatus.UNPLANNABLE,
                    f"sequence {i} ({s} tokens) needs {need} GPUs at {self.cap} tokens per GPU; "
                    f"the world has {self.world}",
                    time.perf_counter() - start,
                )
        try:
            _, id_rounds = self.scheduler.get_groups_and_subsamples(list(enumerate(lengths)), None)
        except Exception as err:  # the peer's code: whatever it raises is its failure, reported
            reason = f"{type(err).__name__}: {err}"
            return self._unpriced(BaselineStatus.FAILED, reason, time.perf_counter() - start)
        schedule_s = time.perf_counter() - start
        rounds, problem = self._groups(id_rounds, len(lengths))
        if problem is not None:
            return self._unpriced(*problem, schedule_s, rounds)
        priced, round_s = [], []
        for r, groups in enumerate(rounds):
            out = []
            for g in groups:
                best = self._price(g, lengths)
                if best is None:
                    worst = max(g.sequences, key=lambda i: lengths[i])
                    reason = (
                        f"round {r}: sequence {worst} ({lengths[worst]} tokens) on a CP group of "
                        f"{len(g.ranks)} GPUs (ranks {g.ranks[0]}-{g.ranks[-1]}) exceeds the "
                        "memory limit with every strategy pair"
                    )
                    return self._unpriced(BaselineStatus.MEMORY, reason, schedule_s, rounds)
                spec, passes = best
                out.append(
                    dataclasses.replace(
                        g,
                        softmax_strategy=spec.softmax_strategy,
                        linear_strategy=spec.linear_strategy,
                        predicted_s=sum(passes),
                        pass_s=passes,
                    )
                )
            priced.append(tuple(out))
            round_s.append(self._round_s(out))
        return MegatronPlan(
            BaselineStatus.OK, "", tuple(priced), tuple(round_s), schedule_s, self.cap
        )

    def _groups(self, id_rounds, num: int):
        """The CP groups of each round from the scheduler's per-rank sample ids, and the first
        problem (status, reason) that keeps the schedule from running, or None."""
        rounds, seen, problem = [], set(), None
        for r, per_rank in enumerate(id_rounds):
            holders: dict[int, list[int]] = {}
            for rank, ids in enumerate(per_rank):
                for i in ids:
                    holders.setdefault(int(i), []).append(rank)
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, ranks in holders.items():
                groups.setdefault(tuple(ranks), []).append(i)
            out = []
            for ranks, ids in sorted(groups.items()):
                order = tuple(int(i) for i in per_rank[ranks[0]] if int(i) in ids)
                out.append(MegatronGroup(ranks, order, "", "", 0.0))
                if problem is None and not megatron_block(ranks, self.world):
                    problem = (
                        BaselineStatus.MISALIGNED,
                        f"round {r}: a CP group of {len(ranks)} GPUs on ranks {list(ranks)}, "
                        "which is not an aligned block Megatron builds a process group for",
                    )
                if problem is None and any(
                    list(per_rank[k]) != list(per_rank[ranks[0]]) for k in ranks
                ):
                    problem = (
                        BaselineStatus.FAILED,
                        f"round {r}: ranks {list(ranks)} share a sequence but not their lists",
                    )
                seen |= set(ids)
            covered = sorted(k for g in out for k in g.ranks)
            if problem is None and covered != list(range(self.world)):
                problem = (
                    BaselineStatus.FAILED,
                    f"round {r}: groups overlap or leave ranks out (ranks covered: {covered})",
                )
            rounds.append(tuple(out))
        if problem is None and seen != set(range(num)):
            problem = (BaselineStatus.FAILED, "some sequences are in no round")
        return rounds, problem

    def _price(
        self, group: MegatronGroup, lengths: list[int]
    ) -> tuple[GroupCost, tuple[float, ...]] | None:
        """The fastest strategy pair (kind of the group's size) holding each pass of the group,
        and its passes' times."""
        size, seqs = len(group.ranks), [lengths[i] for i in group.sequences]
        best = None
        for spec in self.cost.every_kind(size):
            if max(seqs) > spec.max_tokens:
                continue
            passes = tuple(spec.time([s]) for s in seqs)
            if best is None or sum(passes) < sum(best[1]):
                best = (spec, passes)
        return best

    def _round_s(self, groups: list[MegatronGroup]) -> float:
        """A round's time: its slowest group, or at ZeRO 2/3 (every pass a step of the whole
        world) the sum of the slowest k-th passes, groups out of sub-samples padding."""
        if self.cost.zero_stage < 2:
            return max(g.predicted_s for g in groups)
        most = max(len(g.pass_s) for g in groups)
        total = 0.0
        for k in range(most):
            total += max(g.pass_s[k] if k < len(g.pass_s) else self._padding_s(g) for g in groups)
        return total

    def _padding_s(self, group: MegatronGroup) -> float:
        """A padding pass: one token on the group, with its strategy pair."""
        size = len(group.ranks)
        spec = self.cost.group_cost(size, group.softmax_strategy, group.linear_strategy)
        return spec.time([1])


def flexsp_cost(cost: CostModel) -> CostModel | None:
    """FlexSP's formulation on the same profile, cluster and memory: Ulysses only, groups of 2,
    4, 8, ... GPUs (no group of one, no whole non-power-of-two world); None when no such group
    exists (fewer than 2 GPUs, or Ulysses cannot split the heads over 2).

    The cost model has no minimum group size and the assignment keeps ``groups[1]`` for spare
    and idle ranks, so the group of one stays in ``groups`` holding no tokens (every placement
    checks ``max_tokens``) and leaves ``sizes``, and with it ``kinds``, the group kinds the MILP
    and the packings offer."""
    world = cost.topology.num_gpus
    largest = 1 << (min(world, cost.sizes[-1]).bit_length() - 1)
    if largest < 2:
        return None
    flex = CostModel(
        cost.profile,
        dataclasses.replace(cost.topology, group_shapes=GroupShapes.POWER_OF_TWO),
        zero_stage=cost.zero_stage,
        softmax_strategies=(SoftmaxSP.ULYSSES.value,),
        linear_strategies=cost.linear_strategies,
        max_group_size=largest,
        model=cost.model,
    )
    flex.groups[1] = dataclasses.replace(flex.groups[1], max_tokens=0)
    flex.sizes = tuple(d for d in flex.sizes if d >= 2)
    return flex if flex.sizes else None
