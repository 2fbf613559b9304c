"""What samplers read: a list of documents of token ids.

Two implementations share one interface (``num_docs``, ``lengths()``, ``doc(i)``,
``fingerprint``, ``vocab_size``): :class:`TokenCorpus` holds its tokens in memory (tests, small
corpora) and :class:`hetero_sp.data.dataset.ShardedCorpus` memory-maps a prepared dataset.
A document is stored as all of its tokens; a training sequence of L tokens reads L + 1 of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Corpus(Protocol):
    fingerprint: str
    vocab_size: int | None

    @property
    def num_docs(self) -> int: ...

    def lengths(self) -> np.ndarray: ...

    def doc(self, i: int) -> np.ndarray: ...


@dataclass(frozen=True)
class TokenCorpus:
    """Documents as one token array plus offsets: document i is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray
    offsets: np.ndarray
    fingerprint: str
    """sha256 of the token stream and offsets, to tell whether two machines train on the same data."""
    vocab_size: int | None = None
    """Size of the tokenizer's vocabulary when known (ids are below it)."""

    @classmethod
    def from_docs(cls, docs: Sequence[np.ndarray], vocab_size: int | None = None) -> TokenCorpus:
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        tokens = (
            np.concatenate([np.asarray(d) for d in docs]) if docs else np.zeros(0, dtype=np.int64)
        )
        h = hashlib.sha256(tokens.tobytes())
        h.update(offsets.tobytes())
        return cls(tokens=tokens, offsets=offsets, fingerprint=h.hexdigest(), vocab_size=vocab_size)

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]
