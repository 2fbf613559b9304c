"""Shared pieces of the planner tests: synthetic profiles and cost models, brute force."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hetero_sp.planner.cluster import Link
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.memory import activation_bytes_per_token, count_params, model_state_bytes
from hetero_sp.planner.profile import ComputeFit, Profile
from tests.common import tiny_config


def synthetic_profile(layers: str = "LS", **fit) -> Profile:
    """A profile of the tests' tiny model with round numbers (seconds, bytes/s); ``fit`` may
    set a2, a1, fixed, intra_bw and inter_bw (links inside and between 4-GPU nodes)."""
    a2, a1, fixed = fit.get("a2", 1e-7), fit.get("a1", 1e-4), fit.get("fixed", 1e-3)
    intra_bw, inter_bw = fit.get("intra_bw", 2e9), fit.get("inter_bw", 2e8)
    return Profile(
        label="synthetic test profile",
        source="measured",
        precision="fp32",
        model=tiny_config(layers),
        compute={
            "S": ComputeFit(a2=a2, a1=a1, fixed=fixed),
            "L": ComputeFit(a2=0.0, a1=a1, fixed=fixed),
            "head": ComputeFit(a2=0.0, a1=a1 / 4, fixed=fixed),
        },
        gpus_per_node=4,
        intra_node=Link(latency_s=1e-5, bandwidth_Bps=intra_bw),
        inter_node=Link(latency_s=5e-5, bandwidth_Bps=inter_bw),
    )


def synthetic_cost(
    world: int,
    tokens_per_gpu: int = 4096,
    layers: str = "LS",
    zero_stage: int = 1,
    fit: dict | None = None,
    group_shapes: str = "any",
    gpus_per_node: int | None = None,
    **kwargs,
) -> CostModel:
    """A cost model whose single GPU holds about ``tokens_per_gpu`` tokens."""
    profile = synthetic_profile(layers, **(fit or {}))
    model = profile.model
    state = model_state_bytes(count_params(model), zero_stage, world, "fp32")
    memory = state + activation_bytes_per_token(model, 4) * tokens_per_gpu
    shape = dict(group_shapes=group_shapes)
    if gpus_per_node is not None:
        shape["gpus_per_node"] = gpus_per_node
    topo = profile.topology(world, gpu_memory_bytes=memory, memory_fraction=1.0, **shape)
    return CostModel(profile, topo, zero_stage=zero_stage, **kwargs)


def size_multisets(sizes: Sequence[int], world: int):
    """Multisets of allowed group sizes that use exactly the world (the world-size group only
    alone). Using fewer GPUs never helps, so these are all the group structures worth trying."""

    def rec(rest: int, largest: int):
        if rest == 0:
            yield ()
            return
        for d in sizes:
            if d <= largest and d <= rest and d != world:
                for tail in rec(rest - d, d):
                    yield (d, *tail)

    if world in sizes:
        yield (world,)
    yield from (m for m in rec(world, world) if m)


def brute_force(lengths: Sequence[int], cost: CostModel, homogeneous: bool = False) -> float:
    """The least makespan of one micro-batch over every group structure, strategy pair of each
    group and assignment; with ``homogeneous``, over the structures of one group size only (as
    many groups as fit)."""
    best = float("inf")
    world = cost.topology.num_gpus
    structures = (
        [(d,) * (world // d) for d in cost.sizes]
        if homogeneous
        else size_multisets(cost.sizes, world)
    )
    for sizes in structures:
        # Every group picks its strategy pair too (all pairs, dominated ones included).
        for groups in itertools.product(*(cost.every_kind(d) for d in sizes)):
            for where in itertools.product(range(len(groups)), repeat=len(lengths)):
                members = [
                    [s for s, g in zip(lengths, where) if g == k] for k in range(len(groups))
                ]
                if any(sum(m) > g.max_tokens for m, g in zip(members, groups)):
                    continue
                span = max(g.time(m) for m, g in zip(members, groups) if m)
                best = min(best, span)
    return best


__all__ = ["brute_force", "size_multisets", "synthetic_cost", "synthetic_profile"]
