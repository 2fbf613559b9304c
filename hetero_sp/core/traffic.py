"""Bytes each SP strategy moves per layer call: the one definition the strategies' run-time
counter and the planner's cost model share. Pure arithmetic (no torch), so the planner imports
it without loading the strategies.

Each strategy has a pure function giving the bytes one rank sends and receives for one layer
call, forward and backward separately; the strategies add the same numbers to a run-time
counter as they communicate, and a test checks the two agree. The planner prices groups with
these same functions, so there is one definition of every strategy's traffic.

Conventions: ``tokens_per_rank`` is a rank's shard length (the group's padded stream / P);
``elem_bytes`` the size of one element on the wire. A collective over P ranks counts, per rank,
what leaves it and what arrives at it, excluding its own block (ring algorithms move the same).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hetero_sp.core.heads import ulysses_kv_ranges, ulysses_q_ranges


@dataclass(frozen=True)
class CommBytes:
    """Bytes one rank sends and receives for one layer call."""

    fwd_send: int
    fwd_recv: int
    bwd_send: int
    bwd_recv: int

    @property
    def total(self) -> int:
        return self.fwd_send + self.fwd_recv + self.bwd_send + self.bwd_recv


def ulysses_bytes(
    tokens_per_rank: int,
    size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    elem_bytes: int,
    rank: int | None = None,
) -> CommBytes:
    """Ulysses all-to-all: q, k, v go sequence-sharded -> head-sharded, o comes back.

    Every rank keeps its own block and swaps the rest. Rank r holds ``h_r`` query heads after
    the exchange (``heads.ulysses_q_ranges``: ``num_heads / size`` each when that divides,
    otherwise one more on some ranks). Rank r receives only the KV heads its query heads read
    (``heads.ulysses_kv_ranges``): with fewer KV heads than ranks a KV head is sent to every
    rank that needs it, which can make the KV traffic differ between ranks (e.g. 12 query and
    3 KV heads on 4 ranks). The backward moves dO like q and dQ, dK, dV like o, k, v in
    reverse, so its send and receive are the forward's receive and send.

    ``rank=None`` gives the busiest rank's numbers (each field's maximum over ranks), which
    is what bounds a collective's time; pass a rank for its exact traffic.
    """
    if size == 1:
        return CommBytes(0, 0, 0, 0)
    q_heads = [hi - lo for lo, hi in ulysses_q_ranges(num_heads, num_kv_heads, size)]
    kv_heads = [hi - lo for lo, hi in ulysses_kv_ranges(num_heads, num_kv_heads, size)]

    def one(r: int) -> CommBytes:
        # q leaves with the other ranks' heads of r's tokens and arrives with r's heads of the
        # other ranks' tokens; o goes the other way, so q and o together move the same both ways
        qo = tokens_per_rank * head_dim * (num_heads - q_heads[r] + (size - 1) * q_heads[r])
        kv_send = 2 * tokens_per_rank * head_dim * (sum(kv_heads) - kv_heads[r])
        kv_recv = 2 * (size - 1) * tokens_per_rank * head_dim * kv_heads[r]
        send, recv = (qo + kv_send) * elem_bytes, (qo + kv_recv) * elem_bytes
        return CommBytes(fwd_send=send, fwd_recv=recv, bwd_send=recv, bwd_recv=send)

    if rank is not None:
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside a group of {size}")
        return one(rank)
    every = [one(r) for r in range(size)]
    return CommBytes(*(max(getattr(c, f.name) for c in every) for f in fields(CommBytes)))


def allgather_kv_bytes(
    tokens_per_rank: int, size: int, num_kv_heads: int, head_dim: int, elem_bytes: int
) -> CommBytes:
    """All-gather of K and V (forward); reduce-scatter of dK and dV (backward)."""
    if size == 1:
        return CommBytes(0, 0, 0, 0)
    block = 2 * tokens_per_rank * num_kv_heads * head_dim * elem_bytes
    moved = (size - 1) * block
    return CommBytes(moved, moved, moved, moved)


def state_bytes(num_heads: int, head_k: int, head_v: int, elem_bytes: int, pieces: int = 1) -> int:
    """One rank's linear-attention summary on the wire: per piece and head, a K x V state and
    the factor that decays the incoming state across the piece (zeroed state and factor where
    the piece's last document does not continue, so no flags travel). ``elem_bytes`` is the
    wire dtype: the states travel in fp32 (fp64 for fp64 models) whatever the model dtype."""
    return pieces * num_heads * (head_k * head_v + 1) * elem_bytes


def lasp2_bytes(
    size: int, num_heads: int, head_k: int, head_v: int, elem_bytes: int, pieces: int = 1
) -> CommBytes:
    """LASP-2: one all-gather of every rank's state summaries (``state_bytes``); the backward
    gathers the gradients of the incoming states, K x V per head and piece (the decay factors
    are kept from the forward). Independent of the sequence length. ``pieces`` is the most
    pieces any rank of the group holds (``PieceTable.stride``; 1 for the contiguous layout, 2
    for one long document under the head-tail layout): every rank sends that many rows."""
    if size == 1:
        return CommBytes(0, 0, 0, 0)
    fwd = (size - 1) * state_bytes(num_heads, head_k, head_v, elem_bytes, pieces)
    bwd = (size - 1) * pieces * num_heads * head_k * head_v * elem_bytes
    return CommBytes(fwd, fwd, bwd, bwd)


def zeco_link_bytes(
    num_send: int, num_recv: int, num_heads: int, head_k: int, head_v: int, elem_bytes: int
) -> CommBytes:
    """ZeCO All-Scan on any layout: a rank sends one state for each of its pieces whose
    successor in the stream another rank holds, and receives one for each piece whose
    predecessor another rank holds (``linear_pieces.zeco_links`` counts them); the backward
    scan runs the same links the other way. Cumulative decays are not exchanged: each rank
    folds its own in. Every link carries a state, zeros included, so traffic does not depend
    on where documents end."""
    one = num_heads * head_k * head_v * elem_bytes
    send, recv = num_send * one, num_recv * one
    return CommBytes(fwd_send=send, fwd_recv=recv, bwd_send=recv, bwd_recv=send)


def zeco_bytes(
    rank: int,
    size: int,
    num_heads: int,
    head_k: int,
    head_v: int,
    elem_bytes: int,
    pieces: int = 1,
) -> CommBytes:
    """``zeco_link_bytes`` for the two layouts of one long document. Contiguous
    (``pieces=1``): a rank receives one state from its predecessor and sends one to its
    successor (the first rank receives nothing, the last sends nothing). Head-tail
    (``pieces=2``): the chain runs 0 -> P-1 over the head chunks, passes locally on rank P-1,
    and returns P-1 -> 0 over the tail chunks, so inner ranks send and receive two states.
    """
    if size == 1:
        return CommBytes(0, 0, 0, 0)
    if pieces not in (1, 2):
        raise ValueError(
            f"pieces must be 1 (contiguous) or 2 (one document head-tail), got {pieces}; "
            "count the links of other layouts with linear_pieces.zeco_links"
        )
    has_next, has_prev = int(rank < size - 1), int(rank > 0)
    if pieces == 1:
        links = has_next, has_prev
    else:
        links = has_next + has_prev, has_next + has_prev
    return zeco_link_bytes(*links, num_heads, head_k, head_v, elem_bytes)
