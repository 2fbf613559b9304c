"""The two mixer layers of the hybrid decoder.

Shape legend: T local tokens, D model dim, H query heads, G key/value heads, E head dim.

Both layers compute their projections here and run the attention itself through
:mod:`hetero_sp.parallel.attention`: single-rank backends when ``seqs.sp`` is None or a group of
one rank, the sequence-parallel strategy the context names otherwise. The Megatron plug-in runs
the same core and the same linear-attention inputs (:func:`linear_attention_inputs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hetero_sp.config import ModelConfig
from hetero_sp.model.layers import RMSNorm, apply_rope
from hetero_sp.parallel.attention import linear_attention, softmax_attention
from hetero_sp.parallel.packed import PackedSeqs


def linear_attention_inputs(
    q_THE: torch.Tensor,
    k_THE: torch.Tensor,
    gate_TH: torch.Tensor | None,
    decay_normalizer: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q and k L2-normalised per head, and the log decay ``logsigmoid(gate) / normalizer`` in
    fp32 (None without a gate): what the ``L`` layer feeds its attention."""
    g_TH = None if gate_TH is None else F.logsigmoid(gate_TH.float()) / decay_normalizer
    return F.normalize(q_THE, dim=-1), F.normalize(k_THE, dim=-1), g_TH


class SoftmaxAttention(nn.Module):
    """Causal grouped-query softmax attention with RoPE; documents never see each other."""

    def __init__(self, cfg: ModelConfig, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.backend = backend
        self.wq = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(
        self, x_TD: torch.Tensor, seqs: PackedSeqs, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        T = x_TD.shape[0]
        q_THE = apply_rope(self.wq(x_TD).view(T, self.num_heads, self.head_dim), *rope)
        k_TGE = apply_rope(self.wk(x_TD).view(T, self.num_kv_heads, self.head_dim), *rope)
        v_TGE = self.wv(x_TD).view(T, self.num_kv_heads, self.head_dim)
        scale = self.head_dim**-0.5
        o_THE = softmax_attention(q_THE, k_TGE, v_TGE, seqs, backend=self.backend, scale=scale)
        return self.wo(o_THE.reshape(T, -1))


class LinearAttention(nn.Module):
    """Causal linear attention with a per-head, per-token scalar decay gate.

    ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` per head, with q and k
    L2-normalised per head, ``g_t = logsigmoid(w_g x_t + b_g) / decay_normalizer`` (or 0 when
    decay is off), then a per-head RMSNorm of the output before the output projection.
    """

    def __init__(self, cfg: ModelConfig, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.backend = backend
        self.decay_normalizer = cfg.decay_normalizer
        self.wq = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.wg = nn.Linear(cfg.dim, cfg.num_heads, bias=True) if cfg.linear_decay else None
        self.o_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x_TD: torch.Tensor, seqs: PackedSeqs, rope=None) -> torch.Tensor:
        T = x_TD.shape[0]
        q_THE, k_THE, g_TH = linear_attention_inputs(
            self.wq(x_TD).view(T, self.num_heads, self.head_dim),
            self.wk(x_TD).view(T, self.num_heads, self.head_dim),
            None if self.wg is None else self.wg(x_TD),
            self.decay_normalizer,
        )
        v_THE = self.wv(x_TD).view(T, self.num_heads, self.head_dim)
        scale = self.head_dim**-0.5
        o_THE = linear_attention(q_THE, k_THE, v_THE, g_TH, seqs, backend=self.backend, scale=scale)
        return self.wo(self.o_norm(o_THE).reshape(T, -1))
