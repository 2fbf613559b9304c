"""Dataset decomposition: every target token of every document lands in exactly one chunk (or
is counted as leftover), chunks are powers of two inside one document, longest first."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetero_sp.data.decompose import decompose


def _check(lengths, lo, hi):
    dec = decompose(np.array(lengths, dtype=np.int64), 1 << lo, 1 << hi)
    assert dec.doc.dtype == np.int64 and dec.offset.dtype == np.int64
    assert np.all((dec.bucket >= lo) & (dec.bucket <= hi))
    leftover = 0
    for d, stored in enumerate(lengths):
        n = max(stored - 1, 0)
        mine = np.flatnonzero(dec.doc == d)
        sizes = [1 << int(b) for b in dec.bucket[mine]]
        offsets = [int(o) for o in dec.offset[mine]]
        # Target positions 1..n of the document: each chunk covers offset+1 .. offset+size.
        covered = np.zeros(n + 1, dtype=np.int64)
        for off, size in zip(offsets, sizes):
            assert off >= 0 and off + size + 1 <= stored, "a chunk reads past its document"
            covered[off + 1 : off + size + 1] += 1
        assert covered.max(initial=0) <= 1, "a target token is in two chunks"
        used = int(covered.sum())
        assert covered[1 : used + 1].all(), "chunks leave a gap before the leftover tail"
        assert n - used < (1 << lo), "the leftover tail would fit the smallest bucket"
        assert sizes == sorted(sizes, reverse=True), "chunks of a document are not longest first"
        assert offsets == sorted(offsets)
        assert sum(s == 1 << hi for s in sizes) == n >> hi
        leftover += n - used
    assert dec.leftover_tokens == leftover
    summary = dec.summary()
    assert sum(b["tokens"] for b in summary["buckets"].values()) + leftover == sum(
        max(x - 1, 0) for x in lengths
    )
    return dec


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 3000), min_size=0, max_size=12),
    lo=st.integers(0, 6),
    span=st.integers(0, 5),
)
def test_every_token_exactly_once_and_no_chunk_crosses_a_document(lengths, lo, span):
    _check(lengths, lo, lo + span)


def test_binary_expansion_of_one_document():
    # 1 + 45 stored tokens: 45 training tokens = 32 + 8 + 4 + 1; with min 2 the 1 is leftover.
    dec = decompose(np.array([46]), 2, 32)
    assert [1 << int(b) for b in dec.bucket] == [32, 8, 4]
    assert dec.offset.tolist() == [0, 32, 40]
    assert dec.leftover_tokens == 1
    # Longer than 2**max: cut into full pieces first, then the remainder's bits.
    dec = decompose(np.array([1 + 3 * 16 + 5]), 1, 16)
    assert [1 << int(b) for b in dec.bucket] == [16, 16, 16, 4, 1]
    assert dec.offset.tolist() == [0, 16, 32, 48, 52]


def test_bad_bucket_bounds():
    with pytest.raises(ValueError, match="power of two"):
        decompose(np.array([10]), 3, 8)
    with pytest.raises(ValueError, match="must not exceed"):
        decompose(np.array([10]), 16, 8)
