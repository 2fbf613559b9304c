"""Sequence parallelism: the group context, sharding of a group's stream, and the strategies.

Strategies are registered by name; attention layers look them up through
:func:`softmax_strategy` and :func:`linear_strategy`, and the engine asks
:func:`layout_kind_for` how to shard a group's stream for the softmax strategy it runs.
"""

from __future__ import annotations

from collections.abc import Callable

from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.groups import GroupPool, SPGroup, build_group_pool, pool_blocks
from hetero_sp.parallel.heads import UnsupportedGroupSize, ulysses_supported
from hetero_sp.parallel.sharding import (
    GroupLayout,
    Segment,
    causal_pairs,
    make_layout,
)

SOFTMAX_STRATEGIES: dict[str, Callable] = {}
LINEAR_STRATEGIES: dict[str, Callable] = {}


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


SOFTMAX_LAYOUTS: dict[str, str] = {"ulysses": "contiguous", "allgather_kv": "zigzag"}
"""The layout each softmax strategy wants: Ulysses attends over whole documents on every rank,
so it needs no balancing and the contiguous layout saves two reorderings per call; all-gather
K/V balances causal work with the head-tail (zigzag) layout."""


def layout_kind_for(softmax_strategy: str) -> str:
    """Layout kind (``make_layout``'s ``kind``) for a group running this softmax strategy."""
    if softmax_strategy not in SOFTMAX_LAYOUTS:
        known = ", ".join(sorted(SOFTMAX_LAYOUTS))
        raise ValueError(f"softmax strategy {softmax_strategy!r} is unknown; available: {known}")
    return SOFTMAX_LAYOUTS[softmax_strategy]


# The strategies import the model's attention backends, whose package imports this one: they
# are registered last, once every name above exists, so either package may be imported first.
from hetero_sp.parallel.allgather_kv import allgather_kv_attention  # noqa: E402
from hetero_sp.parallel.lasp2 import lasp2_linear_attention  # noqa: E402
from hetero_sp.parallel.ulysses import ulysses_attention  # noqa: E402
from hetero_sp.parallel.zeco import zeco_linear_attention  # noqa: E402

SOFTMAX_STRATEGIES.update(ulysses=ulysses_attention, allgather_kv=allgather_kv_attention)
LINEAR_STRATEGIES.update(lasp2=lasp2_linear_attention, zeco=zeco_linear_attention)

__all__ = [
    "GroupLayout",
    "GroupPool",
    "LINEAR_STRATEGIES",
    "SOFTMAX_LAYOUTS",
    "SOFTMAX_STRATEGIES",
    "SPContext",
    "SPGroup",
    "Segment",
    "UnsupportedGroupSize",
    "allgather_kv_attention",
    "build_group_pool",
    "causal_pairs",
    "lasp2_linear_attention",
    "layout_kind_for",
    "linear_strategy",
    "make_layout",
    "pool_blocks",
    "softmax_strategy",
    "ulysses_attention",
    "ulysses_supported",
    "zeco_linear_attention",
]
