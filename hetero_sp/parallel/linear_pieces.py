"""How one rank's shard looks to linear-attention sequence parallelism.

A rank holds one or more pieces of its group's stream (``sharding``), not necessarily as many
as the other ranks. What crosses a piece border
is the state of the document running over it. For piece p in stream order, with S_p the state
of its last segment started from zero and G_p that segment's summed log-decay:

    S_in(0) = 0,    S_in(p + 1) = u_p + b_p S_in(p)
    u_p = S_p                      if p's last segment continues into p + 1, else 0
    b_p = exp(G_p)                 if moreover p is that one segment, continuing from p - 1
                                   (the incoming state flows through the whole piece), else 0

and the tokens of a piece's first segment, when it continues a document, get
``o_t += scale * (q_t exp(gc_t)) S_in(p)``. Both strategies compute (u, b) locally, differ
only in how S_in travels, and share this table and the local work (``linear_local``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hetero_sp.parallel.sharding import GroupLayout

if TYPE_CHECKING:
    from hetero_sp.parallel.packed import PackedSeqs


@dataclass(frozen=True)
class Piece:
    """One of a rank's pieces; token ranges are rank-local."""

    stream_index: int
    first: tuple[int, int]
    """Local token range of the piece's first segment."""
    last: tuple[int, int]
    """Local token range of its last segment (the same as ``first`` for a one-segment piece)."""
    last_segment: int
    """Index of the last segment among the rank's segments: its row of the local final states."""
    starts: bool
    """The first segment continues a document from the previous piece: it takes S_in."""
    carries: bool
    """The last segment continues into the next piece: it sends u = S_p."""
    passes: bool
    """One segment that continues from the previous piece: S_in flows through, b = exp(G)."""


@dataclass(frozen=True)
class PieceTable:
    rank: int
    pieces: tuple[Piece, ...]
    """This rank's pieces in local order (which is also their stream order)."""
    holders: tuple[tuple[int, int], ...]
    """(rank, local piece index) of every piece of the group, in stream order."""
    stride: int
    """The most pieces any rank of the group holds: rows per rank of a gathered summary."""

    @property
    def num_pieces(self) -> int:
        return len(self.pieces)

    def holder(self, stream_index: int) -> tuple[int, int] | None:
        """Who holds the piece at ``stream_index``; None outside the stream."""
        if 0 <= stream_index < len(self.holders):
            return self.holders[stream_index]
        return None


@functools.lru_cache(maxsize=256)
def piece_table(layout: GroupLayout, rank: int) -> PieceTable:
    """The pieces of ``rank`` under ``layout`` (host arithmetic, cached: one layout serves every layer of a step)."""
    pieces, offset, seen = [], 0, 0
    segments = layout.segments(rank)
    holders = layout.stream_order()
    stream_index = {holder: i for i, holder in enumerate(holders)}
    for i, (start, end) in enumerate(layout.pieces[rank]):
        mine = [s for s in segments if start <= s.start < end]
        seen += len(mine)
        ranges, pos = [], offset
        for seg in mine:
            ranges.append((pos, pos + seg.end - seg.start))
            pos += seg.end - seg.start
        offset = pos
        first, last = mine[0], mine[-1]
        pieces.append(
            Piece(
                stream_index=stream_index[rank, i],
                first=ranges[0],
                last=ranges[-1],
                last_segment=seen - 1,
                starts=first.continues_prev,
                carries=last.continues_next,
                passes=len(mine) == 1 and first.continues_prev,
            )
        )
    return PieceTable(
        rank=rank,
        pieces=tuple(pieces),
        holders=tuple(holders),
        stride=max(len(p) for p in layout.pieces),
    )


def zeco_links(table: PieceTable) -> tuple[int, int]:
    """(states sent, states received) by this rank in one direction of the ZeCO scan: one per
    piece whose successor (predecessor) in the stream another rank holds."""
    sends = recvs = 0
    for piece in table.pieces:
        nxt, prev = table.holder(piece.stream_index + 1), table.holder(piece.stream_index - 1)
        sends += nxt is not None and nxt[0] != table.rank
        recvs += prev is not None and prev[0] != table.rank
    return sends, recvs


def check_linear_inputs(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    seqs: PackedSeqs,
    strategy: str,
) -> None:
    """Raise ValueError unless the tensors are this rank's shard of ``seqs.sp``'s layout."""
    sp = seqs.sp
    if sp is None:
        raise ValueError(
            f"{strategy} needs a sequence-parallel context: build the shard's metadata with "
            "PackedSeqs.for_rank(sp)"
        )
    if tuple(seqs.cu_seqlens_list) != tuple(sp.layout.local_cu_seqlens(sp.rank)):
        raise ValueError(
            f"{strategy}: seqs.cu_seqlens does not match rank {sp.rank}'s segments of the "
            "layout; build it with PackedSeqs.for_rank(sp)"
        )
    tokens = sp.layout.tokens_per_rank
    if q_THK.dim() != 3 or q_THK.shape[0] != tokens:
        raise ValueError(
            f"{strategy}: q must be [T, H, K] with T = {tokens} tokens of rank {sp.rank}'s "
            f"shard, got {tuple(q_THK.shape)}"
        )
    if k_THK.shape != q_THK.shape:
        raise ValueError(f"{strategy}: k {tuple(k_THK.shape)} must match q {tuple(q_THK.shape)}")
    if v_THV.dim() != 3 or v_THV.shape[:2] != q_THK.shape[:2]:
        raise ValueError(
            f"{strategy}: v must be [T, H, V] with T, H = {tuple(q_THK.shape[:2])}, "
            f"got {tuple(v_THV.shape)}"
        )
    if not q_THK.is_floating_point() or k_THK.dtype != q_THK.dtype or v_THV.dtype != q_THK.dtype:
        raise ValueError(
            f"{strategy}: q, k and v must share one floating dtype, got "
            f"{q_THK.dtype}, {k_THK.dtype}, {v_THV.dtype}"
        )
    if g_TH is not None and not g_TH.is_floating_point():
        raise ValueError(f"{strategy}: g must be a floating tensor (log-decay), got {g_TH.dtype}")
    if g_TH is not None and g_TH.shape != q_THK.shape[:2]:
        raise ValueError(
            f"{strategy}: g must be [T, H] = {tuple(q_THK.shape[:2])} or None, "
            f"got {tuple(g_TH.shape)}"
        )
