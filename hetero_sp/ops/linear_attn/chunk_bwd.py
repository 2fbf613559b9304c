"""Backward kernels of chunked causal linear attention with per-head scalar decay.

Shape legend as in ``chunk_fwd``; NK is the number of BK tiles of K in the dq/dk/dg kernel.
With dh_c the gradient w.r.t. the state leaving chunk c (dh of a document's last chunk is the
final-state gradient dht) and h_c the state entering it:

    dh_{c-1} = exp(gc_last) dh_c + scale * sum_i exp(gc_i) q_i^T do_i      dh0 = dh_{-1}
    dv_j = exp(gc_last - gc_j) k_j dh_c + scale * sum_{i >= j} exp(gc_i - gc_j) (q_i . k_j) do_i
    dq_i = scale * (exp(gc_i) do_i h_c^T + sum_{j <= i} exp(gc_i - gc_j) (do_i . v_j) k_j)
    dk_j = exp(gc_last - gc_j) v_j dh_c^T + scale * sum_{i >= j} exp(gc_i - gc_j) (do_i . v_j) q_i

and, for the decay, with d/dgc_t = q_t . dq_t - k_t . dk_t plus <h_{c+1}, dh_c> on the chunk's
last token (h_{c+1} = exp(gc_last) h_c + sum_j exp(gc_last - gc_j) k_j^T v_j is the state
leaving the chunk), dg is the reverse cumulative sum of that inside the chunk: every path to
later chunks already goes through h_{c+1}, so no sum ever runs across a chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hetero_sp.ops.common.chunks import ChunkIndex
from hetero_sp.ops.common.triton_utils import (
    dot_precision,
    head_dim_configs,
    new_output,
    prune_wide_tiles,
)


@triton.autotune(
    configs=head_dim_configs(
        [{"BK": 64, "BV": 64}, {"BK": 64, "BV": 32}, {"BK": 32, "BV": 64}], (4,), (2, 3)
    ),
    key=["K", "V"],
    prune_configs_by={"early_config_prune": prune_wide_tiles},
)
@triton.jit
def chunk_linear_attn_bwd_kernel_dh(
    q,
    do,
    gc,
    dh,
    dht,
    dh0,
    cu_seqlens,
    chunk_offsets,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr,
    STORE_INITIAL_STATE_GRADIENT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_nh, i_k, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    NT = tl.cdiv(eos - bos, BT).to(tl.int32)

    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    # [BK, BV]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        p_dht = dht + i_nh.to(tl.int64) * K * V + o_kv
        b_dh += tl.load(p_dht, mask=m_kv, other=0.0).to(tl.float32)

    for i_t in range(NT - 1, -1, -1):
        p_dh = dh + ((boh + i_t) * H + i_h) * K * V + o_kv
        tl.store(p_dh, b_dh.to(p_dh.dtype.element_ty), mask=m_kv)
        o_t = bos + i_t * BT + tl.arange(0, BT)
        m_t = o_t < eos
        p_qT = q + (o_t[None, :] * H + i_h) * K + o_k[:, None]
        p_do = do + (o_t[:, None] * H + i_h) * V + o_v[None, :]
        # [BK, BT]
        b_qT = tl.load(p_qT, mask=(o_k < K)[:, None] & m_t[None, :], other=0.0)
        # [BT, BV]
        b_do = tl.load(p_do, mask=m_t[:, None] & (o_v < V)[None, :], other=0.0)
        if USE_G:
            i_last = tl.minimum(bos + i_t * BT + BT, eos) - 1
            b_g_last = tl.load(gc + i_last * H + i_h)
            # [BT]
            b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0)
            b_dh *= tl.exp(b_g_last)
            b_qT = (b_qT * (scale * tl.exp(b_g))[None, :]).to(b_qT.dtype)
        else:
            b_qT = (b_qT * scale).to(b_qT.dtype)
        b_dh += tl.dot(b_qT, b_do, input_precision=DOT_PRECISION)

    if STORE_INITIAL_STATE_GRADIENT:
        p_dh0 = dh0 + i_nh.to(tl.int64) * K * V + o_kv
        tl.store(p_dh0, b_dh, mask=m_kv)


@triton.autotune(
    configs=head_dim_configs(
        [{"BK": 64, "BV": 64}, {"BK": 64, "BV": 32}, {"BK": 128, "BV": 64}], (4, 8), (2,)
    ),
    key=["K", "V"],
    prune_configs_by={"early_config_prune": prune_wide_tiles},
)
@triton.jit
def chunk_linear_attn_bwd_kernel_dv(
    q,
    k,
    do,
    gc,
    dh,
    dv,
    cu_seqlens,
    chunk_indices,
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
    i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
    i_tc = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)

    o_i = tl.arange(0, BT)
    o_t = bos + i_tc * BT + o_i
    m_t = o_t < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    dh_base = dh + (i_t.to(tl.int64) * H + i_h) * K * V

    # [BT, BV]
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    # [BT, BT]: rows j (keys), columns i (queries)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        # [BT, BK]
        b_k = tl.load(
            k + (o_t[:, None] * H + i_h) * K + o_k[None, :],
            mask=m_t[:, None] & m_k[None, :],
            other=0.0,
        )
        # [BK, BT]
        b_qT = tl.load(
            q + (o_t[None, :] * H + i_h) * K + o_k[:, None],
            mask=m_k[:, None] & m_t[None, :],
            other=0.0,
        )
        # [BK, BV]
        b_dh = tl.load(
            dh_base + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0
        )
        b_dv += tl.dot(b_k, b_dh, input_precision=DOT_PRECISION)
        b_A += tl.dot(b_k, b_qT, input_precision=DOT_PRECISION)

    # The mask goes into the exponent: below the diagonal and on padding columns (g = 0
    # there) g_i - g_j > 0 can overflow exp.
    m_A = (o_i[:, None] <= o_i[None, :]) & m_t[None, :]
    if USE_G:
        i_last = tl.minimum(bos + i_tc * BT + BT, eos) - 1
        b_g_last = tl.load(gc + i_last * H + i_h)
        # [BT]
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0)
        b_dv *= tl.exp(b_g_last - b_g)[:, None]
        b_A *= tl.exp(tl.where(m_A, b_g[None, :] - b_g[:, None], float("-inf"))) * scale
    else:
        b_A = tl.where(m_A, b_A * scale, 0.0)
    p_do = do + (o_t[:, None] * H + i_h) * V + o_v[None, :]
    # [BT, BV]
    b_do = tl.load(p_do, mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_dv += tl.dot(b_A.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)
    p_dv = dv + (o_t[:, None] * H + i_h) * V + o_v[None, :]
    tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


def chunk_bwd_dh(
    q_THK: torch.Tensor,
    do_THV: torch.Tensor,
    gc_TH: torch.Tensor | None,
    dht_NHKV: torch.Tensor | None,
    index: ChunkIndex,
    scale: float,
    need_dh0: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradient w.r.t. the state leaving every chunk, dh [M, H, K, V] in q's dtype, and
    (optionally) the fp32 gradient w.r.t. every document's initial state [N, H, K, V]."""
    _, H, K = q_THK.shape
    V = do_THV.shape[-1]
    N = index.num_docs
    dh_MHKV = new_output((index.num_chunks, H, K, V), q_THK.dtype, q_THK.device)
    dh0_NHKV = new_output((N, H, K, V), torch.float32, q_THK.device) if need_dh0 else None

    def grid(meta):
        return (N * H, triton.cdiv(K, meta["BK"]), triton.cdiv(V, meta["BV"]))

    chunk_linear_attn_bwd_kernel_dh[grid](
        q_THK,
        do_THV,
        gc_TH,
        dh_MHKV,
        dht_NHKV,
        dh0_NHKV,
        index.cu_seqlens,
        index.chunk_offsets,
        scale,
        H=H,
        K=K,
        V=V,
        BT=index.chunk_size,
        USE_G=gc_TH is not None,
        USE_FINAL_STATE_GRADIENT=dht_NHKV is not None,
        STORE_INITIAL_STATE_GRADIENT=need_dh0,
        DOT_PRECISION=dot_precision(q_THK.dtype),
    )
    return dh_MHKV, dh0_NHKV


def chunk_bwd_dv(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    do_THV: torch.Tensor,
    gc_TH: torch.Tensor | None,
    dh_MHKV: torch.Tensor,
    index: ChunkIndex,
    scale: float,
) -> torch.Tensor:
    """dv [T, H, V] in do's dtype."""
    T, H, K = q_THK.shape
    V = do_THV.shape[-1]
    dv_THV = new_output((T, H, V), do_THV.dtype, do_THV.device)
    if index.num_chunks == 0:
        return dv_THV

    def grid(meta):
        return (index.num_chunks, triton.cdiv(V, meta["BV"]), H)

    chunk_linear_attn_bwd_kernel_dv[grid](
        q_THK,
        k_THK,
        do_THV,
        gc_TH,
        dh_MHKV,
        dv_THV,
        index.cu_seqlens,
        index.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=index.chunk_size,
        USE_G=gc_TH is not None,
        DOT_PRECISION=dot_precision(q_THK.dtype),
    )
    return dv_THV
