"""Obviously-correct references for causal linear attention with per-head scalar decay.

Shape legend: T tokens of a packed stream, N documents, H heads, K key dim, V value dim.
Per document and head the recurrence is

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t        S_{-1} = initial_state (or 0)
    o_t = scale * q_t S_t

with ``g_t <= 0`` the log-decay of token t (``g is None`` means no decay). The state resets at
every document start, so no token sees another document.
"""

from __future__ import annotations

import torch

from hetero_sp.ops.common.varlen import as_list, check_cu_seqlens


def _prepare(q, k, v, g, cu_seqlens, scale, initial_state):
    cu = as_list(cu_seqlens)
    check_cu_seqlens(cu, q.shape[0])
    num_docs, num_heads = len(cu) - 1, q.shape[1]
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if g is None:
        g = q.new_zeros(q.shape[:2])
    if initial_state is None:
        initial_state = q.new_zeros(num_docs, num_heads, q.shape[-1], v.shape[-1])
    return cu, scale, g, initial_state


def naive_recurrent_linear_attn(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    cu_seqlens: torch.Tensor | list[int],
    scale: float | None = None,
    initial_state_NHKV: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token recurrence, the definition itself. Returns (o [T, H, V], final [N, H, K, V])."""
    cu, scale, g_TH, state0 = _prepare(
        q_THK, k_THK, v_THV, g_TH, cu_seqlens, scale, initial_state_NHKV
    )
    outputs, finals = [], []
    for i, (start, end) in enumerate(zip(cu, cu[1:])):
        state_HKV = state0[i]
        for t in range(start, end):
            decay_H = g_TH[t].exp()[:, None, None]
            state_HKV = decay_H * state_HKV + k_THK[t][:, :, None] * v_THV[t][:, None, :]
            outputs.append(scale * torch.einsum("hk,hkv->hv", q_THK[t], state_HKV))
        finals.append(state_HKV)
    if outputs:
        o_THV = torch.stack(outputs)
    else:
        o_THV = v_THV.new_zeros(v_THV.shape)
    return o_THV, (torch.stack(finals) if output_final_state else None)


def naive_linear_attn(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    cu_seqlens: torch.Tensor | list[int],
    scale: float | None = None,
    initial_state_NHKV: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Quadratic (attention-matrix) form per document, O(T^2). Same contract as the recurrence.

    With ``G_t = sum_{s <= t} g_s`` inside a document:
    ``o_t = scale * (sum_{s <= t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) q_t S0)`` and
    ``S_final = sum_s exp(G_last - G_s) k_s^T v_s + exp(G_last) S0``.
    """
    cu, scale, g_TH, state0 = _prepare(
        q_THK, k_THK, v_THV, g_TH, cu_seqlens, scale, initial_state_NHKV
    )
    outputs, finals = [], []
    for i, (start, end) in enumerate(zip(cu, cu[1:])):
        q, k, v = q_THK[start:end], k_THK[start:end], v_THV[start:end]
        G_LH = g_TH[start:end].to(torch.promote_types(g_TH.dtype, torch.float32)).cumsum(0)
        length = end - start
        causal_LL = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        diff_HLL = G_LH.T[:, :, None] - G_LH.T[:, None, :]
        decay_HLL = torch.where(causal_LL, diff_HLL, float("-inf")).exp().to(q.dtype)
        scores_HLL = torch.einsum("thk,shk->hts", q, k) * decay_HLL
        o = torch.einsum("hts,shv->thv", scores_HLL, v)
        o = o + torch.einsum("thk,hkv->thv", q * G_LH.exp().to(q.dtype)[:, :, None], state0[i])
        outputs.append(scale * o)
        if output_final_state:
            if length == 0:
                finals.append(state0[i])
                continue
            tail_LH = (G_LH[-1][None, :] - G_LH).exp().to(q.dtype)
            final = torch.einsum("shk,shv->hkv", k * tail_LH[:, :, None], v)
            finals.append(final + G_LH[-1].exp().to(q.dtype)[:, None, None] * state0[i])
    o_THV = torch.cat(outputs) if outputs else v_THV.new_zeros(v_THV.shape)
    return o_THV, (torch.stack(finals) if output_final_state else None)
