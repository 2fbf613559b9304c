"""A step's global batch: every sequence's length and where its tokens are, read only on demand.

A sequence of L training tokens reads ``L + 1`` token ids: the model takes the first L as
inputs and predicts the last L. Its tokens are given as references, segments
``(doc, start, stop)`` of stored tokens ``corpus.doc(doc)[start:stop]``, concatenated (one
segment, except for the ``concat_chunk`` baseline whose sequences run across documents).
Every rank derives the same batch from (seed, step) without reading a token, the planner sees
``lengths``, and each rank then reads only the sequences it trains on
(:meth:`GlobalBatch.materialize`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hetero_sp.data.corpus import Corpus, TokenCorpus

Segment = tuple[int, int, int]
"""(doc, start, stop): stored tokens ``[start, stop)`` of document ``doc``."""


@dataclass(frozen=True)
class GlobalBatch:
    step: int
    refs: tuple[tuple[Segment, ...], ...]
    """Per sequence, the segments whose concatenation is its L + 1 token ids."""
    corpus: Corpus = field(compare=False, repr=False)
    """Where the referenced tokens are read from."""

    def __post_init__(self) -> None:
        lengths = tuple(sum(stop - start for _, start, stop in segs) - 1 for segs in self.refs)
        if any(n < 1 for n in lengths):
            raise ValueError(f"step {self.step}: every sequence needs at least 2 token ids")
        object.__setattr__(self, "_lengths", lengths)

    @classmethod
    def from_arrays(cls, step: int, sequences: Sequence[np.ndarray]) -> GlobalBatch:
        """A batch over sequences already in memory (each of L + 1 token ids)."""
        corpus = TokenCorpus.from_docs([np.asarray(s) for s in sequences])
        return cls(step, tuple(((i, 0, len(s)),) for i, s in enumerate(sequences)), corpus)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def lengths(self) -> list[int]:
        """Training tokens per sequence (token ids read - 1)."""
        return list(self._lengths)

    @property
    def num_tokens(self) -> int:
        return sum(self._lengths)

    def tokens(self, i: int) -> np.ndarray:
        """The L + 1 token ids of sequence i as int64 (reads only this sequence)."""
        parts = [self.corpus.doc(d)[start:stop] for d, start, stop in self.refs[i]]
        return np.concatenate(parts).astype(np.int64)

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        """Token ids ``[start, stop)`` of sequence i as int64, reading only those tokens (a rank
        holding part of a long sequence reads just its part)."""
        parts, offset = [], 0
        for d, seg_start, seg_stop in self.refs[i]:
            lo, hi = max(start, offset), min(stop, offset + seg_stop - seg_start)
            if lo < hi:
                parts.append(self.corpus.doc(d)[seg_start + lo - offset : seg_start + hi - offset])
            offset += seg_stop - seg_start
        if stop > offset or start < 0 or start > stop:
            raise ValueError(f"sequence {i} has {offset} token ids; cannot read [{start}, {stop})")
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def materialize(self, indices: Iterable[int]) -> list[np.ndarray]:
        """The token ids of the given sequences, in that order."""
        return [self.tokens(i) for i in indices]


def balance_over_ranks(lengths: list[int], world_size: int) -> list[list[int]]:
    """Longest-first greedy assignment of sequences to ranks, balancing tokens.

    Ties go to the lower rank, so every rank computes the same assignment.
    """
    if len(lengths) < world_size:
        raise ValueError(
            f"the batch has {len(lengths)} sequences for {world_size} data-parallel ranks; "
            "raise data.tokens_per_step or lower data.max_seq_len so every rank gets one"
        )
    loads = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        out[r].append(i)
        loads[r] += lengths[i]
    return [sorted(x) for x in out]
