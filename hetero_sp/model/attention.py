"""The two mixer layers of the hybrid decoder.

Shape legend: T local tokens, D model dim, H query heads, G key/value heads, E head dim.

Both layers run single-rank backends when ``seqs.sp`` is None or a group of one rank, and hand
off to the sequence-parallel strategy named in the context otherwise (``hetero_sp.parallel``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hetero_sp.config import ModelConfig
from hetero_sp.model.layers import RMSNorm, apply_rope
from hetero_sp.ops.backends import local_linear_attention, varlen_softmax_attention
from hetero_sp.parallel import linear_strategy, softmax_strategy
from hetero_sp.parallel.packed import PackedSeqs


def _runs_alone(seqs: PackedSeqs) -> bool:
    return seqs.sp is None or seqs.sp.size == 1


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
        if _runs_alone(seqs):
            o_THE = varlen_softmax_attention(
                q_THE,
                k_TGE,
                v_TGE,
                seqs.cu_seqlens_list,
                seqs.cu_seqlens_list,
                backend=self.backend,
                scale=scale,
            )
        else:
            strategy = softmax_strategy(seqs.sp.softmax_strategy)
            o_THE = strategy(q_THE, k_TGE, v_TGE, seqs, backend=self.backend, scale=scale)
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
        q_THE = F.normalize(self.wq(x_TD).view(T, self.num_heads, self.head_dim), dim=-1)
        k_THE = F.normalize(self.wk(x_TD).view(T, self.num_heads, self.head_dim), dim=-1)
        v_THE = self.wv(x_TD).view(T, self.num_heads, self.head_dim)
        g_TH = None
        if self.wg is not None:
            g_TH = F.logsigmoid(self.wg(x_TD).float()) / self.decay_normalizer
        scale = self.head_dim**-0.5
        if _runs_alone(seqs):
            o_THE, _ = local_linear_attention(
                q_THE, k_THE, v_THE, g_TH, seqs.cu_seqlens_list, scale=scale, backend=self.backend
            )
        else:
            strategy = linear_strategy(seqs.sp.linear_strategy)
            o_THE = strategy(q_THE, k_THE, v_THE, g_TH, seqs, backend=self.backend, scale=scale)
        return self.wo(self.o_norm(o_THE).reshape(T, -1))
