"""The cluster a plan is made for: GPU count, node size, GPU memory, and the links between GPUs.

A group is a block of consecutive ranks of one of two shapes (``group_shapes``):

- ``any``: any size up to the node size, inside one node, and whole nodes (any count) above it;
  so a group is either intra-node or spans whole nodes, and a node may hold groups of sizes
  that do not divide it (a 5 and a 3 on 8 GPUs), which :func:`place_groups` packs;
- ``power_of_two``: aligned blocks of 1, 2, 4, ... ranks placed at multiples of their size,
  plus the whole world when its size is not a power of two (what Megatron's CP builds).

A collective over a group of ``size`` ranks is priced as ``latency_s + bytes / bandwidth_Bps``
with ``bytes`` what one rank sends (the convention of ``hetero_sp.core.traffic``). Measured
numbers for a size come from a profile; sizes it lacks are derived from the two links here
(:meth:`Topology.derived_link`), or refused when the topology has no link numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from hetero_sp.core.names import GroupShapes, values
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
    """GPUs sharing the fast intra-node link; divides the world (a power of two with
    ``power_of_two`` shapes), or covers it."""
    gpu_memory_bytes: float = 80e9
    """Memory of one GPU."""
    memory_fraction: float = 0.9
    """Share of a GPU's memory the planner may fill (the rest: allocator slack, buffers)."""
    intra_node: Link | None = None
    """Link between GPUs of one node; None when only measured sizes may be used."""
    inter_node: Link | None = None
    """Per-GPU link between nodes; None when only measured sizes may be used."""
    group_shapes: str = GroupShapes.ANY
    """Which blocks of ranks a group may be: any (consecutive, inside a node or whole nodes) or
    power_of_two (aligned power-of-two blocks)."""

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise ClusterError(f"num_gpus (the world size) must be >= 1, got {self.num_gpus}")
        if self.group_shapes not in values(GroupShapes):
            raise ClusterError(
                f"group_shapes {self.group_shapes!r} is unknown; allowed: "
                f"{', '.join(values(GroupShapes))}"
            )
        if self.gpus_per_node < 1:
            raise ClusterError(f"gpus_per_node must be >= 1, got {self.gpus_per_node}")
        if self.group_shapes == GroupShapes.POWER_OF_TWO:
            if not (is_power_of_two(self.gpus_per_node) or self.gpus_per_node == self.num_gpus):
                raise ClusterError(
                    "gpus_per_node must be a power of two (or equal num_gpus) with power_of_two "
                    f"group shapes, got {self.gpus_per_node}"
                )
        elif self.gpus_per_node < self.num_gpus and self.num_gpus % self.gpus_per_node:
            raise ClusterError(
                f"gpus_per_node ({self.gpus_per_node}) must divide num_gpus ({self.num_gpus}): "
                "launch the same number of GPUs on every node"
            )
        if not self.gpu_memory_bytes > 0:
            raise ClusterError(f"gpu_memory_bytes must be > 0, got {self.gpu_memory_bytes}")
        if not 0 < self.memory_fraction <= 1:
            raise ClusterError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")

    @property
    def usable_memory_bytes(self) -> float:
        return self.gpu_memory_bytes * self.memory_fraction

    @property
    def node(self) -> int:
        """Ranks of one node as groups see it (never more than the world)."""
        return min(self.gpus_per_node, self.num_gpus)

    @property
    def num_nodes(self) -> int:
        return self.num_gpus // self.node

    def group_sizes(self, max_size: int | None = None) -> tuple[int, ...]:
        """Sizes a group may have, ascending."""
        limit = self.num_gpus if max_size is None else min(max_size, self.num_gpus)
        if self.group_shapes == GroupShapes.ANY:
            inside = range(1, min(self.node, limit) + 1)
            whole = range(2 * self.node, limit + 1, self.node)
            return (*inside, *whole)
        sizes = []
        d = 1
        while d <= limit:
            sizes.append(d)
            d *= 2
        if not is_power_of_two(self.num_gpus) and limit == self.num_gpus:
            sizes.append(self.num_gpus)
        return tuple(sizes)

    def max_groups(self, size: int) -> int:
        """How many groups of ``size`` ranks the cluster holds at once."""
        if self.group_shapes == GroupShapes.POWER_OF_TWO:
            return self.num_gpus // size
        if size <= self.node:
            return self.num_nodes * (self.node // size)
        return self.num_nodes // -(-size // self.node)

    def is_valid_block(self, ranks: Sequence[int]) -> bool:
        """Consecutive ranks inside the world forming a group of the allowed shapes."""
        if not ranks or list(ranks) != list(range(ranks[0], ranks[0] + len(ranks))):
            return False
        first, size = ranks[0], len(ranks)
        if first < 0 or ranks[-1] >= self.num_gpus:
            return False
        if size == self.num_gpus:
            return True
        if self.group_shapes == GroupShapes.POWER_OF_TWO:
            return is_power_of_two(size) and first % size == 0
        if size <= self.node:
            return first // self.node == ranks[-1] // self.node
        return first % self.node == 0 and size % self.node == 0

    def needs_node_packing(self, sizes: Sequence[int]) -> bool:
        """Whether groups of these sizes can fail to fit the nodes although their GPUs add up
        (a size inside a node that does not divide it, on more than one node)."""
        return self.num_nodes > 1 and any(1 < d < self.node and self.node % d for d in sizes)

    def derived_link(self, kind: str, size: int) -> Link | None:
        """A collective's cost over an aligned block of ``size`` ranks, from the two links.

        Inside a node every kind runs at the intra-node link. Across nodes: a rank's all-to-all
        traffic splits into the part for its own node (intra) and the rest (inter), which move
        in parallel over different links; a ring all-gather and a point-to-point chain are
        paced by their node-crossing hops.
        """
        if kind not in COLLECTIVES:
            raise ClusterError(f"collective {kind!r} is unknown; allowed: {', '.join(COLLECTIVES)}")
        if size <= self.node:
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


@functools.cache
def node_patterns(node: int, sizes: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Every maximal way to fill one node of ``node`` ranks with groups of ``sizes`` (each at
    most ``node``): per pattern, how many groups of each size, in the order of ``sizes``.
    Ranks a pattern leaves over can hold groups of one, which fit anywhere."""
    sizes = tuple(d for d in sizes if 1 < d <= node)
    out: list[tuple[int, ...]] = []

    def fill(i: int, left: int, counts: list[int]) -> None:
        if i == len(sizes):
            if all(left < d for d in sizes):  # maximal: no further group fits
                out.append(tuple(counts))
            return
        for c in range(left // sizes[i], -1, -1):
            counts.append(c)
            fill(i + 1, left - c * sizes[i], counts)
            counts.pop()

    fill(0, node, [])
    return tuple(out)


def place_groups(sizes: Sequence[int], topology: Topology) -> list[int] | None:
    """First rank of each group (sizes in any order) so that every group is a valid block and
    no two overlap; None when they do not fit. Groups larger than a node take whole nodes
    first; the others are packed into the remaining nodes largest first, with an exhaustive
    search when the greedy packing fails. Power-of-two shapes: largest first at increasing
    offsets, which keeps every block aligned."""
    world, node = topology.num_gpus, topology.node
    if sum(sizes) > world:
        return None
    order = sorted(range(len(sizes)), key=lambda g: (-sizes[g], g))
    first = [0] * len(sizes)
    offset = 0
    if topology.group_shapes == GroupShapes.POWER_OF_TWO:
        # decreasing powers of two at increasing offsets stay aligned (the world's size first)
        for g in order:
            first[g], offset = offset, offset + sizes[g]
        return first
    for g in order:
        if sizes[g] > node or sizes[g] == world:
            if sizes[g] % node:
                return None
            first[g], offset = offset, offset + sizes[g]
    local = [g for g in order if sizes[g] <= node and sizes[g] != world]
    bins = list(range(offset // node, topology.num_nodes))
    fill = _pack_nodes([sizes[g] for g in local], node, len(bins))
    if fill is None:
        return None
    used = [0] * len(bins)
    for g, b in zip(local, fill):
        first[g] = bins[b] * node + used[b]
        used[b] += sizes[g]
    return first


def _pack_nodes(items: Sequence[int], node: int, num_bins: int) -> list[int] | None:
    """Bin of each item (sizes in decreasing order) with no bin over ``node``: first fit,
    which aligns powers of two, then a depth-first search over distinct bin loads."""
    load = [0] * num_bins
    where = []
    for d in items:
        b = next((b for b in range(num_bins) if load[b] + d <= node), None)
        if b is None:
            break
        load[b] += d
        where.append(b)
    else:
        return where
    load = [0] * num_bins
    where = [0] * len(items)

    def search(i: int) -> bool:
        if i == len(items):
            return True
        tried = set()
        for b in range(num_bins):
            if load[b] + items[i] <= node and load[b] not in tried:
                tried.add(load[b])
                load[b] += items[i]
                where[i] = b
                if search(i + 1):
                    return True
                load[b] -= items[i]
        return False

    return where if search(0) else None
