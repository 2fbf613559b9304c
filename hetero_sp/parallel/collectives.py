"""Collectives of the SP strategies that add what they move to the ``COMM`` counter.

Counting follows ``comm.py``: per rank, the bytes that leave it and that arrive at it, its own
block excluded. The numbers are taken from the buffers actually exchanged, so a test that
compares the counter with the pure formulas checks the formulas against the code.

Shape legend: T local tokens, N = P T tokens of the group, P ranks, X any trailing shape.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hetero_sp.parallel.context import SPContext
from hetero_sp.parallel.traffic_counter import COMM

# torch 2.13 renamed the equal-split collectives; older releases only have the first names.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def check_group(sp: SPContext | None, num_tokens: int, strategy: str) -> SPContext:
    """The context a strategy needs, or a ValueError saying what is inconsistent."""
    if sp is None or sp.size < 2:
        raise ValueError(
            f"{strategy} runs on a group of 2 or more ranks; a single rank takes the plain path "
            "(PackedSeqs without an SP context, or a group of size 1)"
        )
    if sp.group is not None and dist.get_world_size(sp.group) != sp.size:
        raise ValueError(
            f"the SP context says {sp.size} ranks but its process group has "
            f"{dist.get_world_size(sp.group)}; build both from the same group"
        )
    if num_tokens != sp.layout.tokens_per_rank:
        raise ValueError(
            f"{strategy} got {num_tokens} local tokens but the group's layout gives each rank "
            f"{sp.layout.tokens_per_rank}; pass this rank's shard (layout.local_index(rank)), "
            "padding included"
        )
    return sp


def softmax_entry(
    q_THE: torch.Tensor,
    k_TGE: torch.Tensor,
    v_TGE: torch.Tensor,
    seqs,
    strategy: str,
    scale: float | None,
) -> tuple[SPContext, float, bool]:
    """What every softmax strategy checks and resolves first: the group context (see
    :func:`check_group`), q/k/v shapes that agree, the scale (``E ** -0.5`` by default), and
    whether autograd needs the strategy's graph (False: run the forward alone)."""
    sp = check_group(seqs.sp, q_THE.shape[0], strategy)
    if k_TGE.shape != v_TGE.shape or k_TGE.shape[0] != q_THE.shape[0]:
        raise ValueError(f"k {tuple(k_TGE.shape)} and v {tuple(v_TGE.shape)} must match q's tokens")
    if q_THE.shape[1] % k_TGE.shape[1]:
        raise ValueError(
            f"query heads ({q_THE.shape[1]}) must be a multiple of KV heads ({k_TGE.shape[1]})"
        )
    if scale is None:
        scale = q_THE.shape[-1] ** -0.5
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (q_THE, k_TGE, v_TGE))
    return sp, scale, needs_graph


def all_to_all(
    send: torch.Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    sp: SPContext,
    strategy: str,
    direction: str,
) -> torch.Tensor:
    """1-D all-to-all with per-rank split sizes (elements): ``send[splits[r]]`` goes to rank r."""
    recv = send.new_empty(sum(recv_splits))
    dist.all_to_all_single(
        recv, send, output_split_sizes=recv_splits, input_split_sizes=send_splits, group=sp.group
    )
    size = send.element_size()
    COMM.add(
        strategy,
        direction,
        (sum(send_splits) - send_splits[sp.rank]) * size,
        (sum(recv_splits) - recv_splits[sp.rank]) * size,
    )
    return recv


def all_gather(x_TX: torch.Tensor, sp: SPContext, strategy: str, direction: str) -> torch.Tensor:
    """[T, X] -> [N, X], rank r's block at rows ``[r T, (r + 1) T)``."""
    x_TX = x_TX.contiguous()
    out_NX = x_TX.new_empty((sp.size * x_TX.shape[0], *x_TX.shape[1:]))
    _all_gather_single(out_NX, x_TX, group=sp.group)
    moved = (sp.size - 1) * x_TX.numel() * x_TX.element_size()
    COMM.add(strategy, direction, moved, moved)
    return out_NX


def reduce_scatter(
    x_NX: torch.Tensor, sp: SPContext, strategy: str, direction: str
) -> torch.Tensor:
    """[N, X] -> [T, X]: the sum over ranks of every rank's block ``[r T, (r + 1) T)``."""
    x_NX = x_NX.contiguous()
    out_TX = x_NX.new_empty((x_NX.shape[0] // sp.size, *x_NX.shape[1:]))
    _reduce_scatter_single(out_TX, x_NX, group=sp.group)
    moved = (sp.size - 1) * out_TX.numel() * out_TX.element_size()
    COMM.add(strategy, direction, moved, moved)
    return out_TX
