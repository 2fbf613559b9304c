"""LASP-2: linear-attention sequence parallelism with one all-gather of state summaries.

Shape legend: T local tokens, H heads, K key dim, V value dim, C pieces per rank (the most
any rank of the group holds: 1 for the contiguous layout; ranks with fewer send zero rows),
P ranks of the group, N = P * C rows gathered, E = H * (K * V + 1) elements of one piece's
summary. u, b, S_in: see ``linear_pieces``.

Local summary -> one collective -> merge, each a named step:

- forward: ``LocalWork.attention`` (every local segment from a zero state, with its final
  state) -> ``LocalWork.summaries`` (u, b of the local pieces, u read off those final
  states unless short documents make them too many: ``states_from_local_call``) ->
  ``gather_summaries`` (one all-gather) -> ``combine_states`` (prefix scan over
  the stream, ``S_in(p + 1) = u_p + b_p S_in(p)``) -> ``LocalWork.corrected``.
- backward: ``LocalWork.corrections_backward`` (d_p, the part of dL/dS_in(p) this rank's
  tokens cause) -> one all-gather -> ``combine_grads`` (suffix scan,
  ``E_p = dL/dS_in(p + 1) = d_{p+1} + b_{p+1} E_{p+1}``) -> ``LocalWork.replay`` (the local
  attention's backward with dL/do and dL/du_p = E_p on its final states, in one pass).

The collective moves a few K x V states, independent of the sequence length; it is not
overlapped with the local attention (u comes from it), which saves a pass over the tokens.
The states cross the wire in fp32 (fp64 for fp64 inputs); see ``comm.lasp2_bytes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from hetero_sp.ops.linear_attn_sp import state_scan
from hetero_sp.parallel.linear_local import LocalWork
from hetero_sp.parallel.linear_pieces import PieceTable, check_linear_inputs, piece_table
from hetero_sp.parallel.traffic_counter import COMM

if TYPE_CHECKING:
    from hetero_sp.parallel.packed import PackedSeqs

# torch 2.13 renamed all_gather_into_tensor (deprecated there); older releases lack the new name.
_all_gather_into_tensor = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


def gather_summaries(
    own_X: torch.Tensor, table: PieceTable, group: dist.ProcessGroup, direction: str
) -> torch.Tensor:
    """All-gather every rank's [C, X] block (its own pieces' rows, then zero rows up to the
    group's stride C) into [P * C, X] (rank-major)."""
    size = dist.get_world_size(group)
    send_CX = own_X
    if own_X.shape[0] < table.stride:
        send_CX = own_X.new_zeros((table.stride, *own_X.shape[1:]))
        send_CX[: own_X.shape[0]] = own_X
    # Concatenated form [P * C, X]: gloo does not take the stacked one.
    out_NX = send_CX.new_empty((size * send_CX.shape[0], *send_CX.shape[1:]))
    _all_gather_into_tensor(out_NX, send_CX.contiguous(), group=group)
    moved = (size - 1) * send_CX.numel() * send_CX.element_size()
    COMM.add("lasp2", direction, moved, moved)
    return out_NX


def _stream_rows(table: PieceTable) -> list[int]:
    """Row of every stream piece in the gathered [P * C, ...] buffer."""
    return [rank * table.stride + i for rank, i in table.holders]


def _own_rows(table: PieceTable) -> list[int]:
    return [piece.stream_index for piece in table.pieces]


def combine_states(gathered_NE, table, state_shape, backend):
    """Prefix combine in stream order; returns (S_in of the local pieces [C, H, K, V],
    b of every stream piece [N, H])."""
    heads, head_k, head_v = state_shape
    rows_NE = gathered_NE[_stream_rows(table)]
    u_NHKV = rows_NE[:, : heads * head_k * head_v].reshape(-1, heads, head_k, head_v)
    b_NH = rows_NE[:, heads * head_k * head_v :]
    s_in_NHKV = state_scan(u_NHKV, b_NH, backend=backend)
    return s_in_NHKV[_own_rows(table)], b_NH


def combine_grads(gathered_NHKV, b_NH, table, backend):
    """Suffix combine in reverse stream order; returns E of the local pieces [C, H, K, V]."""
    d_NHKV = gathered_NHKV[_stream_rows(table)]
    e_NHKV = state_scan(d_NHKV, b_NH, reverse=True, backend=backend)
    return e_NHKV[_own_rows(table)]


def states_from_local_call(num_segments: int, num_tokens: int, head_k: int, head_v: int) -> bool:
    """Whether to read u off the local call's final states (no extra pass) rather than compute
    it from the last segments: only while every segment's K x V state, which the local call
    then keeps, takes no more memory than the shard's k and v (short documents make it big)."""
    return num_segments * head_k * head_v <= num_tokens * (head_k + head_v)


def lasp2_forward(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    cu_seqlens: list[int] | tuple[int, ...],
    table: PieceTable,
    group: dist.ProcessGroup,
    *,
    scale: float,
    backend: str,
    record: bool,
) -> tuple[torch.Tensor, tuple]:
    """Returns (o [T, H, V], what ``lasp2_backward`` needs)."""
    local = LocalWork(
        q_THK, k_THK, v_THV, g_TH, cu_seqlens, table, scale=scale, backend=backend, record=record
    )
    from_final = states_from_local_call(
        len(cu_seqlens) - 1, q_THK.shape[0], q_THK.shape[-1], v_THV.shape[-1]
    )
    o_THV = local.attention(final=from_final)
    u_CHKV, b_CH = local.summaries(from_final=from_final)
    send_CE = torch.cat([u_CHKV.flatten(1), b_CH], dim=1)
    gathered_NE = gather_summaries(send_CE, table, group, "fwd")
    s_in_PHKV, b_NH = combine_states(gathered_NE, table, u_CHKV.shape[1:], local.merge_backend)
    return local.corrected(o_THV, s_in_PHKV), (local, s_in_PHKV, b_CH, b_NH, group)


def lasp2_backward(saved: tuple, do_THV: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Returns (dq, dk, dv, dg) of the local tokens; dg is None when g was None."""
    local, s_in_PHKV, b_CH, b_NH, group = saved
    d_CHKV = local.corrections_backward(do_THV)
    gathered_NHKV = gather_summaries(d_CHKV, local.table, group, "bwd")
    e_CHKV = combine_grads(gathered_NHKV, b_NH, local.table, local.merge_backend)
    local.replay(do_THV=do_THV, summary=(e_CHKV, b_CH, s_in_PHKV))
    return local.input_grads()


class _LASP2(torch.autograd.Function):
    """LASP-2 over one SP group.

    ================  =====================  ==================================================
    tensor            local shape            meaning
    ================  =====================  ==================================================
    q, k              [T, H, K]              this rank's tokens (T = stream / P)
    v                 [T, H, V]
    g                 [T, H] or None         log-decay per token and head
    send (fwd)        [C, H*(K*V + 1)]       u_p (flattened) and b_p of the local pieces
    gathered (fwd)    [P*C, H*(K*V + 1)]     every piece's (u, b), rank-major; the all-gather
    send (bwd)        [C, H, K, V]           d_p = dL/dS_in(p) from the local corrections
    gathered (bwd)    [P*C, H, K, V]         every piece's d_p, rank-major; the all-gather
    o                 [T, H, V]
    ================  =====================  ==================================================

    forward:  S_in(0) = 0, S_in(p+1) = u_p + b_p S_in(p) over stream order;
              o = local(q, k, v, g) + [first segment of a starting piece] scale (q e^gc) S_in(p)
    backward: E_{N-1} = 0, E_p = d_{p+1} + b_{p+1} E_{p+1};  dL/du_p = E_p,
              dL/dG_p = b_p <E_p, S_in(p)>, plus the local attention's and corrections' own
              gradients. The output correction's dq, dg need no communication.
    """

    @staticmethod
    def forward(ctx, q_THK, k_THK, v_THV, g_TH, cu_seqlens, table, group, scale, backend):
        record = any(ctx.needs_input_grad[:4])
        o_THV, ctx.saved = lasp2_forward(
            q_THK, k_THK, v_THV, g_TH, cu_seqlens, table, group,
            scale=scale, backend=backend, record=record,
        )  # fmt: skip
        return o_THV

    @staticmethod
    def backward(ctx, do_THV):
        grads = lasp2_backward(ctx.saved, do_THV.contiguous())
        ctx.saved = None
        return (*grads, None, None, None, None, None)


def lasp2_linear_attention(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    seqs: PackedSeqs,
    *,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Causal linear attention with decay of this rank's shard of ``seqs.sp``'s group stream,
    exactly as if the whole stream ran on one rank. Returns o [T, H, V]."""
    check_linear_inputs(q_THK, k_THK, v_THV, g_TH, seqs, "lasp2")
    sp = seqs.sp
    if scale is None:
        scale = q_THK.shape[-1] ** -0.5
    table = piece_table(sp.layout, sp.rank)
    return _LASP2.apply(
        q_THK, k_THK, v_THV, g_TH, seqs.cu_seqlens_list, table, sp.group, scale, backend
    )
