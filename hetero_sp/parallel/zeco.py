"""ZeCO All-Scan: linear-attention sequence parallelism with a pipelined point-to-point scan.

Shape legend: P ranks, T local tokens, H heads, K key dim, V value dim, C this rank's pieces (1 for the
contiguous layout), B blocks of the K rows of a state. u, b, S_in: see
``linear_pieces``. States travel as [K, H, V] so that a block of K rows is contiguous.

The state entering piece p comes from the rank holding piece p - 1, in B blocks along K. As
soon as block j of S_in(p) arrives, the holder of p computes block j of
``S_in(p + 1) = u_p + b_p S_in(p)`` and sends it on, so a chain of n pieces costs one state
plus n - 1 blocks of latency instead of n states. A piece that does not pass its incoming
state through (b_p = 0) sends u_p at once without waiting. Each link carries one state.
The chain follows the stream: over a long document of the head-tail layout it runs 0 -> P-1
over the head chunks, on through rank P-1 (which holds both middle chunks as one piece), and
comes back P-1 -> 0 over the tails.

The scan runs beside the local attention: in a helper thread on CPU (gloo's isend/irecv), on
a side stream on CUDA. The backward runs the mirror scan of dL/dS_in in reverse stream order
beside the local attention's backward.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from hetero_sp.parallel.linear_local import LocalWork
from hetero_sp.parallel.linear_pieces import PieceTable, check_linear_inputs, piece_table
from hetero_sp.parallel.traffic_counter import COMM

if TYPE_CHECKING:
    from hetero_sp.parallel.packed import PackedSeqs

NUM_BLOCKS = 4
"""Default number of K blocks a state is pipelined in (capped at K)."""


def _blocks(head_k: int, num_blocks: int) -> list[tuple[int, int]]:
    n = min(num_blocks, head_k)
    edges = [head_k * j // n for j in range(n + 1)]
    return list(zip(edges, edges[1:]))


def _tag(stream_index: int, block: int, num_blocks: int, backward: bool) -> int:
    """Message tag of block ``block`` sent by the holder of piece ``stream_index``."""
    return 2 * (stream_index * num_blocks + block) + int(backward)


class _Background:
    """Run ``fn`` beside the caller: a helper thread on CPU, a side stream on CUDA (where the
    collectives are stream-ordered, so ``fn`` only enqueues work and returns at once)."""

    def __init__(self, fn, device: torch.device, keep: tuple = ()) -> None:
        # The tensors ``fn`` reads or writes besides the caller's: held until ``result`` has
        # ordered the caller's stream after the side stream, so their memory is not reused
        # while the side stream still uses it.
        self._keep = keep
        self._error: BaseException | None = None
        self._result = None
        self._stream = self._thread = None
        if device.type == "cuda":
            self._stream = torch.cuda.Stream(device)
            self._stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(self._stream):
                self._result = fn()
        else:
            self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
            self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._result = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = error

    def result(self):
        if self._stream is not None:
            torch.cuda.current_stream(self._stream.device).wait_stream(self._stream)
        else:
            self._thread.join()
        self._keep = ()
        if self._error is not None:
            raise self._error
        return self._result


def _scan(table, own_KHV, b_CH, into_CKHV, out_CKHV, group, num_blocks, backward):
    """One direction of the All-Scan; returns (bytes sent, bytes received).

    Forward: ``into`` = S_in(p) (filled here), ``own`` = u_p, ``out`` = S_in(p + 1) sent to
    the next piece's holder. Backward: ``into`` = E_p = dL/dS_in(p + 1) (filled here),
    ``own`` = d_p, ``out`` = dL/dS_in(p) = d_p + b_p E_p sent to the previous piece's holder.

    Every rank posts its receives and sends in the scan's order of pieces, each receive just
    before the block that needs it: a transport that runs point-to-point operations in the order
    they are posted (NCCL) then cannot deadlock, since a piece waits only on earlier ones.
    """
    rank, step = table.rank, -1 if backward else 1
    order = range(table.num_pieces - 1, -1, -1) if backward else range(table.num_pieces)
    blocks = _blocks(own_KHV.shape[1], num_blocks)
    pending, sent, received = [], 0, 0
    for i in order:
        piece = table.pieces[i]
        src = table.holder(piece.stream_index - step)
        dst = table.holder(piece.stream_index + step)
        through = piece.passes and piece.carries
        b_1H1 = b_CH[i][None, :, None]
        for j, (lo, hi) in enumerate(blocks):
            if src is not None and src[0] != rank:
                buf = into_CKHV[i, lo:hi]
                tag = _tag(piece.stream_index - step, j, num_blocks, backward)
                recv = dist.irecv(buf, dist.get_global_rank(group, src[0]), group, tag)
                received += buf.numel() * buf.element_size()
                if through:
                    recv.wait()
                else:
                    pending.append(recv)
            if through:
                torch.add(own_KHV[i, lo:hi], b_1H1 * into_CKHV[i, lo:hi], out=out_CKHV[i, lo:hi])
            else:
                out_CKHV[i, lo:hi] = own_KHV[i, lo:hi]
            if dst is None:
                continue
            if dst[0] == rank:
                into_CKHV[dst[1], lo:hi] = out_CKHV[i, lo:hi]
            else:
                buf = out_CKHV[i, lo:hi]
                tag = _tag(piece.stream_index, j, num_blocks, backward)
                pending.append(dist.isend(buf, dist.get_global_rank(group, dst[0]), group, tag))
                sent += buf.numel() * buf.element_size()
    for work in pending:
        work.wait()
    return sent, received


def start_scan(table, own_CHKV, b_CH, group, num_blocks, backward):
    """Start the scan in the background; returns (job, into [C, K, H, V])."""
    own_CKHV = own_CHKV.transpose(1, 2).contiguous()
    into_CKHV = torch.zeros_like(own_CKHV)
    out_CKHV = torch.empty_like(own_CKHV)
    job = _Background(
        lambda: _scan(table, own_CKHV, b_CH, into_CKHV, out_CKHV, group, num_blocks, backward),
        own_CHKV.device,
        keep=(own_CKHV, out_CKHV, b_CH),
    )
    return job, into_CKHV


def zeco_forward(
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
    num_blocks: int = NUM_BLOCKS,
) -> tuple[torch.Tensor, tuple]:
    """Returns (o [T, H, V], what ``zeco_backward`` needs)."""
    local = LocalWork(
        q_THK, k_THK, v_THV, g_TH, cu_seqlens, table, scale=scale, backend=backend, record=record
    )
    u_CHKV, b_CH = local.summaries()
    job, s_in_PKHV = start_scan(table, u_CHKV, b_CH, group, num_blocks, backward=False)
    o_THV = local.attention()
    COMM.add("zeco", "fwd", *job.result())
    s_in_PHKV = s_in_PKHV.transpose(1, 2)
    return local.corrected(o_THV, s_in_PHKV), (local, s_in_PHKV, b_CH, group, num_blocks)


def zeco_backward(saved: tuple, do_THV: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Returns (dq, dk, dv, dg) of the local tokens; dg is None when g was None."""
    local, s_in_PHKV, b_CH, group, num_blocks = saved
    d_CHKV = local.corrections_backward(do_THV)
    job, e_CKHV = start_scan(local.table, d_CHKV, b_CH, group, num_blocks, backward=True)
    local.replay(do_THV=do_THV)
    COMM.add("zeco", "bwd", *job.result())
    local.replay(summary=(e_CKHV.transpose(1, 2), b_CH, s_in_PHKV))
    return local.input_grads()


class _ZeCO(torch.autograd.Function):
    """ZeCO All-Scan over one SP group.

    ================  =====================  ==================================================
    tensor            local shape            meaning
    ================  =====================  ==================================================
    q, k              [T, H, K]              this rank's tokens (T = stream / P)
    v                 [T, H, V]
    g                 [T, H] or None         log-decay per token and head
    recv (fwd)        [K/B, H, V] x B        blocks of S_in(p) from the holder of p - 1
    send (fwd)        [K/B, H, V] x B        blocks of S_in(p+1) to the holder of p + 1
    recv (bwd)        [K/B, H, V] x B        blocks of E_p = dL/dS_in(p+1) from p + 1
    send (bwd)        [K/B, H, V] x B        blocks of dL/dS_in(p) to the holder of p - 1
    o                 [T, H, V]
    ================  =====================  ==================================================

    forward:  S_in(p+1) = u_p + b_p S_in(p), block by block along the chain;
              o = local(q, k, v, g) + [first segment of a starting piece] scale (q e^gc) S_in(p)
    backward: dL/dS_in(p) = d_p + b_p E_p, block by block back along the chain;
              dL/du_p = E_p, dL/dG_p = b_p <E_p, S_in(p)>, plus the local gradients.
    """

    @staticmethod
    def forward(ctx, q_THK, k_THK, v_THV, g_TH, cu_seqlens, table, group, scale, backend, blocks):
        record = any(ctx.needs_input_grad[:4])
        o_THV, ctx.saved = zeco_forward(
            q_THK, k_THK, v_THV, g_TH, cu_seqlens, table, group,
            scale=scale, backend=backend, record=record, num_blocks=blocks,
        )  # fmt: skip
        return o_THV

    @staticmethod
    def backward(ctx, do_THV):
        grads = zeco_backward(ctx.saved, do_THV.contiguous())
        ctx.saved = None
        return (*grads, None, None, None, None, None, None)


def zeco_linear_attention(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    seqs: PackedSeqs,
    *,
    backend: str = "auto",
    scale: float | None = None,
    num_blocks: int = NUM_BLOCKS,
) -> torch.Tensor:
    """Causal linear attention with decay of this rank's shard of ``seqs.sp``'s group stream,
    exactly as if the whole stream ran on one rank. Returns o [T, H, V]."""
    check_linear_inputs(q_THK, k_THK, v_THV, g_TH, seqs, "zeco")
    if num_blocks < 1:
        raise ValueError(f"zeco: num_blocks must be >= 1, got {num_blocks}")
    sp = seqs.sp
    if scale is None:
        scale = q_THK.shape[-1] ** -0.5
    table = piece_table(sp.layout, sp.rank)
    return _ZeCO.apply(
        q_THK, k_THK, v_THV, g_TH, seqs.cu_seqlens_list, table, sp.group, scale, backend,
        num_blocks,
    )  # fmt: skip
