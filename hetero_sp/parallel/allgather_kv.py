"""All-gather K/V sequence parallelism for softmax attention (Llama 3 context parallelism,
LASP-2H's softmax half).

Every rank gathers the K and V of the whole group's stream (one all-gather of the stacked pair;
shards are equal-sized) and keeps its own queries. Each local segment of a document attends to
that document's keys from its start up to the segment's end; the bottom-right causal alignment
of the varlen kernel then gives exactly the causal mask. The backward reduce-scatters dK and dV
back to the ranks that own the tokens.

Causal work grows with a token's position inside its document, so with the contiguous layout
the last rank of a long document does most of it; the ``zigzag`` (head-tail) layout that
:func:`hetero_sp.parallel.layout_kind_for` picks for this strategy evens it out
(``sharding.causal_pairs`` counts it). The code itself works with any layout.

Shape legend: P ranks, T local tokens, N = P T tokens of the group's stream, S keys the local
segments read, H query heads, G KV heads, E head dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hetero_sp.ops.backends import varlen_softmax_attention
from hetero_sp.parallel.collectives import all_gather, reduce_scatter, softmax_entry
from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.sharding import GroupLayout

if TYPE_CHECKING:
    from hetero_sp.parallel.packed import PackedSeqs

STRATEGY = "allgather_kv"


@functools.lru_cache(maxsize=64)
def key_rows(layout: GroupLayout, rank: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Rows of the gathered (rank-order) K/V each local segment reads, back to back, shape [S],
    and their ``cu_seqlens``: segment i reads its document from the start to the segment's end.
    """
    stream_to_row = torch.argsort(layout.concat_index())
    rows, cu = [], [0]
    for seg in layout.segments(rank):
        doc_start = layout.cu_seqlens[seg.doc]
        rows.append(stream_to_row[doc_start : seg.end])
        cu.append(cu[-1] + seg.end - doc_start)
    return torch.cat(rows), tuple(cu)


@dataclass
class _Saved:
    leaves: tuple[torch.Tensor, torch.Tensor]
    """Local q [T, H, E] and the gathered k, v [N, 2, G, E]: the inputs of the local graph."""
    out_THE: torch.Tensor


def allgather_kv_forward(
    q_THE: torch.Tensor,
    k_TGE: torch.Tensor,
    v_TGE: torch.Tensor,
    sp: SPContext,
    *,
    backend: str,
    scale: float,
    keep_graph: bool = True,
) -> tuple[torch.Tensor, _Saved]:
    """Local output [T, H, E] and what the backward needs (the local attention's graph, built
    only with ``keep_graph``)."""
    kv_N2GE = all_gather(torch.stack([k_TGE, v_TGE], dim=1), sp, STRATEGY, "fwd")
    rows_S, cu_k = key_rows(sp.layout, sp.rank)
    rows_S = rows_S.to(q_THE.device)
    with torch.set_grad_enabled(keep_graph):
        q = q_THE.detach().requires_grad_(keep_graph)
        kv = kv_N2GE.requires_grad_(keep_graph)
        out_THE = varlen_softmax_attention(
            q,
            kv[:, 0].index_select(0, rows_S),
            kv[:, 1].index_select(0, rows_S),
            sp.layout.local_cu_seqlens(sp.rank),
            cu_k,
            backend=backend,
            scale=scale,
        )
    return out_THE.detach(), _Saved((q, kv), out_THE)


def allgather_kv_backward(
    do_THE: torch.Tensor, saved: _Saved, sp: SPContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq [T, H, E], dk and dv [T, G, E] of this rank's tokens (dk, dv summed over the ranks
    whose queries read them)."""
    dq_THE, dkv_N2GE = torch.autograd.grad(saved.out_THE, saved.leaves, do_THE)
    dkv_T2GE = reduce_scatter(dkv_N2GE, sp, STRATEGY, "bwd")
    return dq_THE, dkv_T2GE[:, 0], dkv_T2GE[:, 1]


class AllGatherKVAttention(torch.autograd.Function):
    """Causal softmax attention of a group's packed stream, one rank's share, by all-gather K/V.

    ======  ===============  ===================  ==============
    tensor  local shard       gathered             local output
    ======  ===============  ===================  ==============
    q       [T, H, E]         (stays local)
    k, v    [T, G, E]         [N, G, E] each
    o                                              [T, H, E]
    ======  ===============  ===================  ==============

    Forward:  ``o = attn(q, AG(k), AG(v))``, each local segment against its document's keys up
    to the segment's end.
    Backward: ``dq = attn_bwd_q(do)``; ``(dk, dv) = RS(attn_bwd_kv(do))``, the reduce-scatter
    summing every rank's contribution to the keys this rank owns.
    """

    @staticmethod
    def forward(ctx, q_THE, k_TGE, v_TGE, sp, backend, scale):
        o_THE, ctx.saved = allgather_kv_forward(
            q_THE, k_TGE, v_TGE, sp, backend=backend, scale=scale
        )
        ctx.sp = sp
        return o_THE

    @staticmethod
    def backward(ctx, do_THE):
        dq_THE, dk_TGE, dv_TGE = allgather_kv_backward(do_THE.contiguous(), ctx.saved, ctx.sp)
        del ctx.saved
        return dq_THE, dk_TGE, dv_TGE, None, None, None


def allgather_kv_attention(
    q_THE: torch.Tensor,
    k_TGE: torch.Tensor,
    v_TGE: torch.Tensor,
    seqs: PackedSeqs,
    *,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Causal GQA attention [T, H, E] of this rank's tokens of ``seqs.sp``'s group stream.

    q [T, H, E], k and v [T, G, E] are this rank's shard (``T = layout.tokens_per_rank``,
    padding included). Any head count and group size works.
    """
    sp, scale, needs_graph = softmax_entry(q_THE, k_TGE, v_TGE, seqs, STRATEGY, scale)
    if not needs_graph:
        return allgather_kv_forward(
            q_THE, k_TGE, v_TGE, sp, backend=backend, scale=scale, keep_graph=False
        )[0]
    return AllGatherKVAttention.apply(q_THE, k_TGE, v_TGE, sp, backend, scale)
