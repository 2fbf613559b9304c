"""Ulysses sequence parallelism for softmax attention (DeepSpeed-Ulysses, arXiv 2309.14509).

A rank enters with its T tokens of every head. One all-to-all gives it every token of the
group's stream for its share of the heads; it attends over whole documents locally, and a second
all-to-all brings the output of its own tokens back. After the exchange the tokens sit in rank
order, which ``layout.concat_index()`` maps to stream order, so any layout works (the contiguous
one needs no reordering).

Grouped-query attention: rank r receives the KV heads its query heads read
(``heads.ulysses_kv_ranges``), so with fewer KV heads than ranks a KV head is sent to every rank
that needs it and the backward sums the copies' gradients. Any group of at most H ranks works:
where P does not divide H, some ranks hold one query head more than others
(``heads.ulysses_q_ranges``) and the all-to-all splits are uneven.

Shape legend: P ranks, T local tokens, N = P T tokens of the group's stream, H query heads,
G KV heads, h query heads this rank holds (H / P when P divides H), g KV heads this rank
receives, E head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hetero_sp.core.heads import (
    check_ulysses_heads,
    ulysses_kv_of_q,
    ulysses_kv_ranges,
    ulysses_q_ranges,
)
from hetero_sp.ops.backends import varlen_softmax_attention
from hetero_sp.parallel.collectives import all_to_all, softmax_entry
from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.sharding import GroupLayout

if TYPE_CHECKING:
    from hetero_sp.parallel.packed import PackedSeqs

STRATEGY = "ulysses"

Ranges = tuple[tuple[int, int], ...]


def _heads_to_ranks(
    parts: list[tuple[torch.Tensor, Ranges]], sp: SPContext, direction: str
) -> list[torch.Tensor]:
    """Each part ``[T, X, E]`` -> ``[N, x, E]`` in rank order, where rank r receives heads
    ``ranges[r]`` of every rank's tokens. All parts travel in one all-to-all."""
    T = parts[0][0].shape[0]
    send = torch.cat(
        [x[:, slice(*ranges[r])].reshape(-1) for r in range(sp.size) for x, ranges in parts]
    )
    send_splits = [
        sum(T * (ranges[r][1] - ranges[r][0]) * x.shape[-1] for x, ranges in parts)
        for r in range(sp.size)
    ]
    mine = [(ranges[sp.rank][1] - ranges[sp.rank][0], x.shape[-1]) for x, ranges in parts]
    per_rank = sum(T * n * e for n, e in mine)
    recv = all_to_all(send, send_splits, [per_rank] * sp.size, sp, STRATEGY, direction)
    recv_P = recv.view(sp.size, per_rank)  # row s: every part's heads of rank s's tokens
    out, offset = [], 0
    for n, e in mine:
        out.append(recv_P[:, offset : offset + T * n * e].reshape(sp.size * T, n, e))
        offset += T * n * e
    return out


def _ranks_to_heads(
    parts: list[tuple[torch.Tensor, Ranges, int]], sp: SPContext, direction: str
) -> list[torch.Tensor]:
    """Inverse of :func:`_heads_to_ranks`: each part ``[N, x, E]`` (rank order) -> ``[T, X, E]``
    with X = the part's total heads; heads received from several ranks are summed."""
    T = parts[0][0].shape[0] // sp.size
    send = torch.cat([y.reshape(sp.size, -1) for y, _, _ in parts], dim=1).reshape(-1)
    per_rank = send.numel() // sp.size
    recv_splits = [
        sum(T * (ranges[r][1] - ranges[r][0]) * y.shape[-1] for y, ranges, _ in parts)
        for r in range(sp.size)
    ]
    recv = all_to_all(send, [per_rank] * sp.size, recv_splits, sp, STRATEGY, direction)
    outs = [y.new_zeros(T, num_heads, y.shape[-1]) for y, _, num_heads in parts]
    offset = 0
    for r in range(sp.size):
        for out, (y, ranges, _) in zip(outs, parts):
            lo, hi = ranges[r]
            n = T * (hi - lo) * y.shape[-1]
            out[:, lo:hi] += recv[offset : offset + n].view(T, hi - lo, y.shape[-1])
            offset += n
    return outs


def _stream_order(
    layout: GroupLayout, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(stream index of each rank-order row, rank-order row of each stream token), or None when
    the two orders coincide (the contiguous layout)."""
    if layout.kind == "contiguous":
        return None
    concat = layout.concat_index(device)
    return concat, torch.argsort(concat)


@dataclass
class _Saved:
    leaves: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    """Head-sharded q, k, v in stream order, the inputs of the local attention graph."""
    out_NhE: torch.Tensor
    order: tuple[torch.Tensor, torch.Tensor] | None
    q_ranges: Ranges
    kv_ranges: Ranges


def ulysses_forward(
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
    H, G = q_THE.shape[1], k_TGE.shape[1]
    q_ranges = ulysses_q_ranges(H, G, sp.size)
    kv_ranges = ulysses_kv_ranges(H, G, sp.size)
    q_NhE, k_NgE, v_NgE = _heads_to_ranks(
        [(q_THE, q_ranges), (k_TGE, kv_ranges), (v_TGE, kv_ranges)], sp, "fwd"
    )
    order = _stream_order(sp.layout, q_THE.device)
    if order is not None:
        q_NhE, k_NgE, v_NgE = (x.index_select(0, order[1]) for x in (q_NhE, k_NgE, v_NgE))
    kv_of_q = ulysses_kv_of_q(H, G, sp.size, sp.rank)
    with torch.set_grad_enabled(keep_graph):
        leaves = tuple(x.detach().requires_grad_(keep_graph) for x in (q_NhE, k_NgE, v_NgE))
        q, k, v = leaves
        if kv_of_q is not None:
            index = torch.tensor(kv_of_q, device=k.device)
            k, v = k.index_select(1, index), v.index_select(1, index)
        cu = sp.layout.cu_seqlens
        out_NhE = varlen_softmax_attention(q, k, v, cu, cu, backend=backend, scale=scale)
    o_NhE = out_NhE.detach()
    if order is not None:
        o_NhE = o_NhE.index_select(0, order[0])
    (o_THE,) = _ranks_to_heads([(o_NhE, q_ranges, H)], sp, "fwd")
    return o_THE, _Saved(leaves, out_NhE, order, q_ranges, kv_ranges)


def ulysses_backward(
    do_THE: torch.Tensor, saved: _Saved, sp: SPContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq [T, H, E], dk and dv [T, G, E] of this rank's tokens."""
    (do_NhE,) = _heads_to_ranks([(do_THE.contiguous(), saved.q_ranges)], sp, "bwd")
    if saved.order is not None:
        do_NhE = do_NhE.index_select(0, saved.order[1])
    grads = torch.autograd.grad(saved.out_NhE, saved.leaves, do_NhE)
    if saved.order is not None:
        grads = [g.index_select(0, saved.order[0]) for g in grads]
    dq_NhE, dk_NgE, dv_NgE = grads
    H, G = saved.q_ranges[-1][1], saved.kv_ranges[-1][1]
    return tuple(
        _ranks_to_heads(
            [
                (dq_NhE, saved.q_ranges, H),
                (dk_NgE, saved.kv_ranges, G),
                (dv_NgE, saved.kv_ranges, G),
            ],
            sp,
            "bwd",
        )
    )


class UlyssesAttention(torch.autograd.Function):
    """Causal softmax attention of a group's packed stream, one rank's share, by all-to-all.

    ======  ===============  ===================  ==============
    tensor  local shard       after all-to-all     local output
    ======  ===============  ===================  ==============
    q       [T, H, E]         [N, h, E]
    k, v    [T, G, E]         [N, g, E]
    o                         [N, h, E] (attn)     [T, H, E]
    ======  ===============  ===================  ==============

    Forward:  ``o = A2A⁻¹(attn(A2A(q), A2A(k), A2A(v)))`` with A2A: sequence-sharded ->
    head-sharded in stream order, and attention per document of the group's stream.
    Backward: ``(dq, dk, dv) = A2A⁻¹(attn_bwd(A2A(do)))``; the gradients of a KV head sent to
    several ranks are summed over them.
    """

    @staticmethod
    def forward(ctx, q_THE, k_TGE, v_TGE, sp, backend, scale):
        o_THE, ctx.saved = ulysses_forward(q_THE, k_TGE, v_TGE, sp, backend=backend, scale=scale)
        ctx.sp = sp
        return o_THE

    @staticmethod
    def backward(ctx, do_THE):
        dq_THE, dk_TGE, dv_TGE = ulysses_backward(do_THE, ctx.saved, ctx.sp)
        del ctx.saved
        return dq_THE, dk_TGE, dv_TGE, None, None, None


def ulysses_attention(
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
    padding included). Needs at most H ranks in the group (:func:`ulysses_supported`).
    """
    sp, scale, needs_graph = softmax_entry(q_THE, k_TGE, v_TGE, seqs, STRATEGY, scale)
    check_ulysses_heads(q_THE.shape[1], k_TGE.shape[1], sp.size)
    if not needs_graph:
        return ulysses_forward(
            q_THE, k_TGE, v_TGE, sp, backend=backend, scale=scale, keep_graph=False
        )[0]
    return UlyssesAttention.apply(q_THE, k_TGE, v_TGE, sp, backend, scale)
