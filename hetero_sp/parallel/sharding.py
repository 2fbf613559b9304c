"""How a group's packed stream of documents is cut into per-rank shards.

A sequence-parallel group of P ranks runs one packed stream: the documents the plan gave it,
back to back, described by ``cu_seqlens`` (global to the group). The stream is padded at its
end to a multiple of P so every rank holds the same number of tokens, which the equal-split
collectives need: at most P - 1 padding tokens, which form a document of their own and carry
no loss. Documents themselves are never padded.

- ``contiguous``: rank r holds tokens ``[r * T/P, (r + 1) * T/P)``.
- ``zigzag`` (head-tail, for all-gather K/V, whose causal work grows with a token's position
  in its document): every *long* document is cut into 2P near-equal chunks of its own and rank
  r holds chunks r and 2P - 1 - r, so each rank does the same share of that document's causal
  work. The other documents (and the padding) form the *filler*, dealt head-tail too: ranks
  0 .. P-1 take its head in order, ranks P-1 .. 0 its tail, each as many tokens as its long
  chunks leave room for. Documents are taken as long, longest first, while one holds a good share
  of a rank's share of the filler's causal work (``LONG_WORK_SHARE``); documents of similar
  size stay in the filler, where dealing them evens out their work, which keeps the number of
  pieces (and the linear-attention states exchanged per piece) small.

A rank's tokens form "pieces" (global ranges, in stream order); each piece is cut at document
borders into "segments", the rank-local documents the kernels see through the local
``cu_seqlens``. Everything here is pure host-side arithmetic that every rank computes
identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hetero_sp.core.names import Layout, values

LAYOUTS = values(Layout)


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
    long_docs: tuple[int, ...] = ()
    """Documents cut head-tail on their own (``zigzag``)."""
    _segments: dict[int, tuple[Segment, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """:meth:`segments` per rank, kept on the layout: it goes when the layout goes (the engine
    builds layouts every micro-batch, so a cache shared by all of them would only grow)."""

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

    def segments(self, rank: int) -> tuple[Segment, ...]:
        """Rank-local segments in local order."""
        if rank not in self._segments:
            self._segments[rank] = self._cut_segments(rank)
        return self._segments[rank]

    def _cut_segments(self, rank: int) -> tuple[Segment, ...]:
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
    num_pad = (-cu[-1]) % size
    if num_pad:
        cu.append(cu[-1] + num_pad)
    per_rank = cu[-1] // size
    long_docs: tuple[int, ...] = ()
    if kind == "contiguous":
        pieces = tuple(((r * per_rank, (r + 1) * per_rank),) for r in range(size))
    else:
        long_docs = tuple(sorted(_long_documents(cu, len(doc_lengths), size)))
        pieces = _head_tail_pieces(cu, long_docs, size)
    return GroupLayout(
        size=size,
        kind=kind,
        cu_seqlens=tuple(cu),
        num_pad=num_pad,
        pieces=pieces,
        long_docs=long_docs,
    )


LONG_WORK_SHARE = 1 / 4
"""A document is long when its causal work is at least this share of one rank's share of the
filler's work (the filler left once the longer documents are taken out): whole on one rank it
would unbalance the ranks. Over 315 random mixes of 1-40 documents (lognormal, tail to 128K,
at least 2K tokens per rank) on 2-8 ranks, the idlest rank did at most 1.6% less causal work
than the busiest (p90 0.8%), with at most 51 pieces per rank (p50 17). Cutting only documents
of at least a chunk of the filler (1 / 2P of its tokens) left up to 62% (p90 23%)."""

FILLER_WORK_SHARE = 1 / 32
"""Documents stop being cut on their own once the filler's whole causal work is at most this
share of one rank's: even all on one rank, it could not unbalance the ranks by more."""


def _long_documents(cu: list[int], num_real: int, size: int) -> set[int]:
    """Documents cut head-tail on their own, longest first, while one holds at least
    ``LONG_WORK_SHARE`` of a rank's share of the filler's causal work and that work still
    matters (``FILLER_WORK_SHARE``)."""
    lengths = [cu[d + 1] - cu[d] for d in range(num_real)]
    work = [n * (n + 1) // 2 for n in lengths]  # causal query-key pairs of a whole document
    per_rank_work = sum(work) / size
    filler_work, chosen = sum(work), set()
    for doc in sorted(range(num_real), key=lambda d: -lengths[d]):
        if filler_work <= FILLER_WORK_SHARE * per_rank_work or lengths[doc] < 2 * size:
            break
        if work[doc] * size < LONG_WORK_SHARE * filler_work:
            break
        chosen.add(doc)
        filler_work -= work[doc]
    return chosen


def _head_tail_pieces(cu: list[int], long_docs: tuple[int, ...], size: int) -> tuple:
    per_rank = cu[-1] // size
    ranges: list[list[tuple[int, int]]] = [[] for _ in range(size)]
    held = [0] * size  # tokens of long documents per rank, kept within one of each other
    for doc in long_docs:
        base, extra = divmod(cu[doc + 1] - cu[doc], 2 * size)
        add = [0] * size
        for _ in range(extra):  # one token at a time to the emptiest rank, at most 2 each
            r = min((r for r in range(size) if add[r] < 2), key=lambda r: (held[r] + add[r], r))
            add[r] += 1
        pos = cu[doc]
        for c in range(2 * size):
            r = c if c < size else 2 * size - 1 - c
            length = base + (add[r] >= (1 if c < size else 2))  # the head chunk first
            ranges[r].append((pos, pos + length))
            pos += length
        for r in range(size):
            held[r] += 2 * base + add[r]
    # The filler: every other token, in stream order, dealt head-tail.
    filler = []
    pos = 0
    for doc in long_docs:
        if cu[doc] > pos:
            filler.append((pos, cu[doc]))
        pos = cu[doc + 1]
    if cu[-1] > pos:
        filler.append((pos, cu[-1]))
    need = [per_rank - held[r] for r in range(size)]
    assert min(need) >= 0, "long chunks overfill a rank"  # held stays within one token
    order = [(r, need[r] // 2) for r in range(size)]
    order += [(r, need[r] - need[r] // 2) for r in reversed(range(size))]
    spans = iter(filler)
    span = next(spans, None)
    for r, count in order:
        while count:
            take = min(count, span[1] - span[0])
            ranges[r].append((span[0], span[0] + take))
            span = (span[0] + take, span[1])
            count -= take
            if span[0] == span[1]:
                span = next(spans, None)
    return tuple(_merge(sorted(mine)) for mine in ranges)


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted ranges with touching neighbours joined."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if end == start:
            continue
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return tuple(out)


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
