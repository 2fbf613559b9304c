"""The pool of sequence-parallel process groups, created once at start-up.

``dist.new_group`` is collective (every rank calls it, for every group, in the same order) and
slow on large clusters, so a step never creates groups: the pool holds every group a plan may
use and a plan names its groups by (first rank, size).

Which groups exist (:func:`pool_blocks`):

- every aligned block of d ranks, d in {2, 4, 8, ...}, that fits in the world, plus the whole
  world when its size is not a power of two;
- with a node size given: up to the node size, aligned blocks inside each node (plus the whole
  node when its size is not a power of two); above it, aligned blocks of 2, 4, ... whole nodes
  (plus all nodes when their count is not a power of two). No group smaller than a node
  crosses a node boundary, so intra-node collectives stay on the fast links.

Groups of one rank need no process group (``group`` is None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch.distributed as dist

from hetero_sp.core.errors import UserError
from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.sharding import GroupLayout


def _aligned(first: int, span: int, unit: int) -> list[tuple[int, int]]:
    """Aligned blocks inside ``[first, first + span)`` of ``unit``-rank multiples:
    sizes unit * {2, 4, ...} that fit, plus the whole span when it is not one of them."""
    out, count, n = [], span // unit, 2
    while n <= count:
        out += [(first + k * n * unit, n * unit) for k in range(count // n)]
        n *= 2
    if count > 1 and count & (count - 1):
        out.append((first, span))
    return out


def pool_blocks(world_size: int, node_size: int | None = None) -> tuple[tuple[int, int], ...]:
    """(first rank, size) of every multi-rank group of the pool, in creation order (by size,
    then first rank)."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if node_size is None:
        blocks = _aligned(0, world_size, 1)
    else:
        if node_size < 1 or world_size % node_size:
            raise UserError(
                f"node size must be >= 1 and divide the world size {world_size}, got {node_size}"
            )
        blocks = [b for n in range(0, world_size, node_size) for b in _aligned(n, node_size, 1)]
        blocks += _aligned(0, world_size, node_size)
    return tuple(sorted(set(blocks), key=lambda b: (b[1], b[0])))


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


@dataclass(frozen=True)
class GroupPool:
    """Every SP group of the run, looked up by (first rank, size). Build it with
    :func:`build_group_pool`."""

    world_size: int
    node_size: int | None
    groups: Mapping[tuple[int, int], SPGroup]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Group sizes a plan may use, 1 included."""
        return (1, *sorted({size for _, size in self.groups}))

    def get(self, first: int, size: int) -> SPGroup:
        if size == 1 and 0 <= first < self.world_size:
            return SPGroup(first, 1)
        if (first, size) not in self.groups:
            blocks = ", ".join(f"({f}, {s})" for f, s in self.groups) or "none"
            raise ValueError(
                f"no SP group of {size} ranks starts at rank {first} in a world of "
                f"{self.world_size} (node size {self.node_size}); the pool has (first, size): "
                f"{blocks}, and single ranks"
            )
        return self.groups[(first, size)]


def build_group_pool(world_size: int | None = None, node_size: int | None = None) -> GroupPool:
    """Create every group of :func:`pool_blocks` (collective: call it on every rank, once)."""
    if world_size is None:
        world_size = dist.get_world_size()
    elif dist.is_initialized() and world_size != dist.get_world_size():
        raise ValueError(
            f"world size {world_size} differs from the process group's {dist.get_world_size()}"
        )
    groups = {}
    for first, size in pool_blocks(world_size, node_size):
        groups[(first, size)] = SPGroup(
            first, size, dist.new_group(list(range(first, first + size)))
        )
    return GroupPool(world_size, node_size, MappingProxyType(groups))
