"""Dataset decomposition (Pouransari et al., arXiv 2405.13226): documents -> power-of-two chunks.

A document of ``n + 1`` stored tokens offers n training tokens (inputs ``x[:-1]``, targets
``x[1:]``). It is first cut into ``n // 2**max`` pieces of ``2**max`` training tokens; the rest
``r = n mod 2**max`` is split by its binary expansion into one chunk of ``2**i`` tokens per set
bit i with ``min <= i < max``, longest first. A chunk of ``2**i`` training tokens reads
``2**i + 1`` stored tokens starting at its offset, so consecutive chunks of a document share one
token and every target of the document is used exactly once; the ``r mod 2**min`` tokens at the
end of a document fit no bucket and are counted as leftover. Chunk c goes to bucket D_i with
``i = bucket[c]``. Only the index (doc, offset, bucket) is built; tokens are never copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetero_sp.config import ConfigError


def log2_exact(value: int, what: str) -> int:
    """log2 of a power of two; ValueError naming ``what`` otherwise."""
    if value < 1 or value & (value - 1):
        raise ConfigError(f"{what} must be a power of two (64, 128, ..., 8192), got {value}")
    return value.bit_length() - 1


@dataclass(frozen=True)
class Decomposition:
    min_log2: int
    max_log2: int
    doc: np.ndarray
    """int64 [C]: document of each chunk; chunks are sorted by (doc, offset)."""
    offset: np.ndarray
    """int64 [C]: first stored token of each chunk within its document."""
    bucket: np.ndarray
    """int8 [C]: the chunk holds ``2**bucket`` training tokens (reads one more)."""
    leftover_tokens: int
    """Training tokens that fit no bucket (the ``n mod 2**min`` tail of each document)."""

    @property
    def num_chunks(self) -> int:
        return len(self.doc)

    def bucket_chunks(self, i: int) -> np.ndarray:
        """Indices of the chunks of bucket D_i, in (doc, offset) order."""
        return np.flatnonzero(self.bucket == i)

    def summary(self) -> dict:
        counts = np.bincount(self.bucket, minlength=self.max_log2 + 1)
        return {
            "buckets": {
                f"D_{i}": {
                    "seq_len": 1 << i,
                    "chunks": int(counts[i]),
                    "tokens": int(counts[i]) << i,
                }
                for i in range(self.min_log2, self.max_log2 + 1)
            },
            "leftover_tokens": self.leftover_tokens,
        }


def decompose(lengths: np.ndarray, min_seq_len: int, max_seq_len: int) -> Decomposition:
    """Decompose documents of ``lengths`` stored tokens into buckets D_min .. D_max."""
    lo = log2_exact(min_seq_len, "the shortest bucket (data.min_seq_len)")
    hi = log2_exact(max_seq_len, "the longest bucket (data.max_seq_len)")
    if lo > hi:
        raise ConfigError(f"min_seq_len={min_seq_len} must not exceed max_seq_len={max_seq_len}")
    n = np.maximum(np.asarray(lengths, dtype=np.int64) - 1, 0)
    full, rest = n >> hi, n & ((1 << hi) - 1)

    num_full = int(full.sum())
    doc_full = np.repeat(np.arange(len(n), dtype=np.int64), full)
    first_of_doc = np.repeat(np.cumsum(full) - full, full)
    parts_doc = [doc_full]
    parts_off = [(np.arange(num_full, dtype=np.int64) - first_of_doc) << hi]
    parts_bucket = [np.full(num_full, hi, dtype=np.int8)]
    for i in range(hi - 1, lo - 1, -1):
        docs = np.flatnonzero((rest >> i) & 1)
        # Longest first: the chunk of bit i starts after the full pieces and every higher bit.
        parts_doc.append(docs.astype(np.int64))
        parts_off.append((full[docs] << hi) + ((rest[docs] >> (i + 1)) << (i + 1)))
        parts_bucket.append(np.full(len(docs), i, dtype=np.int8))
    doc, offset = np.concatenate(parts_doc), np.concatenate(parts_off)
    bucket = np.concatenate(parts_bucket)
    order = np.lexsort((offset, doc))
    return Decomposition(
        min_log2=lo,
        max_log2=hi,
        doc=doc[order],
        offset=offset[order],
        bucket=bucket[order],
        leftover_tokens=int((rest & ((1 << lo) - 1)).sum()),
    )
