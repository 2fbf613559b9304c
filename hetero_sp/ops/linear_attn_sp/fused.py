"""Triton kernels of the two merge steps of linear-attention SP; same contract as ``naive.py``.

Shape legend: N pieces, H heads, K key dim, V value dim, L tokens of one segment, BT / BK / BV
tiles of L / K / V, BE a tile of the flattened K * V state.

The states are tiny (N <= 2P pieces of H x K x V), so the scan walks the pieces sequentially
inside each program, one program per (state tile, head). The correction tiles tokens; K fits
one tile (head dims <= 256), which lets the dq kernel also reduce dgc over K; dS reduces over
the tokens in slices of up to 2048 (BL) in parallel and sums the slices' partial states. No argument
depends on the token count except the runtime ``L`` (not specialised), so a new length never
recompiles. Accumulation is fp32; ``tl.dot`` uses exact fp32 products for fp32 inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hetero_sp.ops.common.triton_utils import (
    check_kernel_device,
    dot_precision,
    new_output,
    tile_size,
)
from hetero_sp.ops.linear_attn_sp import MAX_TRITON_HEAD_K


def _check_head_k(head_k: int) -> None:
    if head_k > MAX_TRITON_HEAD_K:
        raise ValueError(
            f"the Triton SP correction kernels take head dims K <= {MAX_TRITON_HEAD_K}, got {head_k}; "
            "use the torch merge backend (the SP layers pick it for such heads)"
        )


@triton.jit(do_not_specialize=["N"])
def state_scan_kernel(
    u, b, x, N, H: tl.constexpr, KV: tl.constexpr, BE: tl.constexpr, REVERSE: tl.constexpr
):
    i_e, i_h = tl.program_id(0), tl.program_id(1)
    o_e = i_e * BE + tl.arange(0, BE)
    m_e = o_e < KV
    b_x = tl.zeros([BE], dtype=tl.float32)  # [BE]
    for step in range(0, N):
        if REVERSE:
            i_n = N - 1 - step
        else:
            i_n = step
        base = (i_n.to(tl.int64) * H + i_h) * KV
        tl.store(x + base + o_e, b_x.to(x.dtype.element_ty), mask=m_e)
        b_u = tl.load(u + base + o_e, mask=m_e, other=0.0).to(tl.float32)
        b_b = tl.load(b + i_n.to(tl.int64) * H + i_h).to(tl.float32)
        b_x = b_u + b_b * b_x


@triton.jit(do_not_specialize=["L"])
def correction_fwd_kernel(
    q,
    gc,
    s,
    o,
    L,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_t, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_k, m_v = o_t < L, o_k < K, o_v < V
    p_q = q + (o_t[:, None] * H + i_h) * K + o_k[None, :]
    b_q = tl.load(p_q, mask=m_t[:, None] & m_k[None, :], other=0.0)  # [BT, BK]
    if USE_G:
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)  # [BT]
        b_q = (b_q * tl.exp(b_g)[:, None]).to(b_q.dtype)
    p_s = s + (i_h * K + o_k[:, None]).to(tl.int64) * V + o_v[None, :]
    b_s = tl.load(p_s, mask=m_k[:, None] & m_v[None, :], other=0.0)  # [BK, BV]
    b_o = tl.dot(b_q, b_s, input_precision=DOT_PRECISION) * scale  # [BT, BV]
    p_o = o + (o_t[:, None] * H + i_h) * V + o_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit(do_not_specialize=["L"])
def correction_bwd_kernel_dq(
    q,
    gc,
    s,
    do,
    dq,
    dgc,
    L,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < L, o_k < K
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # [BT, BK]
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        p_do = do + (o_t[:, None] * H + i_h) * V + o_v[None, :]
        b_do = tl.load(p_do, mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
        p_s = s + (i_h * K + o_k[None, :]).to(tl.int64) * V + o_v[:, None]
        b_st = tl.load(p_s, mask=m_v[:, None] & m_k[None, :], other=0.0)  # [BV, BK]
        b_dq += tl.dot(b_do, b_st, input_precision=DOT_PRECISION)
    b_dq *= scale
    m_tk = m_t[:, None] & m_k[None, :]
    if USE_G:
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)  # [BT]
        b_dq *= tl.exp(b_g)[:, None]
        p_q = q + (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_q = tl.load(p_q, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
        tl.store(dgc + o_t * H + i_h, tl.sum(b_dq * b_q, axis=1).to(dgc.dtype.element_ty), mask=m_t)
    p_dq = dq + (o_t[:, None] * H + i_h) * K + o_k[None, :]
    tl.store(p_dq, b_dq.to(dq.dtype.element_ty), mask=m_tk)


@triton.jit(do_not_specialize=["L"])
def correction_bwd_kernel_ds(
    q,
    gc,
    do,
    ds,
    L,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BL: tl.constexpr,
    USE_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program i_l reduces tokens [i_l * BL, (i_l + 1) * BL) into its own partial ds[i_l].
    i_v, i_h, i_l = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    b_ds = tl.zeros([BK, BV], dtype=tl.float32)  # [BK, BV]
    for i_t in range(0, BL // BT):
        o_t = i_l.to(tl.int64) * BL + i_t * BT + tl.arange(0, BT)
        m_t = o_t < L
        p_qt = q + (o_t[None, :] * H + i_h) * K + o_k[:, None]
        b_qt = tl.load(p_qt, mask=m_k[:, None] & m_t[None, :], other=0.0)  # [BK, BT]
        if USE_G:
            b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)  # [BT]
            b_qt = (b_qt * tl.exp(b_g)[None, :]).to(b_qt.dtype)
        p_do = do + (o_t[:, None] * H + i_h) * V + o_v[None, :]
        b_do = tl.load(p_do, mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
        b_ds += tl.dot(b_qt, b_do, input_precision=DOT_PRECISION)
    p_ds = ds + ((i_l.to(tl.int64) * H + i_h) * K + o_k[:, None]) * V + o_v[None, :]
    tl.store(p_ds, (b_ds * scale).to(ds.dtype.element_ty), mask=m_k[:, None] & m_v[None, :])


def state_scan(u_NHKV: torch.Tensor, b_NH: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Exclusive decayed scan over pieces; see ``naive.state_scan``."""
    check_kernel_device(u_NHKV, b_NH)
    num, heads, head_k, head_v = u_NHKV.shape
    u_NHKV, b_NH = u_NHKV.contiguous(), b_NH.contiguous()
    x_NHKV = new_output(u_NHKV.shape, u_NHKV.dtype, u_NHKV.device)
    block = tile_size(head_k * head_v, 1024)
    grid = (triton.cdiv(head_k * head_v, block), heads)
    state_scan_kernel[grid](u_NHKV, b_NH, x_NHKV, num, heads, head_k * head_v, block, reverse)
    return x_NHKV


def correction_fwd(
    q_LHK: torch.Tensor, gc_LH: torch.Tensor | None, state_HKV: torch.Tensor, scale: float
) -> torch.Tensor:
    """Output added by the incoming state; see ``naive.correction_fwd``."""
    check_kernel_device(q_LHK, gc_LH, state_HKV)
    length, heads, head_k = q_LHK.shape
    _check_head_k(head_k)
    head_v = state_HKV.shape[-1]
    q_LHK, state_HKV = q_LHK.contiguous(), state_HKV.contiguous()
    gc_LH = gc_LH.contiguous() if gc_LH is not None else None
    o_LHV = new_output((length, heads, head_v), state_HKV.dtype, q_LHK.device)
    BT, BK, BV = 32, tile_size(head_k, MAX_TRITON_HEAD_K), tile_size(head_v, 64)
    grid = (triton.cdiv(length, BT), triton.cdiv(head_v, BV), heads)
    correction_fwd_kernel[grid](
        q_LHK, gc_LH if gc_LH is not None else q_LHK, state_HKV, o_LHV, length, scale,
        heads, head_k, head_v, BT, BK, BV, gc_LH is not None, dot_precision(q_LHK.dtype),
    )  # fmt: skip
    return o_LHV


def correction_bwd(
    q_LHK: torch.Tensor,
    gc_LH: torch.Tensor | None,
    state_HKV: torch.Tensor,
    do_LHV: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gradients of the correction; see ``naive.correction_bwd``."""
    check_kernel_device(q_LHK, gc_LH, state_HKV, do_LHV)
    length, heads, head_k = q_LHK.shape
    _check_head_k(head_k)
    head_v = state_HKV.shape[-1]
    q_LHK, state_HKV, do_LHV = q_LHK.contiguous(), state_HKV.contiguous(), do_LHV.contiguous()
    gc_LH = gc_LH.contiguous() if gc_LH is not None else None
    dtype, device = state_HKV.dtype, q_LHK.device
    dq_LHK = new_output((length, heads, head_k), dtype, device)
    dgc_LH = new_output((length, heads), dtype, device) if gc_LH is not None else None
    BT, BK, BV = 32, tile_size(head_k, MAX_TRITON_HEAD_K), tile_size(head_v, 64)
    # Long segments reduce in BL-token slices in parallel, then sum the partial states.
    BL = BT * min(64, triton.cdiv(max(length, 1), BT))
    partial_SHKV = new_output((triton.cdiv(max(length, 1), BL), *state_HKV.shape), dtype, device)
    g_arg = gc_LH if gc_LH is not None else q_LHK
    precision = dot_precision(q_LHK.dtype)
    correction_bwd_kernel_dq[(triton.cdiv(length, BT), heads)](
        q_LHK, g_arg, state_HKV, do_LHV, dq_LHK, dgc_LH if dgc_LH is not None else dq_LHK,
        length, scale, heads, head_k, head_v, BT, BK, BV, gc_LH is not None, precision,
    )  # fmt: skip
    correction_bwd_kernel_ds[(triton.cdiv(head_v, BV), heads, partial_SHKV.shape[0])](
        q_LHK, g_arg, do_LHV, partial_SHKV, length, scale,
        heads, head_k, head_v, BT, BK, BV, BL, gc_LH is not None, precision,
    )  # fmt: skip
    return dq_LHK, dgc_LH, partial_SHKV.sum(0)
