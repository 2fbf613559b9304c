"""A step's global batch, and the stop-gap sampler that draws it from a corpus.

A sequence is stored as ``L + 1`` token ids: the model reads the first L and predicts the last
L, so targets never cross a document. Every rank draws the same global batch from
(seed, step) and then takes its own share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetero_sp.data.embedded import TokenCorpus


@dataclass(frozen=True)
class GlobalBatch:
    step: int
    sequences: tuple[np.ndarray, ...]

    @property
    def lengths(self) -> list[int]:
        """Training tokens per sequence (stored length - 1)."""
        return [len(s) - 1 for s in self.sequences]

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)


class RandomDocSampler:
    """Draws random documents (a random window of at most ``max_seq_len`` tokens of the longer
    ones) until the step holds exactly ``tokens_per_step`` training tokens."""

    def __init__(
        self, corpus: TokenCorpus, tokens_per_step: int, max_seq_len: int, seed: int
    ) -> None:
        self.corpus, self.tokens_per_step, self.max_seq_len, self.seed = (
            corpus,
            tokens_per_step,
            max_seq_len,
            seed,
        )
        self._lengths = corpus.lengths()
        usable = self._lengths >= 2
        if not usable.any():
            raise ValueError("the corpus has no document of 2 or more tokens")
        self._docs = np.flatnonzero(usable)

    def batch(self, step: int) -> GlobalBatch:
        rng = np.random.default_rng([self.seed, step])
        left, seqs = self.tokens_per_step, []
        while left > 0:
            doc = int(rng.choice(self._docs))
            n = int(self._lengths[doc]) - 1  # training tokens the whole document offers
            take = min(n, self.max_seq_len, left)
            start = int(rng.integers(0, n - take + 1))
            seqs.append(self.corpus.doc(doc)[start : start + take + 1].astype(np.int64))
            left -= take
        return GlobalBatch(step=step, sequences=tuple(seqs))

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(
                f"checkpoint sampler seed {state.get('seed')} differs from data.seed={self.seed}"
            )


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
