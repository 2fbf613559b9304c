"""Which attention heads each rank of a Ulysses group holds: pure arithmetic shared by the
strategy, its byte formula and the planner's head limits.

Ulysses gives rank r the query heads ``[r H // P, (r + 1) H // P)`` of H query heads on P ranks:
``H / P`` each when P divides H, otherwise ``floor(H / P)`` or one more (the busiest ranks hold
``ceil(H / P)``, which is what the planner prices), so any group of at most H ranks works. Query
head ``i`` reads KV head ``i // (num_heads / num_kv_heads)``; rank r receives exactly the KV
heads its query heads read, no more. With fewer KV heads than ranks (or a KV group that
straddles two ranks) a KV head goes to several ranks.
"""

from __future__ import annotations

import functools

from hetero_sp.core.errors import UserError


class UnsupportedGroupSize(UserError):
    """A group size a strategy cannot run for this model; the message says what to change."""


def ulysses_supported(num_heads: int, num_kv_heads: int, size: int) -> bool:
    """True when a Ulysses group of ``size`` ranks can run a layer with these heads."""
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        return False
    return 1 <= size <= num_heads


def busiest_heads(num_heads: int, size: int) -> int:
    """Query heads of the busiest rank of a Ulysses group: ``ceil(num_heads / size)``."""
    return -(-num_heads // size)


def check_ulysses_heads(num_heads: int, num_kv_heads: int, size: int) -> None:
    """Raise :class:`UnsupportedGroupSize` unless :func:`ulysses_supported`."""
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(
            f"query heads ({num_heads}) must be a positive multiple of KV heads ({num_kv_heads})"
        )
    if not 1 <= size <= num_heads:
        raise UnsupportedGroupSize(
            f"Ulysses gives every rank of the group at least one query head, but this model has "
            f"{num_heads} query heads ({num_kv_heads} KV heads) and the group has {size} ranks; "
            f"use groups of at most {num_heads} ranks or the allgather_kv softmax strategy for "
            "this group"
        )


@functools.cache
def ulysses_q_ranges(num_heads: int, num_kv_heads: int, size: int) -> tuple[tuple[int, int], ...]:
    """Query heads ``[lo, hi)`` each rank holds after the all-to-all."""
    check_ulysses_heads(num_heads, num_kv_heads, size)
    return tuple((r * num_heads // size, (r + 1) * num_heads // size) for r in range(size))


@functools.cache
def ulysses_kv_ranges(num_heads: int, num_kv_heads: int, size: int) -> tuple[tuple[int, int], ...]:
    """KV heads ``[lo, hi)`` each rank receives: those its query heads read."""
    group = num_heads // num_kv_heads
    return tuple(
        (lo // group, (hi - 1) // group + 1)
        for lo, hi in ulysses_q_ranges(num_heads, num_kv_heads, size)
    )


@functools.cache
def ulysses_kv_of_q(
    num_heads: int, num_kv_heads: int, size: int, rank: int
) -> tuple[int, ...] | None:
    """For each local query head, its local KV head; None when the plain GQA layout (local query
    head j reads local KV head ``j // (h / g)``) already says so."""
    group = num_heads // num_kv_heads
    q_lo, q_hi = ulysses_q_ranges(num_heads, num_kv_heads, size)[rank]
    kv_lo, kv_hi = ulysses_kv_ranges(num_heads, num_kv_heads, size)[rank]
    mapping = tuple(i // group - kv_lo for i in range(q_lo, q_hi))
    h, g = q_hi - q_lo, kv_hi - kv_lo
    if h % g == 0 and mapping == tuple(j // (h // g) for j in range(h)):
        return None
    return mapping
