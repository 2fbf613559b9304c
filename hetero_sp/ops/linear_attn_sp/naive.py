"""Torch reference (and CPU fallback) of the two merge steps of linear-attention SP.

Shape legend: N pieces of a group's stream (in stream order), H heads, K key dim, V value dim,
L tokens of one segment.

- ``state_scan``: the exclusive decayed scan that turns every piece's local summary into the
  state entering each piece, ``X_0 = 0, X_{i+1} = u_i + b_i X_i``; ``reverse`` runs it from
  the end, ``X_{N-1} = 0, X_{i-1} = u_i + b_i X_i`` (the backward's suffix combine).
- ``correction_fwd`` / ``correction_bwd``: the output an incoming state adds to the tokens of
  a segment that continues a document, ``o_t += scale * (q_t exp(gc_t)) S`` with ``gc`` the
  log-decay summed from the segment start to t inclusive, and its gradients.
"""

from __future__ import annotations

import torch


def state_scan(u_NHKV: torch.Tensor, b_NH: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Exclusive decayed scan over pieces; returns X [N, H, K, V] in ``u``'s dtype."""
    x_NHKV = torch.zeros_like(u_NHKV)
    num = u_NHKV.shape[0]
    order = range(num - 1, 0, -1) if reverse else range(num - 1)
    step = -1 if reverse else 1
    for i in order:
        x_NHKV[i + step] = u_NHKV[i] + b_NH[i][:, None, None] * x_NHKV[i]
    return x_NHKV


def _decayed_q(q_LHK: torch.Tensor, gc_LH: torch.Tensor | None, dtype: torch.dtype):
    q = q_LHK.to(dtype)
    return q if gc_LH is None else q * gc_LH.to(dtype).exp()[..., None]


def correction_fwd(
    q_LHK: torch.Tensor, gc_LH: torch.Tensor | None, state_HKV: torch.Tensor, scale: float
) -> torch.Tensor:
    """Output added by the incoming state, [L, H, V] in the state's dtype."""
    return scale * torch.einsum(
        "lhk,hkv->lhv", _decayed_q(q_LHK, gc_LH, state_HKV.dtype), state_HKV
    )


def correction_bwd(
    q_LHK: torch.Tensor,
    gc_LH: torch.Tensor | None,
    state_HKV: torch.Tensor,
    do_LHV: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gradients of ``correction_fwd``: (dq [L, H, K], dgc [L, H] or None, dstate [H, K, V]),
    all in the state's dtype."""
    dtype = state_HKV.dtype
    do = do_LHV.to(dtype)
    dq_LHK = scale * torch.einsum("lhv,hkv->lhk", do, state_HKV)
    dgc_LH = None
    if gc_LH is not None:
        dq_LHK = dq_LHK * gc_LH.to(dtype).exp()[..., None]
        dgc_LH = (dq_LHK * q_LHK.to(dtype)).sum(-1)
    dstate_HKV = scale * torch.einsum("lhk,lhv->hkv", _decayed_q(q_LHK, gc_LH, dtype), do)
    return dq_LHK, dgc_LH, dstate_HKV
