"""How a group's packed stream of documents is cut into per-rank shards.

A sequence-parallel group of P ranks runs one packed stream: the documents the plan gave it,
back to back, described by ``cu_seqlens`` (global to the group). The stream is padded at its
end to a multiple of P (``contiguous``) or 2P (``zigzag``) so every rank holds the same number
of tokens, which the equal-split collectives need; at most P - 1 (2P - 1) padding tokens, which
form a document of their own and carry no loss. Documents themselves are never padded.

- ``contiguous``: rank r holds tokens ``[r * T/P, (r + 1) * T/P)``.
- ``zigzag``: the stream is cut into 2P equal chunks and rank r holds chunks r and 2P - 1 - r
  (head-tail), which evens out causal attention work over the ranks for long documents.

A rank's tokens form "pieces" (1 or 2 global ranges); each piece is cut at document borders
into "segments", the rank-local documents the kernels see through the local ``cu_seqlens``.
Everything here is pure host-side arithmetic that every rank computes identically.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

LAYOUTS = ("contiguous", "zigzag")


@dataclass(frozen=True)
class Segment:
    """One rank-local run of tokens of one document, ``[start, end)`` in group-stream indices."""

    doc: int
    start: int
    end: int
    continues_prev: bool
    """The document has tokens before ``start``, held by an earlier piece."""
    continues_next: bool
    """The document has tokens after ``end``, held by a later piece."""


@dataclass(frozen=True)
class GroupLayout:
    """The shards of one group's stream. Build it with :func:`make_layout`."""

    size: int
    kind: str
    cu_seqlens: tuple[int, ...]
    """Documents of the padded stream; when ``num_pad > 0`` the last one is the padding."""
    num_pad: int
    pieces: tuple[tuple[tuple[int, int], ...], ...]
    """Per rank, its global token ranges in local order."""

    @property
    def num_tokens(self) -> int:
        return self.cu_seqlens[-1]

    @property
    def num_real_tokens(self) -> int:
        return self.num_tokens - self.num_pad

    @property
    def tokens_per_rank(self) -> int:
        return self.num_tokens // self.size

    @property
    def num_docs(self) -> int:
        return len(self.cu_seqlens) - 1

    def doc_of(self, token: int) -> int:
        """Document holding a global token index (binary search over ``cu_seqlens``)."""
        lo, hi = 0, self.num_docs - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.cu_seqlens[mid] <= token:
                lo = mid
            else:
                hi = mid - 1
        while self.cu_seqlens[lo + 1] == self.cu_seqlens[lo]:  # skip empty documents
            lo += 1
        return lo

    @functools.cache  # noqa: B019 - the layout is frozen and small; caching per instance is intended
    def segments(self, rank: int) -> tuple[Segment, ...]:
        """Rank-local segments in local order."""
        out = []
        for start, end in self.pieces[rank]:
            pos = start
            while pos < end:
                doc = self.doc_of(pos)
                seg_end = min(end, self.cu_seqlens[doc + 1])
                out.append(
                    Segment(
                        doc=doc,
                        start=pos,
                        end=seg_end,
                        continues_prev=pos > self.cu_seqlens[doc],
                        continues_next=seg_end < self.cu_seqlens[doc + 1],
                    )
                )
                pos = seg_end
        return tuple(out)

    def local_cu_seqlens(self, rank: int) -> list[int]:
        cu = [0]
        for seg in self.segments(rank):
            cu.append(cu[-1] + seg.end - seg.start)
        return cu

    def local_index(self, rank: int, device: torch.device | None = None) -> torch.Tensor:
        """Group-stream index of every local token, shape [T_local] (int64)."""
        return torch.cat([torch.arange(s, e, device=device) for s, e in self.pieces[rank]]).long()

    def local_positions(self, rank: int, device: torch.device | None = None) -> torch.Tensor:
        """Position of every local token inside its document, shape [T_local] (int64)."""
        parts = [
            torch.arange(seg.start, seg.end, device=device) - self.cu_seqlens[seg.doc]
            for seg in self.segments(rank)
        ]
        return torch.cat(parts).long() if parts else torch.zeros(0, dtype=torch.long)

    def stream_order(self) -> list[tuple[int, int]]:
        """(rank, piece index) of every piece, in group-stream order."""
        keyed = [
            (start, rank, i)
            for rank, pieces in enumerate(self.pieces)
            for i, (start, _) in enumerate(pieces)
        ]
        return [(rank, i) for _, rank, i in sorted(keyed)]

    def concat_index(self, device: torch.device | None = None) -> torch.Tensor:
        """Group-stream index of the rank-ordered concatenation of all shards, shape [T]."""
        return torch.cat([self.local_index(r, device) for r in range(self.size)])


def make_layout(
    doc_lengths: list[int] | tuple[int, ...], size: int, kind: str = "contiguous"
) -> GroupLayout:
    """Shard the documents ``doc_lengths`` (in stream order) over a group of ``size`` ranks.

    A group of one rank always gets the contiguous layout.
    """
    if size < 1:
        raise ValueError(f"group size must be >= 1, got {size}")
    if kind not in LAYOUTS:
        raise ValueError(f"layout kind {kind!r} is unknown; allowed: {', '.join(LAYOUTS)}")
    if size == 1:
        kind = "contiguous"  # one rank holds the whole stream; nothing to balance
    if not doc_lengths:
        raise ValueError("a group needs at least one document, got none")
    if any(n <= 0 for n in doc_lengths):
        bad = next(i for i, n in enumerate(doc_lengths) if n <= 0)
        raise ValueError(f"document {bad} has length {doc_lengths[bad]}; lengths must be >= 1")
    cu = [0]
    for n in doc_lengths:
        cu.append(cu[-1] + int(n))
    parts = size if kind == "contiguous" else 2 * size
    num_pad = (-cu[-1]) % parts
    if num_pad:
        cu.append(cu[-1] + num_pad)
    chunk = cu[-1] // parts
    if kind == "contiguous":
        pieces = tuple(((r * chunk, (r + 1) * chunk),) for r in range(size))
    else:
        pieces = tuple(
            (
                (r * chunk, (r + 1) * chunk),
                ((parts - 1 - r) * chunk, (parts - r) * chunk),
            )
            for r in range(size)
        )
    return GroupLayout(size=size, kind=kind, cu_seqlens=tuple(cu), num_pad=num_pad, pieces=pieces)


def causal_pairs(layout: GroupLayout, rank: int) -> int:
    """Query-key pairs a rank computes when its queries attend causally over their documents
    (what all-gather K/V does): the measure of its attention FLOPs.

    A segment of q queries ending k tokens after its document's start sees, bottom-right
    aligned, ``k - q + 1, ..., k`` keys: ``q k - q (q - 1) / 2`` pairs.
    """
    total = 0
    for seg in layout.segments(rank):
        q, k = seg.end - seg.start, seg.end - layout.cu_seqlens[seg.doc]
        total += q * k - q * (q - 1) // 2
    return total


def padding_metrics(layouts: list[GroupLayout] | tuple[GroupLayout, ...]) -> dict[str, float]:
    """Padding of a step's groups, as flat metrics (``padding/tokens``, ``padding/fraction`` of
    all tokens the groups run)."""
    pad = sum(layout.num_pad for layout in layouts)
    total = sum(layout.num_tokens for layout in layouts)
    return {"padding/tokens": pad, "padding/fraction": pad / total if total else 0.0}
