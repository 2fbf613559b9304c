"""Sharding a group's packed stream: every token exactly once, bounded padding, segments that
never cross documents, and head-tail pieces in the zigzag layout."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hetero_sp.parallel import make_layout


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    size=st.integers(1, 8),
    kind=st.sampled_from(["contiguous", "zigzag"]),
)
def test_layout_covers_every_token_once(lengths, size, kind):
    layout = make_layout(lengths, size, kind)
    assert layout.num_pad < size
    assert layout.num_tokens % size == 0
    assert layout.num_real_tokens == sum(lengths)
    everything = torch.sort(layout.concat_index()).values
    assert torch.equal(everything, torch.arange(layout.num_tokens))
    for rank in range(size):
        local = layout.local_index(rank)
        assert local.numel() == layout.tokens_per_rank
        starts = [start for start, _ in layout.pieces[rank]]
        assert starts == sorted(starts)  # local order is stream order
        cu = layout.local_cu_seqlens(rank)
        assert cu[-1] == local.numel()
        for seg in layout.segments(rank):
            lo, hi = layout.cu_seqlens[seg.doc], layout.cu_seqlens[seg.doc + 1]
            assert lo <= seg.start < seg.end <= hi
            assert seg.continues_prev == (seg.start > lo)
            assert seg.continues_next == (seg.end < hi)
        positions = layout.local_positions(rank)
        doc_starts = torch.tensor([layout.cu_seqlens[layout.doc_of(int(t))] for t in local])
        assert torch.equal(positions, local - doc_starts)


def test_zigzag_gives_head_and_tail_chunks():
    layout = make_layout([80], 4, "zigzag")
    assert layout.num_pad == 0
    assert layout.pieces[0] == ((0, 10), (70, 80))
    assert layout.pieces[3] == ((30, 50),)  # both middle chunks, as one piece
    assert layout.stream_order()[:5] == [(0, 0), (1, 0), (2, 0), (3, 0), (2, 1)]


def test_zigzag_cuts_each_long_document_and_deals_the_rest_head_tail():
    # 75 tokens with 1 of padding, 25 per rank. 40 and 24 are long (each at least half a chunk
    # of the filler left without it); 40 = 6 chunks of 6 plus 4 tokens, one each to the
    # emptiest rank (rank 0 twice). The filler (2 + 3 + 5 tokens and the padding) fills what
    # is left, head-tail: heads of 1, 2, 2 tokens for ranks 0, 1, 2, then tails of 2, 2, 2.
    layout = make_layout([2, 40, 3, 24, 5], 3, "zigzag")
    assert layout.num_pad == 1 and layout.tokens_per_rank == 25
    assert layout.pieces == (
        ((0, 1), (2, 9), (35, 42), (45, 49), (65, 69), (73, 75)),
        ((1, 2), (9, 16), (29, 35), (42, 43), (49, 53), (61, 65), (71, 73)),
        ((16, 29), (43, 45), (53, 61), (69, 71)),
    )


def test_padding_is_its_own_document():
    layout = make_layout([5, 4], 4)
    assert layout.num_pad == 3 and layout.cu_seqlens == (0, 5, 9, 12)
    assert layout.segments(3)[-1].doc == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (([3], 0), "group size must be >= 1"),
        (([], 2), "needs at least one document"),
        (([3, 0], 2), "document 1 has length 0"),
        (([3], 2, "ring"), "layout kind 'ring' is unknown"),
    ],
)
def test_bad_inputs_raise(args, message):
    with pytest.raises(ValueError, match=message):
        make_layout(*args)
