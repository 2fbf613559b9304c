"""Backward kernel for dq, dk and the decay gradient dg (equations in ``chunk_bwd``).

Shape legend as in ``chunk_fwd``. The BK tile is fixed on the host (not tuned) because dg is
written per K tile, [T, H, NK], and summed over NK afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hetero_sp.ops.common.chunks import ChunkIndex
from hetero_sp.ops.common.triton_utils import (
    dot_precision,
    head_dim_configs,
    is_interpreter,
    new_output,
    prune_wide_tiles,
)


@triton.autotune(
    configs=head_dim_configs([{"BV": 64}, {"BV": 32}], (4, 8), (2,)),
    key=["K", "V"],
    prune_configs_by={"early_config_prune": prune_wide_tiles},
)
@triton.jit
def chunk_linear_attn_bwd_kernel_dqkg(
    q,
    k,
    v,
    gc,
    h,
    do,
    dh,
    dq,
    dk,
    dg,
    cu_seqlens,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    NK: tl.constexpr,
    USE_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_t, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
    i_tc = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)

    o_i = tl.arange(0, BT)
    o_t = bos + i_tc * BT + o_i
    m_t = o_t < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    state = (i_t.to(tl.int64) * H + i_h) * K * V

    # [BT, BK]
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    # [BT, BT]: rows i (queries), columns j (keys)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    # <h_c, dh_c> over this K tile, for the chunk's last-token decay gradient
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        m_vk = (o_v < V)[:, None] & (o_k < K)[None, :]
        # [BT, BV]
        b_v = tl.load(v + (o_t[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0)
        b_do = tl.load(do + (o_t[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0)
        # [BV, BK]
        b_hT = tl.load(h + state + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.0)
        b_dhT = tl.load(dh + state + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.0)
        b_dq += tl.dot(b_do, b_hT, input_precision=DOT_PRECISION)
        b_dk += tl.dot(b_v, b_dhT, input_precision=DOT_PRECISION)
        b_ds += tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
        if USE_G:
            b_hdh += tl.sum(b_hT.to(tl.float32) * b_dhT.to(tl.float32), axis=0)

    # [BT, BK]
    b_q = tl.load(q + (o_t[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(k + (o_t[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
    # The mask goes into the exponent: above the diagonal and on padding rows (g = 0 there)
    # g_i - g_j > 0 can overflow exp.
    m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None]
    if USE_G:
        n_valid = tl.minimum(eos - (bos + i_tc * BT), BT)
        b_g_last = tl.load(gc + (bos + i_tc * BT + n_valid - 1) * H + i_h)
        # [BT]
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0)
        b_dq *= tl.exp(b_g)[:, None]
        b_dk *= tl.exp(b_g_last - b_g)[:, None]
        # <h_{c+1}, dh_c> = exp(g_last) <h_c, dh_c> + sum_j k_j . (inter-chunk part of dk_j)
        b_dg_last = tl.sum(b_hdh) * tl.exp(b_g_last) + tl.sum(b_k.to(tl.float32) * b_dk)
        b_ds *= tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], float("-inf"))) * scale
    else:
        b_ds = tl.where(m_A, b_ds * scale, 0.0)
    b_dq = b_dq * scale + tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)
    b_dk += tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q, input_precision=DOT_PRECISION)
    p_dq = dq + (o_t[:, None] * H + i_h) * K + o_k[None, :]
    p_dk = dk + (o_t[:, None] * H + i_h) * K + o_k[None, :]
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_tk)
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_tk)

    if USE_G:
        # [BT]
        b_dg = tl.sum(b_q.to(tl.float32) * b_dq - b_k.to(tl.float32) * b_dk, axis=1)
        b_dg = tl.where(o_i == n_valid - 1, b_dg + b_dg_last, b_dg)
        b_dg = tl.cumsum(tl.where(m_t, b_dg, 0.0), axis=0, reverse=True)
        tl.store(dg + (o_t * H + i_h) * NK + i_k, b_dg, mask=m_t)


def dqkg_block_k(K: int) -> int:
    """BK of the dq/dk/dg kernel: 64 keeps three [64, BK] fp32 tiles plus [64, 64] in registers."""
    return 16 if is_interpreter() else min(64, max(16, triton.next_power_of_2(K)))


def chunk_bwd_dqkg(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    gc_TH: torch.Tensor | None,
    h_MHKV: torch.Tensor,
    do_THV: torch.Tensor,
    dh_MHKV: torch.Tensor,
    index: ChunkIndex,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq [T, H, K], dk [T, H, K] in q's / k's dtype and dg fp32 [T, H] (None without decay)."""
    T, H, K = q_THK.shape
    V = v_THV.shape[-1]
    BK = dqkg_block_k(K)
    NK = triton.cdiv(K, BK)
    dq_THK = new_output((T, H, K), q_THK.dtype, q_THK.device)
    dk_THK = new_output((T, H, K), k_THK.dtype, k_THK.device)
    use_g = gc_TH is not None
    dg_THN = new_output((T, H, NK), torch.float32, q_THK.device) if use_g else None
    if index.num_chunks:

        def grid(meta):
            return (index.num_chunks, NK, H)

        chunk_linear_attn_bwd_kernel_dqkg[grid](
            q_THK,
            k_THK,
            v_THV,
            gc_TH,
            h_MHKV,
            do_THV,
            dh_MHKV,
            dq_THK,
            dk_THK,
            dg_THN,
            index.cu_seqlens,
            index.chunk_indices,
            scale,
            H=H,
            K=K,
            V=V,
            BT=index.chunk_size,
            BK=BK,
            NK=NK,
            USE_G=use_g,
            DOT_PRECISION=dot_precision(q_THK.dtype),
        )
    dg_TH = dg_THN.sum(-1) if use_g else None
    return dq_THK, dk_THK, dg_TH
