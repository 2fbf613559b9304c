"""Sequence parallelism: the group context, sharding of a group's stream, and the strategies.

Strategies are registered by name; attention layers look them up through
:func:`softmax_strategy` and :func:`linear_strategy`, and the engine asks
:func:`layout_kind_for` how to shard a group's stream for the softmax strategy it runs.
"""

from __future__ import annotations

from collections.abc import Callable

from hetero_sp.core.heads import UnsupportedGroupSize, ulysses_supported
from hetero_sp.core.names import SOFTMAX_LAYOUT, LinearSP, SoftmaxSP, values
from hetero_sp.parallel.allgather_kv import allgather_kv_attention
from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.groups import GroupPool, SPGroup, plan_blocks
from hetero_sp.parallel.lasp2 import lasp2_linear_attention
from hetero_sp.parallel.packed import PackedSeqs
from hetero_sp.parallel.sharding import (
    GroupLayout,
    Segment,
    causal_pairs,
    make_layout,
)
from hetero_sp.parallel.ulysses import ulysses_attention
from hetero_sp.parallel.zeco import zeco_linear_attention


def _lookup(table: dict[str, Callable], kind: str, name: str) -> Callable:
    if name not in table:
        known = ", ".join(sorted(table)) or "none yet"
        raise ValueError(
            f"{kind} sequence-parallel strategy {name!r} is unknown; available: {known}"
        )
    return table[name]


def softmax_strategy(name: str) -> Callable:
    return _lookup(SOFTMAX_STRATEGIES, "softmax", name)


def linear_strategy(name: str) -> Callable:
    return _lookup(LINEAR_STRATEGIES, "linear-attention", name)


def layout_kind_for(softmax_strategy: str) -> str:
    """Layout kind (``make_layout``'s ``kind``) for a group running this softmax strategy."""
    if softmax_strategy not in values(SoftmaxSP):
        known = ", ".join(sorted(values(SoftmaxSP)))
        raise ValueError(f"softmax strategy {softmax_strategy!r} is unknown; available: {known}")
    return SOFTMAX_LAYOUT[SoftmaxSP(softmax_strategy)].value


SOFTMAX_STRATEGIES = {
    SoftmaxSP.ULYSSES.value: ulysses_attention,
    SoftmaxSP.ALLGATHER_KV.value: allgather_kv_attention,
}
LINEAR_STRATEGIES = {
    LinearSP.LASP2.value: lasp2_linear_attention,
    LinearSP.ZECO.value: zeco_linear_attention,
}

__all__ = [
    "GroupLayout",
    "GroupPool",
    "LINEAR_STRATEGIES",
    "PackedSeqs",
    "SOFTMAX_STRATEGIES",
    "SPContext",
    "SPGroup",
    "Segment",
    "UnsupportedGroupSize",
    "allgather_kv_attention",
    "causal_pairs",
    "lasp2_linear_attention",
    "layout_kind_for",
    "linear_strategy",
    "make_layout",
    "plan_blocks",
    "softmax_strategy",
    "ulysses_attention",
    "ulysses_supported",
    "zeco_linear_attention",
]
