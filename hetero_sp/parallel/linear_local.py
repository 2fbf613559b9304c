"""The rank-local half of a linear-attention SP layer, shared by LASP-2 and ZeCO.

Shape legend: P ranks, T local tokens, H heads, K key dim, V value dim, C this rank's pieces, L tokens
of one segment. Pieces, u, b and S_in are defined in ``linear_pieces``.

Three local parts surround a strategy's communication: the summaries (u, b), the local
attention of every segment from a zero state, and the corrections from S_in. They come in two
orders:

- LASP-2 takes u from the local attention's own final states (one local call, then the
  exchange): no extra pass over the tokens, no overlap.
- ZeCO computes u directly (one K x V product over each carrying last segment) so that the
  scan can run while the local attention does, and replays the two parts' backward
  separately: the local attention's while the gradient scan runs, the summaries' after it.

Each part is recorded with autograd on detached copies of the inputs (``record``), the way a
reentrant checkpoint does, and ``replay`` back-propagates any subset of them. States,
summaries and corrections are computed in the wire dtype (fp32, or fp64 for fp64 inputs):
they sum contributions of many tokens, and they are small. One exception: LASP-2's u, when read
off the local call's final states (``from_final``), has the local call's precision, since the
chunk kernels return final states in the input dtype: for bf16 inputs it is rounded to bf16
before it travels in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from hetero_sp.ops.backends import local_linear_attention, resolve_linear_backend
from hetero_sp.ops.linear_attn_sp import MAX_TRITON_HEAD_K, correction_bwd, correction_fwd
from hetero_sp.parallel.linear_pieces import PieceTable


def _reverse_cumsum(x_LH: torch.Tensor) -> torch.Tensor:
    return x_LH.flip(0).cumsum(0).flip(0)


class LocalWork:
    """One rank's local work for one layer call; see the module docstring."""

    def __init__(
        self,
        q_THK: torch.Tensor,
        k_THK: torch.Tensor,
        v_THV: torch.Tensor,
        g_TH: torch.Tensor | None,
        cu_seqlens: list[int] | tuple[int, ...],
        table: PieceTable,
        *,
        scale: float,
        backend: str,
        record: bool,
    ) -> None:
        self.table, self.scale, self.backend, self.record = table, scale, backend, record
        self.cu_seqlens = list(cu_seqlens)
        self.merge_backend = resolve_linear_backend(backend, q_THK.device)
        if q_THK.shape[-1] > MAX_TRITON_HEAD_K:
            self.merge_backend = "torch"  # the merge kernels hold K in one tile
        self.wire_dtype = torch.promote_types(q_THK.dtype, torch.float32)
        self.inputs = tuple(
            None if t is None else t.detach().requires_grad_(record)
            for t in (q_THK, k_THK, v_THV, g_TH)
        )
        self._grads: list[torch.Tensor | None] = [None, None, None, None]
        self._o_THV: torch.Tensor | None = None
        self._final_NHKV: torch.Tensor | None = None
        self._summary: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._s_in_PHKV: torch.Tensor | None = None

    def _recording(self):
        return torch.enable_grad() if self.record else contextlib.nullcontext()

    def _accumulate(self, grads) -> None:
        for i, grad in enumerate(grads):
            if grad is not None:
                self._grads[i] = grad if self._grads[i] is None else self._grads[i] + grad

    def _gc(self, lo: int, hi: int) -> torch.Tensor | None:
        g_TH = self.inputs[3]
        return None if g_TH is None else g_TH[lo:hi].detach().to(self.wire_dtype).cumsum(0)

    # ---- summaries: u_p (the state of a carrying last segment) and b_p ----------------------

    def summaries(self, from_final: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(u [C, H, K, V], b [C, H]) in the wire dtype, detached. ``from_final`` takes the
        states from ``attention(final=True)``; otherwise they are computed here."""
        _, k_THK, v_THV, g_TH = self.inputs
        heads, head_k, head_v = k_THK.shape[1], k_THK.shape[2], v_THV.shape[2]
        wire = self.wire_dtype
        u_CHKV = k_THK.new_zeros((self.table.num_pieces, heads, head_k, head_v), dtype=wire)
        b_CH = k_THK.new_zeros((self.table.num_pieces, heads), dtype=wire)
        with self._recording():
            for i, piece in enumerate(self.table.pieces):
                if not piece.carries:
                    continue
                lo, hi = piece.last
                if g_TH is None:
                    decay_H = k_THK.new_zeros(heads, dtype=wire)
                else:
                    gc_LH = g_TH[lo:hi].to(wire).cumsum(0)
                    decay_H = gc_LH[-1]
                if from_final:
                    state_HKV = self._final_NHKV[piece.last_segment].to(wire)
                elif g_TH is None:
                    state_HKV = torch.einsum(
                        "lhk,lhv->hkv", k_THK[lo:hi].to(wire), v_THV[lo:hi].to(wire)
                    )
                else:
                    k_LHK = k_THK[lo:hi].to(wire) * (decay_H[None, :] - gc_LH).exp()[..., None]
                    state_HKV = torch.einsum("lhk,lhv->hkv", k_LHK, v_THV[lo:hi].to(wire))
                self._summary.append((i, state_HKV, decay_H))
                u_CHKV[i] = state_HKV.detach()
                if piece.passes:
                    b_CH[i] = decay_H.detach().exp()
        return u_CHKV, b_CH

    def _summary_grads(self, e_CHKV, b_CH, s_in_PHKV):
        """dL/du_p = E_p and dL/dG_p = b_p <E_p, S_in(p)>, with E_p = dL/dS_in(p + 1)."""
        outputs, grads = [], []
        for i, state_HKV, decay_H in self._summary:
            outputs.append(state_HKV)
            grads.append(e_CHKV[i].to(state_HKV.dtype))
            if decay_H.requires_grad:
                outputs.append(decay_H)
                grads.append(b_CH[i] * (e_CHKV[i] * s_in_PHKV[i]).sum((-2, -1)))
        self._summary = []
        return outputs, grads

    # ---- local attention of every segment from a zero state --------------------------------

    def attention(self, final: bool = False) -> torch.Tensor:
        """o [T, H, V], detached; ``final`` also keeps every segment's final state for
        ``summaries(from_final=True)``."""
        q_THK, k_THK, v_THV, g_TH = self.inputs
        with self._recording():
            self._o_THV, self._final_NHKV = local_linear_attention(
                q_THK, k_THK, v_THV, g_TH, self.cu_seqlens,
                scale=self.scale, output_final_state=final, backend=self.backend,
            )  # fmt: skip
        return self._o_THV.detach()

    # ---- corrections from S_in on segments that continue a document ------------------------

    def corrected(self, o_THV: torch.Tensor, s_in_PHKV: torch.Tensor) -> torch.Tensor:
        """``o`` plus the incoming states' contributions (a new tensor)."""
        self._s_in_PHKV = s_in_PHKV
        o_THV = o_THV.clone()
        q_THK = self.inputs[0].detach()
        for i, piece in enumerate(self.table.pieces):
            if not piece.starts:
                continue
            lo, hi = piece.first
            delta_LHV = correction_fwd(
                q_THK[lo:hi].to(self.wire_dtype),
                self._gc(lo, hi),
                s_in_PHKV[i],
                self.scale,
                backend=self.merge_backend,
            )
            o_THV[lo:hi] += delta_LHV.to(o_THV.dtype)
        return o_THV

    def corrections_backward(self, do_THV: torch.Tensor) -> torch.Tensor:
        """Accumulates dq and dg of the corrections; returns dL/dS_in [C, H, K, V] (the part
        of it this rank's own tokens cause)."""
        q_THK, g_TH = self.inputs[0].detach(), self.inputs[3]
        s_in_PHKV = self._s_in_PHKV
        d_CHKV = torch.zeros_like(s_in_PHKV)
        dq_THK = torch.zeros_like(q_THK, dtype=self.wire_dtype)
        dg_TH = None if g_TH is None else torch.zeros_like(g_TH, dtype=self.wire_dtype)
        for i, piece in enumerate(self.table.pieces):
            if not piece.starts:
                continue
            lo, hi = piece.first
            dq_LHK, dgc_LH, d_CHKV[i] = correction_bwd(
                q_THK[lo:hi].to(self.wire_dtype),
                self._gc(lo, hi),
                s_in_PHKV[i],
                do_THV[lo:hi].to(self.wire_dtype),
                self.scale,
                backend=self.merge_backend,
            )
            dq_THK[lo:hi] = dq_LHK
            if dgc_LH is not None:
                dg_TH[lo:hi] = _reverse_cumsum(dgc_LH)
        self._accumulate((dq_THK, None, None, dg_TH))
        return d_CHKV

    # ---- gradients --------------------------------------------------------------------------

    def replay(
        self,
        do_THV: torch.Tensor | None = None,
        summary: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Back-propagate the local attention (given dL/do) and/or the summaries (given
        ``(E [C, H, K, V], b [C, H], S_in [C, H, K, V])``) in one pass into the inputs."""
        outputs, grads = [], []
        if do_THV is not None:
            outputs.append(self._o_THV)
            grads.append(do_THV)
            self._o_THV = self._final_NHKV = None
        if summary is not None:
            more = self._summary_grads(*summary)
            outputs += more[0]
            grads += more[1]
        if not outputs:
            return
        wanted = [t for t in self.inputs if t is not None]
        found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
        self._accumulate([None if t is None else next(found) for t in self.inputs])

    def input_grads(self) -> tuple[torch.Tensor | None, ...]:
        """(dq, dk, dv, dg) in the inputs' dtypes; zeros where nothing flowed."""
        out = []
        for t, grad in zip(self.inputs, self._grads):
            if t is None:
                out.append(None)
            else:
                out.append(torch.zeros_like(t) if grad is None else grad.to(t.dtype))
        return tuple(out)
