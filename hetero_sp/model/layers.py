"""Building blocks of the decoder: RMSNorm, rotary embeddings, SwiGLU.

Shape legend: T tokens, D model dim, H heads, E head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_cos_sin(
    positions_T: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T, E/2] for the given positions (computed in fp32)."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions_T.device, dtype=torch.float32) / head_dim
    )
    angles_TE = positions_T.float()[:, None] * inv_freq[None, :]
    return angles_TE.cos().to(dtype), angles_TE.sin().to(dtype)


def apply_rope(x_THE: torch.Tensor, cos_TE: torch.Tensor, sin_TE: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (the Llama "rotate half" convention)."""
    half = x_THE.shape[-1] // 2
    x1, x2 = x_THE[..., :half], x_THE[..., half:]
    cos, sin = cos_TE[:, None, :], sin_TE[:, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x_TD)) * self.w_up(x_TD))
