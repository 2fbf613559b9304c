"""The merge steps of linear-attention SP: the torch reference against its own definition and
autograd (fp64), and the Triton kernels against the torch reference (fp32, outputs poisoned
with NaN so unwritten elements fail). On CPU the kernels run in Triton's interpreter
(``tests/conftest.py`` sets TRITON_INTERPRET=1); on a CUDA machine they run on the GPU.

Tolerance for Triton vs torch: both compute in fp32 but reduce over K, V or tokens in other
orders and tiles; observed differences are ~1e-7 of each tensor's largest entry, checked at
1e-5 of that scale. An indexing or masking error is O(1) of the scale.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from hetero_sp.ops.linear_attn_sp import (
    MAX_TRITON_HEAD_K,
    correction_bwd,
    correction_fwd,
    naive,
    state_scan,
)
from tests.common import assert_rel_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(
    not TRITON_OK, reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (set by conftest)"
)
RTOL = 1e-5


def _segment(length, heads, head_k, head_v, decay, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(length, heads, head_k, generator=gen, dtype=dtype)
    gc = F.logsigmoid(torch.randn(length, heads, generator=gen, dtype=dtype)).cumsum(0)
    state = torch.randn(heads, head_k, head_v, generator=gen, dtype=dtype)
    do = torch.randn(length, heads, head_v, generator=gen, dtype=dtype)
    return q, (gc if decay else None), state, do


def test_reverse_scan_is_the_forward_scan_of_the_flipped_pieces():
    u = torch.randn(6, 2, 3, 4, dtype=torch.float64)
    b = torch.rand(6, 2, dtype=torch.float64)
    x = naive.state_scan(u, b)
    assert torch.equal(x[0], torch.zeros_like(x[0]))
    torch.testing.assert_close(
        x[3], u[2] + b[2][:, None, None] * (u[1] + b[1][:, None, None] * u[0])
    )
    flipped = naive.state_scan(u.flip(0), b.flip(0)).flip(0)
    assert torch.equal(naive.state_scan(u, b, reverse=True), flipped)


@pytest.mark.parametrize("decay", [True, False])
def test_torch_correction_backward_equals_autograd(decay):
    q, gc, state, do = _segment(37, 2, 8, 6, decay, torch.float64)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (q, gc, state)]
    (naive.correction_fwd(leaves[0], leaves[1], leaves[2], 0.3) * do).sum().backward()
    dq, dgc, dstate = naive.correction_bwd(q, gc, state, do, 0.3)
    torch.testing.assert_close(dq, leaves[0].grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dstate, leaves[2].grad, rtol=1e-12, atol=1e-12)
    if decay:
        torch.testing.assert_close(dgc, leaves[1].grad, rtol=1e-12, atol=1e-12)
    else:
        assert dgc is None


@pytest.fixture
def _poison(monkeypatch):
    from hetero_sp.ops.common.triton_utils import POISON_ENV

    monkeypatch.setenv(POISON_ENV, "1")


@needs_triton
@pytest.mark.usefixtures("_poison")
@pytest.mark.parametrize("num", [1, 2, 5, 8])
@pytest.mark.parametrize("dims", [(8, 6), (32, 20)])
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_scan_equals_torch(num, dims, reverse):
    u = torch.randn(num, 3, *dims, device=DEVICE)
    b = torch.rand(num, 3, device=DEVICE)
    expected = state_scan(u, b, reverse, backend="torch")
    assert_rel_close(state_scan(u, b, reverse, backend="triton"), expected, RTOL, "scan")


@needs_triton
@pytest.mark.usefixtures("_poison")
@pytest.mark.parametrize(
    "length, dims",
    [(n, d) for n in (1, 31, 32, 33, 100) for d in ((8, 6), (32, 70))]
    + [(2100, (8, 6))],  # 2100 tokens: dS reduces in several slices
)
@pytest.mark.parametrize("decay", [True, False])
def test_triton_correction_equals_torch(length, dims, decay):
    q, gc, state, do = (
        t.to(DEVICE) if t is not None else None
        for t in _segment(length, 2, *dims, decay, torch.float32)
    )
    expected = correction_fwd(q, gc, state, 0.3, backend="torch")
    assert_rel_close(correction_fwd(q, gc, state, 0.3, backend="triton"), expected, RTOL, "o")
    got = correction_bwd(q, gc, state, do, 0.3, backend="triton")
    ref = correction_bwd(q, gc, state, do, 0.3, backend="torch")
    for name, a, e in zip(("dq", "dgc", "dstate"), got, ref):
        if e is None:
            assert a is None, name
        else:
            assert_rel_close(a, e, RTOL, name)


def test_bad_backend_and_interpreter_dtype_raise():
    u, b = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1)
    with pytest.raises(ValueError, match="backend 'cuda' is unknown; allowed: torch, triton"):
        state_scan(u, b, backend="cuda")
    if DEVICE == "cpu" and TRITON_OK:
        with pytest.raises(ValueError, match="only fp32"):
            state_scan(u.double(), b.double(), backend="triton")


@needs_triton
def test_triton_correction_refuses_heads_wider_than_one_tile():
    q, gc, state, do = _segment(5, 1, MAX_TRITON_HEAD_K + 44, 4, True, torch.float32)
    q, gc, state, do = (t.to(DEVICE) for t in (q, gc, state, do))
    with pytest.raises(ValueError, match="K <= 256, got 300"):
        correction_fwd(q, gc, state, 0.5, backend="triton")
    with pytest.raises(ValueError, match="K <= 256, got 300"):
        correction_bwd(q, gc, state, do, 0.5, backend="triton")


@needs_triton
def test_sp_layers_merge_wide_heads_with_torch():
    from hetero_sp.parallel.linear_local import LocalWork
    from hetero_sp.parallel.linear_pieces import piece_table
    from hetero_sp.parallel.sharding import make_layout

    table = piece_table(make_layout([8], 2), 0)
    for head_k, merge in ((MAX_TRITON_HEAD_K, "triton"), (MAX_TRITON_HEAD_K + 1, "torch")):
        q = torch.zeros(4, 1, head_k, device=DEVICE)
        v = torch.zeros(4, 1, 3, device=DEVICE)
        local = LocalWork(q, q, v, None, [0, 4], table, scale=1.0, backend="triton", record=False)
        assert local.merge_backend == merge
