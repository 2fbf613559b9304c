"""The rank-local half of a linear-attention SP layer, shared by LASP-2 and ZeCO.

Shape legend: T local tokens, H heads, K key dim, V value dim, P this rank's pieces, L tokens
of one segment. Pieces, u, b and S_in are defined in ``linear_pieces``.

The strategies' autograd Functions run three local parts around their communication and
replay them separately in the backward, so that the local attention overlaps the exchange in
both directions: the summaries (u, b) come first and their backward last (it needs the
exchanged gradient), the local attention runs while states travel, and the corrections close
the forward and open the backward (their backward yields the gradient of S_in that is sent).
Each part is recorded with autograd on detached copies of the inputs (``record``), the way a
reentrant checkpoint does, and ``torch.autograd.grad`` replays it.

States, summaries and corrections are computed in the wire dtype (fp32, or fp64 for fp64
inputs): they sum contributions of many tokens, and they are small.
"""

from __future__ import annotations

import contextlib

import torch

from hetero_sp.model.backends import local_linear_attention, resolve_linear_backend
from hetero_sp.parallel.linear_pieces import PieceTable
from kernels.linear_attn_sp import correction_bwd, correction_fwd


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
        self.wire_dtype = torch.promote_types(q_THK.dtype, torch.float32)
        self.inputs = tuple(
            None if t is None else t.detach().requires_grad_(record)
            for t in (q_THK, k_THK, v_THV, g_TH)
        )
        self._grads: list[torch.Tensor | None] = [None, None, None, None]
        self._o_THV: torch.Tensor | None = None
        self._summary: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
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

    def summaries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(u [P, H, K, V], b [P, H]) in the wire dtype, detached."""
        _, k_THK, v_THV, g_TH = self.inputs
        heads, head_k, head_v = k_THK.shape[1], k_THK.shape[2], v_THV.shape[2]
        u_PHKV = k_THK.new_zeros(
            (self.table.num_pieces, heads, head_k, head_v), dtype=self.wire_dtype
        )
        b_PH = k_THK.new_zeros((self.table.num_pieces, heads), dtype=self.wire_dtype)
        states, decays = self._summary
        with self._recording():
            for i, piece in enumerate(self.table.pieces):
                if not piece.carries:
                    continue
                lo, hi = piece.last
                k_LHK, v_LHV = k_THK[lo:hi].to(self.wire_dtype), v_THV[lo:hi].to(self.wire_dtype)
                if g_TH is None:
                    state_HKV = torch.einsum("lhk,lhv->hkv", k_LHK, v_LHV)
                    decay_H = k_THK.new_zeros(heads, dtype=self.wire_dtype)
                else:
                    gc_LH = g_TH[lo:hi].to(self.wire_dtype).cumsum(0)
                    decay_H = gc_LH[-1]
                    tail_LH = (decay_H[None, :] - gc_LH).exp()
                    state_HKV = torch.einsum("lhk,lhv->hkv", k_LHK * tail_LH[..., None], v_LHV)
                states.append(state_HKV)
                decays.append(decay_H)
                u_PHKV[i] = state_HKV.detach()
                if piece.passes:
                    b_PH[i] = decay_H.detach().exp()
        return u_PHKV, b_PH

    def summaries_backward(
        self, e_PHKV: torch.Tensor, b_PH: torch.Tensor, s_in_PHKV: torch.Tensor
    ) -> None:
        """Backward of ``summaries`` given E_p = dL/dS_in(p + 1) for every local piece:
        dL/du_p = E_p and dL/dG_p = b_p <E_p, S_in(p)>."""
        states, decays = self._summary
        carrying = [i for i, piece in enumerate(self.table.pieces) if piece.carries]
        outputs, grads = [], []
        for i, state_HKV, decay_H in zip(carrying, states, decays):
            outputs.append(state_HKV)
            grads.append(e_PHKV[i])
            if decay_H.requires_grad:
                outputs.append(decay_H)
                grads.append(b_PH[i] * (e_PHKV[i] * s_in_PHKV[i]).sum((-2, -1)))
        self._summary = ([], [])
        if outputs:
            self._replay(outputs, grads)

    # ---- local attention of every segment from a zero state --------------------------------

    def attention(self) -> torch.Tensor:
        q_THK, k_THK, v_THV, g_TH = self.inputs
        with self._recording():
            self._o_THV, _ = local_linear_attention(
                q_THK, k_THK, v_THV, g_TH, self.cu_seqlens, scale=self.scale, backend=self.backend
            )
        return self._o_THV.detach()

    def attention_backward(self, do_THV: torch.Tensor) -> None:
        o_THV, self._o_THV = self._o_THV, None
        self._replay([o_THV], [do_THV])

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
        """Accumulates dq and dg of the corrections; returns dL/dS_in [P, H, K, V] (the part
        of it this rank's own tokens cause)."""
        q_THK, g_TH = self.inputs[0].detach(), self.inputs[3]
        s_in_PHKV = self._s_in_PHKV
        d_PHKV = torch.zeros_like(s_in_PHKV)
        dq_THK = torch.zeros_like(q_THK, dtype=self.wire_dtype)
        dg_TH = None if g_TH is None else torch.zeros_like(g_TH, dtype=self.wire_dtype)
        for i, piece in enumerate(self.table.pieces):
            if not piece.starts:
                continue
            lo, hi = piece.first
            dq_LHK, dgc_LH, d_PHKV[i] = correction_bwd(
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
        return d_PHKV

    # ---- gradients --------------------------------------------------------------------------

    def _replay(self, outputs: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        wanted = [t for t in self.inputs if t is not None]
        found = torch.autograd.grad(outputs, wanted, grads, allow_unused=True)
        it = iter(found)
        self._accumulate([None if t is None else next(it) for t in self.inputs])

    def input_grads(self) -> tuple[torch.Tensor | None, ...]:
        """(dq, dk, dv, dg) in the inputs' dtypes; zeros where nothing flowed."""
        out = []
        for t, grad in zip(self.inputs, self._grads):
            if t is None:
                out.append(None)
            else:
                out.append(torch.zeros_like(t) if grad is None else grad.to(t.dtype))
        return tuple(out)
