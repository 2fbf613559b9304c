"""varlen_softmax_attention refuses a cu_seqlens that does not cover its tensor (it returned
fewer rows than queries, silently), as the linear-attention ops do."""

import pytest
import torch

from hetero_sp.ops.backends import varlen_softmax_attention

H, G, E = 2, 1, 8


def _qkv(t_q: int, t_k: int):
    return torch.randn(t_q, H, E), torch.randn(t_k, G, E), torch.randn(t_k, G, E)


def test_a_covering_cu_seqlens_returns_a_row_per_query():
    q, k, v = _qkv(10, 10)
    out = varlen_softmax_attention(q, k, v, [0, 4, 10], [0, 4, 10], backend="torch")
    assert out.shape == (10, H, E)


@pytest.mark.parametrize(
    ("cu_q", "cu_k", "which"),
    [
        ([0, 4, 8], [0, 4, 10], "cu_seqlens_q"),  # 2 queries left out
        ([0, 4, 10], [0, 4, 8], "cu_seqlens_k"),
        ([0, 4, 12], [0, 4, 12], "cu_seqlens_q"),  # past the end
        ([1, 4, 10], [1, 4, 10], "cu_seqlens_q"),
        ([0, 6, 4, 10], [0, 6, 4, 10], "cu_seqlens_q"),  # a negative document
    ],
)
def test_a_cu_seqlens_that_does_not_cover_its_tensor_is_refused(cu_q, cu_k, which):
    q, k, v = _qkv(10, 10)
    with pytest.raises(ValueError, match=which):
        varlen_softmax_attention(q, k, v, cu_q, cu_k, backend="torch")


def test_k_and_v_of_different_lengths_are_refused():
    q, k, _ = _qkv(10, 10)
    with pytest.raises(ValueError, match="k has 10 tokens but v has 9"):
        varlen_softmax_attention(q, k, torch.randn(9, G, E), [0, 10], [0, 10], backend="torch")
