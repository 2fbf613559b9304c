"""The embedded corpus: the Python standard library's own source files, one document each.

Every machine that runs HeteroSP has them, so the demo and the tests train on real text with a
real long-tailed length distribution (a few hundred bytes to most of a megabyte) without any
download. Files are read in sorted path order, so the corpus is the same on every rank.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hetero_sp.data.tokenizer import ByteTokenizer


def stdlib_source_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts
    )


@dataclass(frozen=True)
class TokenCorpus:
    """Documents as one token array plus offsets: document i is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray
    offsets: np.ndarray
    fingerprint: str
    """sha256 of the token stream, to tell whether two machines train on the same data."""

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def load_embedded_corpus(max_files: int | None = None) -> TokenCorpus:
    tok = ByteTokenizer()
    docs = []
    for path in stdlib_source_files()[:max_files]:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data.strip():
            docs.append(tok.encode(data))
    if not docs:
        raise RuntimeError(
            "found no standard-library source files to build the embedded corpus from"
        )
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    tokens = np.concatenate(docs)
    return TokenCorpus(
        tokens=tokens, offsets=offsets, fingerprint=hashlib.sha256(tokens.tobytes()).hexdigest()
    )
