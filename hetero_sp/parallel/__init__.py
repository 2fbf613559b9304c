"""Sequence parallelism: the group context, sharding of a group's stream, and the strategies.

Strategies register themselves by name; attention layers look them up through
:func:`softmax_strategy` and :func:`linear_strategy`.
"""

from __future__ import annotations

from collections.abc import Callable

from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.sharding import GroupLayout, Segment, make_layout

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


# Imported last: the strategies use the model's single-rank backends, and the model package
# imports this one (for the registry lookups above).
from hetero_sp.parallel.lasp2 import lasp2_linear_attention  # noqa: E402
from hetero_sp.parallel.zeco import zeco_linear_attention  # noqa: E402

LINEAR_STRATEGIES.update(lasp2=lasp2_linear_attention, zeco=zeco_linear_attention)

__all__ = [
    "GroupLayout",
    "LINEAR_STRATEGIES",
    "SOFTMAX_STRATEGIES",
    "SPContext",
    "Segment",
    "linear_strategy",
    "make_layout",
    "softmax_strategy",
]
