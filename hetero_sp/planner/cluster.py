"""The cluster a plan is made for: GPU count, node size, GPU memory, and the links between GPUs.

Groups are aligned blocks of ranks, the same ones the process-group pool creates: sizes
1, 2, 4, ... placed at multiples of their size, plus the whole world when the world size is not
a power of two. With a power-of-two node size, every block up to the node size lies inside one
node, so a group is either intra-node or spans whole nodes.

A collective over a group of ``size`` ranks is priced as ``latency_s + bytes / bandwidth_Bps``
with ``bytes`` what one rank sends (the convention of ``hetero_sp.core.traffic``). Measured
numbers for a size come from a profile; sizes it lacks are derived from the two links here
(:meth:`Topology.derived_link`), or refused when the topology has no link numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from hetero_sp.planner.errors import ClusterError

COLLECTIVES = ("all_to_all", "all_gather", "send_recv")
"""Collective kinds the strategies use: Ulysses all-to-all, all-gather K/V and LASP-2 state
all-gather, ZeCO point-to-point chain."""


@dataclass(kw_only=True, frozen=True)
class Link:
    """Cost of one collective call: ``latency_s + bytes_per_rank / bandwidth_Bps``."""

    latency_s: float
    """Fixed time of one call, seconds."""
    bandwidth_Bps: float
    """Bytes one rank sends per second."""

    def __post_init__(self) -> None:
        if not self.latency_s >= 0:
            raise ClusterError(f"link latency_s must be >= 0, got {self.latency_s}")
        if not self.bandwidth_Bps > 0:
            raise ClusterError(f"link bandwidth_Bps must be > 0, got {self.bandwidth_Bps}")

    def time(self, num_bytes: float) -> float:
        return self.latency_s + num_bytes / self.bandwidth_Bps


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(kw_only=True, frozen=True)
class Topology:
    """GPUs of the cluster; the planner sees nothing else of the hardware."""

    num_gpus: int
    """World size: ranks a plan must cover."""
    gpus_per_node: int = 8
    """GPUs sharing the fast intra-node link; a power of two (or the whole world)."""
    gpu_memory_bytes: float = 80e9
    """Memory of one GPU."""
    memory_fraction: float = 0.9
    """Share of a GPU's memory the planner may fill (the rest: allocator slack, buffers)."""
    intra_node: Link | None = None
    """Link between GPUs of one node; None when only measured sizes may be used."""
    inter_node: Link | None = None
    """Per-GPU link between nodes; None when only measured sizes may be used."""

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise ClusterError(f"num_gpus (the world size) must be >= 1, got {self.num_gpus}")
        if not (is_power_of_two(self.gpus_per_node) or self.gpus_per_node == self.num_gpus):
            raise ClusterError(
                f"gpus_per_node must be a power of two (or equal num_gpus), got {self.gpus_per_node}"
            )
        if not self.gpu_memory_bytes > 0:
            raise ClusterError(f"gpu_memory_bytes must be > 0, got {self.gpu_memory_bytes}")
        if not 0 < self.memory_fraction <= 1:
            raise ClusterError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")

    @property
    def usable_memory_bytes(self) -> float:
        return self.gpu_memory_bytes * self.memory_fraction

    def group_sizes(self, max_size: int | None = None) -> tuple[int, ...]:
        """Sizes of the aligned blocks a plan may use, ascending."""
        limit = self.num_gpus if max_size is None else min(max_size, self.num_gpus)
        sizes = []
        d = 1
        while d <= limit:
            sizes.append(d)
            d *= 2
        if not is_power_of_two(self.num_gpus) and limit == self.num_gpus:
            sizes.append(self.num_gpus)
        return tuple(sizes)

    def is_valid_block(self, ranks: tuple[int, ...]) -> bool:
        """Consecutive ranks forming an aligned power-of-two block, or the whole world."""
        if not ranks or list(ranks) != list(range(ranks[0], ranks[0] + len(ranks))):
            return False
        if ranks[-1] >= self.num_gpus:
            return False
        if len(ranks) == self.num_gpus:
            return True
        return is_power_of_two(len(ranks)) and ranks[0] % len(ranks) == 0

    def derived_link(self, kind: str, size: int) -> Link | None:
        """A collective's cost over an aligned block of ``size`` ranks, from the two links.

        Inside a node every kind runs at the intra-node link. Across nodes: a rank's all-to-all
        traffic splits into the part for its own node (intra) and the rest (inter), which move
        in parallel over different links; a ring all-gather and a point-to-point chain are
        paced by their node-crossing hops.
        """
        if kind not in COLLECTIVES:
            raise ClusterError(f"collective {kind!r} is unknown; allowed: {', '.join(COLLECTIVES)}")
        if size <= min(self.gpus_per_node, self.num_gpus):
            return self.intra_node
        if self.inter_node is None:
            return None
        if kind != "all_to_all" or self.intra_node is None:
            return self.inter_node
        local = (self.gpus_per_node - 1) / (size - 1)
        seconds_per_byte = max(
            local / self.intra_node.bandwidth_Bps, (1 - local) / self.inter_node.bandwidth_Bps
        )
        return Link(latency_s=self.inter_node.latency_s, bandwidth_Bps=1.0 / seconds_per_byte)
