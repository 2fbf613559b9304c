"""Forward kernels of chunked causal linear attention with per-head scalar decay.

Shape legend: T tokens, H heads, K key dim, V value dim, N documents, M chunks (see
``hetero_sp.ops.common.chunks``), BT chunk size, BK / BV tiles of K / V.

``gc`` is the log-decay summed inside each chunk up to and including the token (fp32 [T, H]).
For chunk c of a document, with h_c the state entering it (h_0 = the initial state):

    h_{c+1} = exp(gc_last) h_c + sum_j exp(gc_last - gc_j) k_j^T v_j
    o_i     = scale * (exp(gc_i) q_i h_c + sum_{j <= i} exp(gc_i - gc_j) (q_i . k_j) v_j)

The kernels read every bound from ``cu_seqlens``: no argument depends on T, so a new sequence
length never recompiles.
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
def chunk_linear_attn_fwd_kernel_h(
    k,
    v,
    gc,
    h,
    h0,
    ht,
    cu_seqlens,
    chunk_offsets,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
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
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        p_h0 = h0 + i_nh.to(tl.int64) * K * V + o_kv
        b_h += tl.load(p_h0, mask=m_kv, other=0.0).to(tl.float32)

    for i_t in range(0, NT):
        p_h = h + ((boh + i_t) * H + i_h) * K * V + o_kv
        tl.store(p_h, b_h.to(p_h.dtype.element_ty), mask=m_kv)
        o_t = bos + i_t * BT + tl.arange(0, BT)
        m_t = o_t < eos
        p_kT = k + (o_t[None, :] * H + i_h) * K + o_k[:, None]
        p_v = v + (o_t[:, None] * H + i_h) * V + o_v[None, :]
        # [BK, BT]
        b_kT = tl.load(p_kT, mask=(o_k < K)[:, None] & m_t[None, :], other=0.0)
        # [BT, BV]
        b_v = tl.load(p_v, mask=m_t[:, None] & (o_v < V)[None, :], other=0.0)
        if USE_G:
            i_last = tl.minimum(bos + i_t * BT + BT, eos) - 1
            b_g_last = tl.load(gc + i_last * H + i_h)
            # [BT]
            b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0)
            b_h *= tl.exp(b_g_last)
            b_v = (b_v * tl.exp(b_g_last - b_g)[:, None]).to(b_v.dtype)
        b_h += tl.dot(b_kT, b_v, input_precision=DOT_PRECISION)

    if STORE_FINAL_STATE:
        p_ht = ht + i_nh.to(tl.int64) * K * V + o_kv
        tl.store(p_ht, b_h, mask=m_kv)


@triton.autotune(
    configs=head_dim_configs(
        [{"BK": 64, "BV": 64}, {"BK": 64, "BV": 32}, {"BK": 128, "BV": 64}], (4, 8), (2,)
    ),
    key=["K", "V"],
    prune_configs_by={"early_config_prune": prune_wide_tiles},
)
@triton.jit
def chunk_linear_attn_fwd_kernel_o(
    q,
    k,
    v,
    gc,
    h,
    o,
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
    h_base = h + (i_t.to(tl.int64) * H + i_h) * K * V

    # [BT, BV]
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    # [BT, BT]
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        # [BT, BK]
        b_q = tl.load(
            q + (o_t[:, None] * H + i_h) * K + o_k[None, :],
            mask=m_t[:, None] & m_k[None, :],
            other=0.0,
        )
        # [BK, BT]
        b_kT = tl.load(
            k + (o_t[None, :] * H + i_h) * K + o_k[:, None],
            mask=m_k[:, None] & m_t[None, :],
            other=0.0,
        )
        # [BK, BV]
        b_h = tl.load(
            h_base + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0
        )
        b_o += tl.dot(b_q, b_h, input_precision=DOT_PRECISION)
        b_A += tl.dot(b_q, b_kT, input_precision=DOT_PRECISION)

    # The mask goes into the exponent: above the diagonal and on padding rows (g = 0 there)
    # g_i - g_j > 0 can overflow exp.
    m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None]
    if USE_G:
        # [BT]
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0.0)
        b_o *= tl.exp(b_g)[:, None]
        b_A *= tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], float("-inf")))
    else:
        b_A = tl.where(m_A, b_A, 0.0)
    p_v = v + (o_t[:, None] * H + i_h) * V + o_v[None, :]
    # [BT, BV]
    b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_o = (b_o + tl.dot(b_A.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)) * scale
    p_o = o + (o_t[:, None] * H + i_h) * V + o_v[None, :]
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


def chunk_fwd_h(
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    gc_TH: torch.Tensor | None,
    h0_NHKV: torch.Tensor | None,
    index: ChunkIndex,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """States entering every chunk, h [M, H, K, V] in k's dtype, and (optionally) the fp32
    final state of every document [N, H, K, V]."""
    _, H, K = k_THK.shape
    V = v_THV.shape[-1]
    N = index.num_docs
    h_MHKV = new_output((index.num_chunks, H, K, V), k_THK.dtype, k_THK.device)
    ht_NHKV = new_output((N, H, K, V), torch.float32, k_THK.device) if output_final_state else None

    def grid(meta):
        return (N * H, triton.cdiv(K, meta["BK"]), triton.cdiv(V, meta["BV"]))

    chunk_linear_attn_fwd_kernel_h[grid](
        k_THK,
        v_THV,
        gc_TH,
        h_MHKV,
        h0_NHKV,
        ht_NHKV,
        index.cu_seqlens,
        index.chunk_offsets,
        H=H,
        K=K,
        V=V,
        BT=index.chunk_size,
        USE_G=gc_TH is not None,
        USE_INITIAL_STATE=h0_NHKV is not None,
        STORE_FINAL_STATE=output_final_state,
        DOT_PRECISION=dot_precision(k_THK.dtype),
    )
    return h_MHKV, ht_NHKV


def chunk_fwd_o(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    gc_TH: torch.Tensor | None,
    h_MHKV: torch.Tensor,
    index: ChunkIndex,
    scale: float,
) -> torch.Tensor:
    """Output [T, H, V] in v's dtype: the inter-chunk part from h plus the intra-chunk part."""
    T, H, K = q_THK.shape
    V = v_THV.shape[-1]
    o_THV = new_output((T, H, V), v_THV.dtype, v_THV.device)
    if index.num_chunks == 0:
        return o_THV

    def grid(meta):
        return (index.num_chunks, triton.cdiv(V, meta["BV"]), H)

    chunk_linear_attn_fwd_kernel_o[grid](
        q_THK,
        k_THK,
        v_THV,
        gc_TH,
        h_MHKV,
        o_THV,
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
    return o_THV
