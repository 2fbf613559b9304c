"""``concat_chunk``: the classic baseline. Concatenate documents, cut into fixed lengths.

Each epoch concatenates every document (all stored tokens, so one document's <eos> is followed
by the next one's <bos>) in a random order and cuts the stream into sequences of ``seq_len``
training tokens (``seq_len + 1`` token ids, consecutive sequences sharing one token); a step
takes ``tokens_per_step / seq_len`` consecutive sequences. A sequence usually spans several
documents and the model treats it as one sequence, so tokens attend across documents and every
sequence pays full-length attention: the baseline dataset decomposition improves on.
"""

from __future__ import annotations

import numpy as np

from hetero_sp.config import ConfigError
from hetero_sp.data.batch import Segment
from hetero_sp.data.corpus import Corpus
from hetero_sp.data.samplers.base import EpochSampler, stream_window


class ConcatChunkSampler(EpochSampler):
    name = "concat_chunk"

    def __init__(self, corpus: Corpus, tokens_per_step: int, seed: int, seq_len: int) -> None:
        super().__init__(corpus, tokens_per_step, seed)
        if seq_len < 1 or tokens_per_step % seq_len:
            raise ConfigError(
                f"concat_chunk needs tokens_per_step ({tokens_per_step}) to be a multiple of "
                f"max_seq_len ({seq_len})"
            )
        lengths = np.asarray(corpus.lengths(), dtype=np.int64)
        self._docs = np.flatnonzero(lengths > 0)
        self._lengths = lengths[self._docs]
        self.seq_len = seq_len
        self._per_step = tokens_per_step // seq_len
        self._stream = int(self._lengths.sum())
        self._steps = max(self._stream - 1, 0) // seq_len // self._per_step
        if self._steps == 0:
            raise ConfigError(
                f"the dataset has {self._stream} tokens, fewer than one step of "
                f"{tokens_per_step}: lower data.tokens_per_step or use a larger dataset"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def options(self) -> dict:
        return {"max_seq_len": self.seq_len}

    def describe(self) -> dict:
        used = self._steps * self.tokens_per_step
        return {**super().describe(), "tokens_unused_per_epoch": self._stream - used}

    def _plan_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = self.rng(epoch, 4).permutation(len(self._docs))
        cum = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(self._lengths[order], out=cum[1:])
        return order, cum

    def _refs(self, plan, position: int) -> list[tuple[Segment, ...]]:
        order, cum = plan
        refs = []
        for k in range(position * self._per_step, (position + 1) * self._per_step):
            lo = k * self.seq_len
            segs = stream_window(cum, lo, lo + self.seq_len + 1)
            refs.append(tuple((int(self._docs[order[j]]), a, b) for j, a, b in segs))
        return refs
