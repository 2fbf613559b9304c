"""The attention of a packed stream, alone or across its SP group: the one core both mixers run,
HeteroSP's own layers (``hetero_sp.model.attention``) and the Megatron plug-in's.

Shape legend: T local tokens, H query heads, G key/value heads, E head dim of q/k, F of v.

With ``seqs.sp`` None or a group of one rank the single-rank backend runs the rank's documents;
otherwise the strategy ``seqs.sp`` names runs them across the group (the context carries the
group, its layout and both strategy names, as fla passes ``cp_context`` to its ops).
"""

from __future__ import annotations

import torch

from hetero_sp.ops.backends import local_linear_attention, varlen_softmax_attention
from hetero_sp.parallel import linear_strategy, softmax_strategy
from hetero_sp.parallel.packed import PackedSeqs


def runs_alone(seqs: PackedSeqs) -> bool:
    return seqs.sp is None or seqs.sp.size == 1


def softmax_attention(
    q_THE: torch.Tensor,
    k_TGE: torch.Tensor,
    v_TGF: torch.Tensor,
    seqs: PackedSeqs,
    *,
    backend: str,
    scale: float,
) -> torch.Tensor:
    """Causal grouped-query softmax attention of the rank's documents: [T, H, F]."""
    if runs_alone(seqs):
        cu = seqs.cu_seqlens_list
        return varlen_softmax_attention(q_THE, k_TGE, v_TGF, cu, cu, backend=backend, scale=scale)
    run = softmax_strategy(seqs.sp.softmax_strategy)
    return run(q_THE, k_TGE, v_TGF, seqs, backend=backend, scale=scale)


def linear_attention(
    q_THE: torch.Tensor,
    k_THE: torch.Tensor,
    v_THF: torch.Tensor,
    g_TH: torch.Tensor | None,
    seqs: PackedSeqs,
    *,
    backend: str,
    scale: float,
) -> torch.Tensor:
    """Causal linear attention with decay ``g`` (log space, None: no decay): [T, H, F]."""
    if runs_alone(seqs):
        o_THF, _ = local_linear_attention(
            q_THE, k_THE, v_THF, g_TH, seqs.cu_seqlens_list, scale=scale, backend=backend
        )
        return o_THF
    run = linear_strategy(seqs.sp.linear_strategy)
    return run(q_THE, k_THE, v_THF, g_TH, seqs, backend=backend, scale=scale)
