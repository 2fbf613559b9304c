"""Chunked causal linear attention with per-head scalar decay on packed documents (Triton).

Shape legend: T tokens of the packed stream, N documents, H heads, K key dim, V value dim,
M chunks of at most 64 tokens (a chunk never crosses a document).

Layering as in fla: Triton kernels in ``chunk_fwd`` / ``chunk_bwd`` / ``chunk_bwd_dqkg``, the
host functions ``chunk_linear_attn_fwd`` / ``chunk_linear_attn_bwd`` here, one autograd
Function, and the public op ``chunk_linear_attn`` (same contract as
``torch_chunk.torch_chunk_linear_attn`` and ``naive.naive_linear_attn``).
"""

from __future__ import annotations

import torch

from hetero_sp.ops.common.chunks import ChunkIndex, prepare_chunk_index
from hetero_sp.ops.common.cumsum import chunk_local_cumsum
from hetero_sp.ops.common.triton_utils import check_kernel_device
from hetero_sp.ops.common.varlen import as_list
from hetero_sp.ops.linear_attn.chunk_bwd import chunk_bwd_dh, chunk_bwd_dv
from hetero_sp.ops.linear_attn.chunk_bwd_dqkg import chunk_bwd_dqkg
from hetero_sp.ops.linear_attn.chunk_fwd import chunk_fwd_h, chunk_fwd_o

CHUNK_SIZE = 64


def chunk_linear_attn_fwd(q_THK, k_THK, v_THV, g_TH, h0_NHKV, index: ChunkIndex, scale, final):
    """Returns (gc fp32 [T, H] or None, o [T, H, V], final state fp32 [N, H, K, V] or None)."""
    gc_TH = chunk_local_cumsum(g_TH, index) if g_TH is not None else None
    h_MHKV, ht_NHKV = chunk_fwd_h(k_THK, v_THV, gc_TH, h0_NHKV, index, final)
    o_THV = chunk_fwd_o(q_THK, k_THK, v_THV, gc_TH, h_MHKV, index, scale)
    return gc_TH, o_THV, ht_NHKV


def chunk_linear_attn_bwd(
    q_THK, k_THK, v_THV, gc_TH, h0_NHKV, do_THV, dht_NHKV, index: ChunkIndex, scale, need_dh0
):
    """Returns (dq, dk, dv, dg fp32 [T, H] or None, dh0 fp32 [N, H, K, V] or None).

    The chunk states are recomputed rather than kept from the forward: [M, H, K, V] is the
    largest tensor of the op (8 GiB in bf16 for 1M tokens, H = 16, K = V = 128)."""
    h_MHKV, _ = chunk_fwd_h(k_THK, v_THV, gc_TH, h0_NHKV, index, False)
    dh_MHKV, dh0_NHKV = chunk_bwd_dh(q_THK, do_THV, gc_TH, dht_NHKV, index, scale, need_dh0)
    dv_THV = chunk_bwd_dv(q_THK, k_THK, do_THV, gc_TH, dh_MHKV, index, scale)
    dq_THK, dk_THK, dg_TH = chunk_bwd_dqkg(
        q_THK, k_THK, v_THV, gc_TH, h_MHKV, do_THV, dh_MHKV, index, scale
    )
    return dq_THK, dk_THK, dv_THV, dg_TH, dh0_NHKV


class ChunkLinearAttnFunction(torch.autograd.Function):
    """(q, k, v, g, initial state) -> (o, final state); both outputs take gradients.

    forward:  S_t = exp(g_t) S_{t-1} + k_t^T v_t per document and head, S_{-1} = initial
              state; o_t = scale q_t S_t; final = S at each document's last token (the
              initial state for an empty document).
    backward: (do, d final) -> (dq, dk, dv, dg, d initial state), equations in ``chunk_bwd``.
    """

    @staticmethod
    def forward(ctx, q_THK, k_THK, v_THV, g_TH, h0_NHKV, index, scale, output_final_state):
        gc_TH, o_THV, ht_NHKV = chunk_linear_attn_fwd(
            q_THK, k_THK, v_THV, g_TH, h0_NHKV, index, scale, output_final_state
        )
        ctx.save_for_backward(q_THK, k_THK, v_THV, gc_TH, h0_NHKV)
        ctx.index, ctx.scale = index, scale
        ctx.g_dtype = None if g_TH is None else g_TH.dtype
        if ht_NHKV is not None:
            # The torch backend returns the state in the inputs' dtype; so do we.
            ht_NHKV = ht_NHKV.to(q_THK.dtype)
        return o_THV, ht_NHKV

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do_THV, dht_NHKV):
        q_THK, k_THK, v_THV, gc_TH, h0_NHKV = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = chunk_linear_attn_bwd(
            q_THK,
            k_THK,
            v_THV,
            gc_TH,
            h0_NHKV,
            do_THV.contiguous(),
            None if dht_NHKV is None else dht_NHKV.float().contiguous(),
            ctx.index,
            ctx.scale,
            need_dh0=h0_NHKV is not None and ctx.needs_input_grad[4],
        )
        if dg is not None:
            dg = dg.to(ctx.g_dtype)
        if dh0 is not None:
            dh0 = dh0.to(h0_NHKV.dtype)
        return dq, dk, dv, dg, dh0, None, None, None


def _check_shapes(q_THK, k_THK, v_THV, g_TH, h0_NHKV, num_docs):
    if q_THK.dim() != 3 or k_THK.shape != q_THK.shape:
        raise ValueError(
            f"q and k must both be [T, H, K], got {tuple(q_THK.shape)}, {tuple(k_THK.shape)}"
        )
    T, H, K = q_THK.shape
    if v_THV.dim() != 3 or v_THV.shape[:2] != (T, H):
        raise ValueError(f"v must be [T={T}, H={H}, V], got {tuple(v_THV.shape)}")
    if not (q_THK.dtype == k_THK.dtype == v_THV.dtype) or not q_THK.dtype.is_floating_point:
        raise ValueError(
            f"q, k, v must share one float dtype, got {q_THK.dtype}, {k_THK.dtype}, {v_THV.dtype}"
        )
    if g_TH is not None and (g_TH.shape != (T, H) or not g_TH.dtype.is_floating_point):
        raise ValueError(
            f"g must be a float [T={T}, H={H}] log-decay, got {tuple(g_TH.shape)} {g_TH.dtype}"
        )
    expected = (num_docs, H, K, v_THV.shape[-1])
    if h0_NHKV is not None and h0_NHKV.shape != expected:
        raise ValueError(
            f"initial state must be [N, H, K, V] = {expected}, got {tuple(h0_NHKV.shape)}"
        )


def chunk_linear_attn(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    cu_seqlens: torch.Tensor | list[int],
    scale: float | None = None,
    initial_state_NHKV: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal linear attention with decay over the packed documents of ``cu_seqlens``.

    Args:
        q_THK, k_THK: [T, H, K]; v_THV: [T, H, V]; one dtype (fp32, bf16 or fp16; fp32 only
            under ``TRITON_INTERPRET=1``), CUDA tensors (or CPU under the interpreter).
        g_TH: [T, H] per-token log-decay (<= 0), any float dtype; None for no decay.
        cu_seqlens: N + 1 non-decreasing ints from 0 to T; documents may be empty.
        scale: multiplies q; default K ** -0.5.
        initial_state_NHKV: [N, H, K, V] state each document starts from (None = zeros).
        output_final_state: also return every document's final state.

    Returns:
        o_THV [T, H, V] in v's dtype, and the final states [N, H, K, V] in q's dtype (None
        unless ``output_final_state``). Differentiable w.r.t. q, k, v, g and the initial state,
        with gradients flowing in through both outputs.
    """
    cu = as_list(cu_seqlens)
    check_kernel_device(q_THK, k_THK, v_THV, g_TH, initial_state_NHKV)
    _check_shapes(q_THK, k_THK, v_THV, g_TH, initial_state_NHKV, len(cu) - 1)
    index = prepare_chunk_index(cu, q_THK.shape[0], CHUNK_SIZE, q_THK.device)
    if scale is None:
        scale = q_THK.shape[-1] ** -0.5
    contiguous = [None if t is None else t.contiguous() for t in (g_TH, initial_state_NHKV)]
    return ChunkLinearAttnFunction.apply(
        q_THK.contiguous(),
        k_THK.contiguous(),
        v_THV.contiguous(),
        *contiguous,
        index,
        float(scale),
        output_final_state,
    )
