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
    parts = size if (kind == "contiguous" or size == 1) else 2 * size
    assert layout.num_pad < parts
    assert layout.num_tokens % parts == 0
    assert layout.num_real_tokens == sum(lengths)
    everything = torch.sort(layout.concat_index()).values
    assert torch.equal(everything, torch.arange(layout.num_tokens))
    for rank in range(size):
        local = layout.local_index(rank)
        assert local.numel() == layout.tokens_per_rank
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
    assert layout.pieces[0] == ((0, 10), (70, 80))
    assert layout.pieces[3] == ((30, 40), (40, 50))
    assert [(r, i) for r, i in layout.stream_order()][:5] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 0),
        (3, 1),
    ]


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
