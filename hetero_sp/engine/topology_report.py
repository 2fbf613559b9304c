"""The run's topology in one line: nodes, processes per node, backend and device, and the SP
group pool (which blocks of ranks a plan may use). Pure: the trainer prints it for the world it
joined, the dry run for the world it plans for, from the same numbers.
"""

from __future__ import annotations

import os

from hetero_sp.config import Config
from hetero_sp.core.errors import UserError
from hetero_sp.parallel.groups import pool_blocks


def node_size_for(cfg: Config, world_size: int) -> int:
    """Ranks per node the SP groups respect: ``parallel.node_size``, else torchrun's
    LOCAL_WORLD_SIZE, else the whole world; never more than the world."""
    size = cfg.parallel.node_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return min(size, world_size)


def pool_node_size(node_size: int, world_size: int) -> int | None:
    """The node size :func:`~hetero_sp.parallel.groups.build_group_pool` takes: None when the
    whole world is one node (no group can cross a node boundary then)."""
    return node_size if node_size < world_size else None


def _blocks_text(firsts: list[int], size: int) -> str:
    spans = [f"{f}-{f + size - 1}" for f in firsts]
    if len(spans) > 4:
        spans = [spans[0], spans[1], "...", spans[-1]]
    return " ".join(spans)


def describe_pool(world_size: int, node_size: int) -> str:
    """``size 2: 0-1 2-3 | size 4: 0-3`` for the pool of ``world_size`` ranks and this node size."""
    by_size: dict[int, list[int]] = {}
    for first, size in pool_blocks(world_size, pool_node_size(node_size, world_size)):
        by_size.setdefault(size, []).append(first)
    parts = [f"size 1: {world_size} single rank{'s' if world_size > 1 else ''}"]
    parts += [
        f"size {size}: {len(firsts)} group{'s' if len(firsts) > 1 else ''} "
        f"({_blocks_text(firsts, size)})"
        for size, firsts in by_size.items()
    ]
    return " | ".join(parts)


def describe_topology(
    world_size: int,
    *,
    nodes: int,
    per_node: int,
    node_size: int,
    sp_mode: str,
    backend: str | None = None,
    device: str | None = None,
) -> str:
    """One line: ``8 ranks = 2 nodes x 4 processes; backend nccl on NVIDIA H100; ...`` (the
    backend part only when ``backend`` is given: a dry run starts none)."""
    if nodes * per_node != world_size:
        raise UserError(
            f"{nodes} nodes x {per_node} processes is not the world size {world_size}; "
            "launch the same number of processes on every node"
        )
    source = "parallel.node_size" if node_size != per_node else "processes per node"
    where = f"backend {backend} on {device}; " if backend is not None else ""
    return (
        f"{world_size} rank{'s' if world_size > 1 else ''} = {nodes} node{'s' if nodes > 1 else ''}"
        f" x {per_node} process{'es' if per_node > 1 else ''}; {where}"
        f"SP node size {node_size} ({source}); "
        f"group pool: {describe_pool(world_size, node_size)}; plan mode {sp_mode}"
    )


def torchrun_nodes(world_size: int) -> tuple[int, int]:
    """(nodes, processes per node) of this torchrun launch; (1, world size) without torchrun."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", max(1, world_size // max(per_node, 1))))
    return nodes, per_node
