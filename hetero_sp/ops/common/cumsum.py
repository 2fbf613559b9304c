"""Cumulative sum of a per-head scalar (the log-decay ``g``) inside every chunk.

Shape legend: T tokens, H heads, BT chunk size, BH heads rounded up to a power of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hetero_sp.ops.common.chunks import ChunkIndex
from hetero_sp.ops.common.triton_utils import new_output


@triton.jit
def chunk_local_cumsum_fwd_kernel_scalar(
    g,
    gc,
    cu_seqlens,
    chunk_indices,
    H: tl.constexpr,
    BT: tl.constexpr,
    BH: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
    i_tc = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    o_t = bos + i_tc * BT + tl.arange(0, BT)
    o_h = tl.arange(0, BH)
    m_th = (o_t < eos)[:, None] & (o_h < H)[None, :]
    o_th = o_t[:, None] * H + o_h[None, :]
    # [BT, BH]
    b_g = tl.load(g + o_th, mask=m_th, other=0.0).to(tl.float32)
    tl.store(gc + o_th, tl.cumsum(b_g, axis=0), mask=m_th)


def chunk_local_cumsum(g_TH: torch.Tensor, index: ChunkIndex) -> torch.Tensor:
    """fp32 [T, H]: for every token, the sum of ``g`` from its chunk's first token to itself."""
    T, H = g_TH.shape
    gc_TH = new_output((T, H), torch.float32, g_TH.device)
    if index.num_chunks:
        chunk_local_cumsum_fwd_kernel_scalar[(index.num_chunks,)](
            g_TH,
            gc_TH,
            index.cu_seqlens,
            index.chunk_indices,
            H=H,
            BT=index.chunk_size,
            BH=triton.next_power_of_2(H),
        )
    return gc_TH
