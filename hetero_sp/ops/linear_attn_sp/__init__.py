"""The merge steps of linear-attention sequence parallelism: the decayed scan over pieces'
state summaries, and the output correction from a piece's incoming state.

``naive`` is the torch reference and CPU fallback; ``fused`` the Triton kernels. The public
functions pick one by ``backend`` ("torch" or "triton", as resolved by the model's backends).
"""

from __future__ import annotations

import torch

from hetero_sp.ops.linear_attn_sp import naive

MAX_TRITON_HEAD_K = 256
"""The Triton merge kernels hold a head's K in one tile: they take K up to this."""


def _impl(backend: str):
    if backend == "triton":
        from hetero_sp.ops.linear_attn_sp import fused

        return fused
    if backend == "torch":
        return naive
    raise ValueError(f"SP merge backend {backend!r} is unknown; allowed: torch, triton")


def state_scan(
    u_NHKV: torch.Tensor, b_NH: torch.Tensor, reverse: bool = False, *, backend: str = "torch"
) -> torch.Tensor:
    """Exclusive decayed scan: ``X_0 = 0, X_{i+1} = u_i + b_i X_i`` over N pieces
    (``reverse``: ``X_{N-1} = 0, X_{i-1} = u_i + b_i X_i``). u, X: [N, H, K, V]; b: [N, H]."""
    return _impl(backend).state_scan(u_NHKV, b_NH, reverse)


def correction_fwd(
    q_LHK: torch.Tensor,
    gc_LH: torch.Tensor | None,
    state_HKV: torch.Tensor,
    scale: float,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    """``scale * (q_t exp(gc_t)) S`` for the L tokens of one segment: [L, H, V] in S's dtype."""
    return _impl(backend).correction_fwd(q_LHK, gc_LH, state_HKV, scale)


def correction_bwd(
    q_LHK: torch.Tensor,
    gc_LH: torch.Tensor | None,
    state_HKV: torch.Tensor,
    do_LHV: torch.Tensor,
    scale: float,
    *,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gradients of ``correction_fwd``: (dq [L, H, K], dgc [L, H] or None, dS [H, K, V])."""
    return _impl(backend).correction_bwd(q_LHK, gc_LH, state_HKV, do_LHV, scale)


__all__ = ["MAX_TRITON_HEAD_K", "correction_bwd", "correction_fwd", "state_scan"]
