"""The sequence-parallel context a rank passes down to its attention layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from hetero_sp.parallel.sharding import GroupLayout


@dataclass(frozen=True)
class SPContext:
    """One rank's view of the sequence-parallel group it runs a packed stream with.

    ``group`` is None only for a group of one rank. Every rank of the group holds the same
    ``layout``, so each knows where every other rank's tokens sit in the stream.
    """

    group: dist.ProcessGroup | None
    rank: int
    """Rank inside the group, 0..size-1."""
    size: int
    layout: GroupLayout
    softmax_strategy: str = "ulysses"
    """How S layers run across the group: ulysses or allgather_kv."""
    linear_strategy: str = "lasp2"
    """How L layers run across the group: lasp2 or zeco."""

    def __post_init__(self) -> None:
        if self.layout.size != self.size:
            raise ValueError(f"layout is for {self.layout.size} ranks, group has {self.size}")
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} is outside a group of {self.size}")
        if self.size > 1 and self.group is None:
            raise ValueError("a group of more than one rank needs its process group")

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1
