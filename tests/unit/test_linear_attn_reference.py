"""The chunked torch linear attention against the naive references: outputs, final states and
every gradient (q, k, v, g, initial state), on packed documents crossing chunk boundaries."""

import pytest
import torch
import torch.nn.functional as F

from hetero_sp.ops.linear_attn import (
    naive_linear_attn,
    naive_recurrent_linear_attn,
    torch_chunk_linear_attn,
)
from tests.common import assert_rel_close


def _inputs(lengths, heads=2, dk=8, dv=6, decay=True, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q = torch.randn(T, heads, dk, generator=gen, dtype=dtype)
    k = torch.randn(T, heads, dk, generator=gen, dtype=dtype)
    v = torch.randn(T, heads, dv, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(T, heads, generator=gen, dtype=dtype)) if decay else None
    s0 = torch.randn(len(lengths), heads, dk, dv, generator=gen, dtype=dtype)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return q, k, v, g, s0, cu


def _run(fn, q, k, v, g, s0, cu, **kw):
    leaves = [t.clone().requires_grad_() for t in (q, k, v, s0)]
    g_leaf = g.clone().requires_grad_() if g is not None else None
    o, final = fn(leaves[0], leaves[1], leaves[2], g_leaf, cu, None, leaves[3], True, **kw)
    gen = torch.Generator().manual_seed(1)
    (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum().backward(
        retain_graph=True
    )
    (
        final * torch.randn(final.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    ).sum().backward()
    grads = {n: t.grad for n, t in zip("qkv", leaves[:3])} | {"s0": leaves[3].grad}
    if g_leaf is not None:
        grads["g"] = g_leaf.grad
    return o.detach(), final.detach(), grads


@pytest.mark.parametrize("decay", [True, False])
def test_recurrence_and_quadratic_forms_agree(decay):
    args = _inputs([1, 7, 20, 3], decay=decay)
    o_r, f_r, g_r = _run(naive_recurrent_linear_attn, *args)
    o_q, f_q, g_q = _run(naive_linear_attn, *args)
    torch.testing.assert_close(o_q, o_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f_q, f_r, rtol=1e-10, atol=1e-10)
    for name in g_r:
        torch.testing.assert_close(g_q[name], g_r[name], rtol=1e-10, atol=1e-10, msg=name)


LENGTH_CASES = {
    "T1": [1],
    "T63": [63],
    "T64": [64],
    "T65": [65],
    "T500": [500],
    "packed-crossing-chunks": [1, 63, 64, 65, 3, 130, 174],
    "empty-docs-between": [5, 0, 70, 0, 1],
}


@pytest.mark.parametrize("decay", [True, False], ids=["decay", "no-decay"])
@pytest.mark.parametrize("case", list(LENGTH_CASES))
def test_chunked_matches_naive_fp64(case, decay):
    args = _inputs(LENGTH_CASES[case], decay=decay)
    o_ref, f_ref, g_ref = _run(naive_linear_attn, *args)
    o, f, g = _run(torch_chunk_linear_attn, *args, chunk_size=64)
    # fp64 with identical maths up to summation order: agreement to ~1e-12 relative.
    assert_rel_close(o, o_ref, 1e-10, "o")
    assert_rel_close(f, f_ref, 1e-10, "final state")
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert_rel_close(g[name], g_ref[name], 1e-10, f"d{name}")


@pytest.mark.parametrize("chunk_size", [16, 32, 128])
def test_chunk_size_does_not_change_results(chunk_size):
    args = _inputs([100, 17, 300], decay=True)
    o_ref, f_ref, _ = _run(naive_linear_attn, *args)
    o, f, _ = _run(torch_chunk_linear_attn, *args, chunk_size=chunk_size)
    assert_rel_close(o, o_ref, 1e-10, "o")
    assert_rel_close(f, f_ref, 1e-10, "final state")


def test_chunked_fp32_close_to_fp64_reference():
    args64 = _inputs([65, 500, 1], decay=True)
    args32 = [a.float() if isinstance(a, torch.Tensor) else a for a in args64]
    o_ref, f_ref, g_ref = _run(naive_linear_attn, *args64)
    o, f, g = _run(torch_chunk_linear_attn, *args32)
    # fp32 accumulation over hundreds of tokens: a few ulp of the largest values.
    assert_rel_close(o.double(), o_ref, 1e-5, "o")
    assert_rel_close(f.double(), f_ref, 1e-5, "final state")
    for name in g_ref:
        assert_rel_close(g[name].double(), g_ref[name], 1e-5, f"d{name}")


def test_bad_cu_seqlens_is_rejected():
    q, k, v, g, s0, _ = _inputs([10])
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        torch_chunk_linear_attn(q, k, v, g, [0, 5])
