"""The run's topology in one line: nodes, processes per node, backend and device, the SP group
shapes (which sizes of groups a plan may use) and how many process groups are kept. Pure: the
trainer prints it for the world it joined, the dry run for the world it plans for, from the
same numbers.
"""

from __future__ import annotations

import os

from hetero_sp.config import Config
from hetero_sp.core.errors import UserError
from hetero_sp.parallel.groups import DEFAULT_MAX_GROUPS
from hetero_sp.planner.cluster import Topology


def node_size_for(cfg: Config, world_size: int) -> int:
    """Ranks per node the SP groups respect: ``parallel.node_size``, else torchrun's
    LOCAL_WORLD_SIZE, else the whole world; never more than the world."""
    size = cfg.parallel.node_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return min(size, world_size)


def describe_shapes(world_size: int, node_size: int, group_shapes: str, max_groups: int) -> str:
    """``group shapes any: sizes 1-4 inside a node, 8 12 on whole nodes; ...`` for this world."""
    topo = Topology(num_gpus=world_size, gpus_per_node=node_size, group_shapes=group_shapes)
    sizes = topo.group_sizes()
    inside = [d for d in sizes if d <= topo.node]
    whole = [d for d in sizes if d > topo.node]
    text = f"group shapes {group_shapes}: sizes {_span(inside)} inside a node"
    if whole:
        text += f", {' '.join(map(str, whole))} on whole nodes"
    return text + f"; process groups made on first use, at most {max_groups} kept"


def _span(sizes: list[int]) -> str:
    if len(sizes) > 2 and sizes == list(range(sizes[0], sizes[-1] + 1)):
        return f"{sizes[0]}-{sizes[-1]}"
    return " ".join(map(str, sizes))


def describe_topology(
    world_size: int,
    *,
    nodes: int,
    per_node: int,
    node_size: int,
    sp_mode: str,
    group_shapes: str = "any",
    max_groups: int = DEFAULT_MAX_GROUPS,
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
        f"{describe_shapes(world_size, node_size, group_shapes, max_groups)}; plan mode {sp_mode}"
    )


def torchrun_nodes(world_size: int) -> tuple[int, int]:
    """(nodes, processes per node) of this torchrun launch; (1, world size) without torchrun."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", max(1, world_size // max(per_node, 1))))
    return nodes, per_node
