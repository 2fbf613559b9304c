"""SP process groups: made on first use, cached, and bounded.

A plan names its groups by (first rank, size); any block of consecutive ranks can be one (which
blocks a plan may use is the planner's business: ``hetero_sp.planner.cluster``). There are far
too many such blocks to make them all at start-up (2,080 on 64 ranks), and every NCCL
communicator holds GPU memory and takes time to build, so the pool makes a group the first time
a step's plan needs it and keeps it for later steps.

``dist.new_group`` is collective over the whole world: every rank must call it for every group,
in the same order, even ranks outside the group. So groups are made only in
:meth:`GroupPool.prepare`, which every rank calls with the same plan before running it (every
rank receives the same plan), in sorted order. The cache keeps at most ``max_groups`` groups
(least recently used leave first, the same on every rank); a step that needs more keeps them
all for that step. A run therefore creates at most ``max_groups`` communicators at a time, plus
whatever one step needs beyond it, and ``created`` counts every group made over the run.

Groups of one rank need no process group (``group`` is None).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch.distributed as dist

from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.sharding import GroupLayout

DEFAULT_MAX_GROUPS = 64
"""Process groups the pool keeps between steps unless told otherwise."""


@dataclass(frozen=True)
class SPGroup:
    """Ranks ``[first, first + size)`` and their process group (None for one rank)."""

    first: int
    size: int
    group: dist.ProcessGroup | None = field(default=None, compare=False, repr=False)

    @property
    def ranks(self) -> range:
        return range(self.first, self.first + self.size)

    def context(
        self,
        global_rank: int,
        layout: GroupLayout,
        softmax_strategy: str = "ulysses",
        linear_strategy: str = "lasp2",
    ) -> SPContext:
        """The SP context of ``global_rank`` (a member) running ``layout`` on this group."""
        if global_rank not in self.ranks:
            raise ValueError(
                f"rank {global_rank} is not in the group of ranks "
                f"{self.first}..{self.first + self.size - 1}"
            )
        return SPContext(
            group=self.group,
            rank=global_rank - self.first,
            size=self.size,
            layout=layout,
            softmax_strategy=softmax_strategy,
            linear_strategy=linear_strategy,
        )


class GroupPool:
    """The run's SP groups, looked up by (first rank, size) once :meth:`prepare` made them."""

    def __init__(self, world_size: int, max_groups: int = DEFAULT_MAX_GROUPS) -> None:
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        self.world_size, self.max_groups = world_size, max_groups
        self._groups: OrderedDict[tuple[int, int], SPGroup] = OrderedDict()
        self.created = 0
        """Process groups made so far (evicted ones included)."""

    @property
    def cached(self) -> tuple[tuple[int, int], ...]:
        """(first, size) of the groups held now, least recently used first."""
        return tuple(self._groups)

    def _check(self, first: int, size: int) -> None:
        if size < 1 or first < 0 or first + size > self.world_size:
            raise ValueError(
                f"no SP group of {size} ranks can start at rank {first} in a world of "
                f"{self.world_size}: a group is 1 or more consecutive ranks inside the world"
            )

    def prepare(self, blocks: Iterable[tuple[int, int]]) -> None:
        """Make every multi-rank group of ``blocks`` ((first, size) pairs) that the cache lacks
        and mark them all as just used. Collective: every rank calls it with the same blocks."""
        wanted = sorted({(f, s) for f, s in blocks if s > 1})
        for first, size in wanted:
            self._check(first, size)
        new = [b for b in wanted if b not in self._groups]
        for b in wanted:
            if b in self._groups:
                self._groups.move_to_end(b)
        keep = max(self.max_groups, len(wanted))
        while self._groups and len(self._groups) + len(new) > keep:
            _, old = self._groups.popitem(last=False)
            if old.group is not None and old.group != dist.GroupMember.NON_GROUP_MEMBER:
                dist.destroy_process_group(old.group)
        for first, size in new:
            group = dist.new_group(list(range(first, first + size)))
            self._groups[(first, size)] = SPGroup(first, size, group)
            self.created += 1

    def get(self, first: int, size: int) -> SPGroup:
        """The group of ranks ``[first, first + size)``; made by an earlier :meth:`prepare`."""
        self._check(first, size)
        if size == 1:
            return SPGroup(first, 1)
        if (first, size) not in self._groups:
            raise ValueError(
                f"the SP group of ranks {first}..{first + size - 1} was not prepared: call "
                "GroupPool.prepare with the plan's groups on every rank before running it"
            )
        return self._groups[(first, size)]


def plan_blocks(plan) -> list[tuple[int, int]]:
    """(first rank, size) of every group of a plan (a :class:`~hetero_sp.planner.Plan`)."""
    return [(g.ranks[0], len(g.ranks)) for mb in plan.micro_batches for g in mb.groups]
