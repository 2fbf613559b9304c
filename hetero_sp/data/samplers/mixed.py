"""``mixed``: heterogeneous batches of many lengths at a constant token budget.

The items are either whole documents cut into pieces of at most ``max_seq_len`` training tokens
(``source = "documents"``: the data's own length mix, long-tailed) or the dataset-decomposition
chunks of every bucket (``source = "chunks"``: power-of-two lengths from ``min_seq_len`` to
``max_seq_len``). Each epoch lays the items end to end in a random order and step s takes
training tokens ``[s * tokens_per_step, (s + 1) * tokens_per_step)`` of that stream; an item
that straddles the boundary is split into two sequences (each still within one document), so
every step holds exactly ``tokens_per_step`` tokens and every token of the epoch is trained on
once. The tail of an epoch shorter than one step is left out (reshuffled the next epoch).
These batches are what the planner exploits: one step holds a few long sequences and many short
ones.
"""

from __future__ import annotations

import numpy as np

from hetero_sp.config import ConfigError
from hetero_sp.data.batch import Segment
from hetero_sp.data.corpus import Corpus
from hetero_sp.data.decompose import decompose
from hetero_sp.data.samplers.base import EpochSampler, stream_window

SOURCES = ("documents", "chunks")


def document_pieces(lengths: np.ndarray, max_seq_len: int) -> tuple[np.ndarray, ...]:
    """(doc, start, length): documents cut into pieces of at most ``max_seq_len`` training tokens."""
    n = np.maximum(np.asarray(lengths, dtype=np.int64) - 1, 0)
    pieces = -(-n // max_seq_len)
    doc = np.repeat(np.arange(len(n), dtype=np.int64), pieces)
    k = np.arange(len(doc), dtype=np.int64) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    start = k * max_seq_len
    return doc, start, np.minimum(n[doc] - start, max_seq_len)


class MixedSampler(EpochSampler):
    name = "mixed"

    def __init__(
        self,
        corpus: Corpus,
        tokens_per_step: int,
        seed: int,
        max_seq_len: int,
        source: str = "documents",
        min_seq_len: int = 1,
    ) -> None:
        super().__init__(corpus, tokens_per_step, seed)
        if tokens_per_step < max_seq_len:
            raise ConfigError(
                f"mixed needs tokens_per_step ({tokens_per_step}) >= max_seq_len ({max_seq_len})"
            )
        if source == "documents":
            self._doc, self._start, self._len = document_pieces(corpus.lengths(), max_seq_len)
            self.leftover_tokens = 0
        elif source == "chunks":
            dec = decompose(corpus.lengths(), min_seq_len, max_seq_len)
            self._doc, self._start = dec.doc, dec.offset
            self._len = np.left_shift(1, dec.bucket.astype(np.int64))
            self.leftover_tokens = dec.leftover_tokens
        else:
            raise ConfigError(f"unknown mixed source {source!r}; allowed: {', '.join(SOURCES)}")
        self.source, self.min_seq_len, self.max_seq_len = source, min_seq_len, max_seq_len
        self._total = int(self._len.sum())
        self._steps = self._total // tokens_per_step
        if self._steps == 0:
            raise ConfigError(
                f"the dataset has {self._total} training tokens, fewer than one step of "
                f"{tokens_per_step}: lower data.tokens_per_step or use a larger dataset"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def options(self) -> dict:
        opts = {"source": self.source, "max_seq_len": self.max_seq_len}
        if self.source == "chunks":
            opts["min_seq_len"] = self.min_seq_len
        return opts

    def describe(self) -> dict:
        return {
            **super().describe(),
            "items": len(self._len),
            "tokens_unused_per_epoch": self._total - self._steps * self.tokens_per_step,
            "leftover_tokens": self.leftover_tokens,
        }

    def _plan_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = self.rng(epoch, 3).permutation(len(self._len))
        cum = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(self._len[order], out=cum[1:])
        return order, cum

    def _refs(self, plan, position: int) -> list[tuple[Segment, ...]]:
        order, cum = plan
        lo = position * self.tokens_per_step
        refs = []
        for j, a, b in stream_window(cum, lo, lo + self.tokens_per_step):
            item = order[j]
            start = int(self._start[item])
            refs.append(((int(self._doc[item]), start + a, start + b + 1),))
        return refs
