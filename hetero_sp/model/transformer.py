"""The hybrid decoder: embedding, a stack of (mixer, SwiGLU) blocks following a layer pattern
such as ``LLLS``, final norm and output head.

Shape legend: T local tokens, D model dim, W vocabulary size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hetero_sp.config import ModelConfig
from hetero_sp.model.attention import LinearAttention, SoftmaxAttention
from hetero_sp.model.layers import RMSNorm, SwiGLU, rope_cos_sin
from hetero_sp.model.loss import token_loss_sum
from hetero_sp.parallel.packed import PackedSeqs

LOSS_SLICE = 16384
"""Tokens whose logits exist at once when the model computes the loss itself."""


class Block(nn.Module):
    def __init__(
        self, cfg: ModelConfig, kind: str, linear_backend: str, softmax_backend: str
    ) -> None:
        super().__init__()
        self.kind = kind
        self.mixer_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if kind == "S":
            self.mixer = SoftmaxAttention(cfg, softmax_backend)
        else:
            self.mixer = LinearAttention(cfg, linear_backend)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x_TD, seqs, rope):
        x_TD = x_TD + self.mixer(self.mixer_norm(x_TD), seqs, rope)
        return x_TD + self.ffn(self.ffn_norm(x_TD))


class HybridLM(nn.Module):
    """A decoder-only language model over packed documents; see ``ModelConfig``."""

    def __init__(
        self,
        cfg: ModelConfig,
        linear_backend: str = "auto",
        softmax_backend: str = "auto",
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.checkpoint_blocks = checkpoint_blocks
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(
            Block(cfg, kind, linear_backend, softmax_backend) for kind in cfg.layers
        )
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * len(self.cfg.layers))
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                is_output = name.endswith(("wo", "w_down"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_output else std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self, tokens_T: torch.Tensor, seqs: PackedSeqs, labels_T: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [T, W] of the next token at every position of the rank-local stream; with
        ``labels_T``, the sum of the token losses instead (fp32 scalar, labels equal to
        ``IGNORE_INDEX`` skipped), computed in slices so the [T, W] logits never exist at once.
        """
        if tokens_T.shape[0] != seqs.num_tokens:
            raise ValueError(
                f"got {tokens_T.shape[0]} tokens but cu_seqlens covers {seqs.num_tokens}"
            )
        x_TD = self.embed(tokens_T)
        rope = rope_cos_sin(seqs.positions, self.cfg.head_dim, self.cfg.rope_theta, x_TD.dtype)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                # Keep only the block's input; its activations are recomputed in the backward.
                # Reentrant: the recompute (SP collectives included) runs as one piece when the
                # backward reaches the block, the same point on every rank. The non-reentrant
                # form recomputes at the first saved tensor unpacked, which for strategies that
                # replay a local graph inside their own backward differs between ranks and
                # deadlocks their point-to-point exchanges.
                x_TD = checkpoint(block, x_TD, seqs, rope, use_reentrant=True)
            else:
                x_TD = block(x_TD, seqs, rope)
        x_TD = self.norm(x_TD)
        if labels_T is None:
            return self.head(x_TD)
        return self._loss_sum(x_TD, labels_T)

    def _loss_sum(self, x_TD: torch.Tensor, labels_T: torch.Tensor) -> torch.Tensor:
        total = x_TD.new_zeros((), dtype=torch.float32)
        for start in range(0, x_TD.shape[0], LOSS_SLICE):
            x, y = x_TD[start : start + LOSS_SLICE], labels_T[start : start + LOSS_SLICE]
            # Recomputing a slice's logits in the backward keeps one slice of logits alive.
            total = total + checkpoint(self._slice_loss, x, y, use_reentrant=False)
        return total

    def _slice_loss(self, x_TD: torch.Tensor, labels_T: torch.Tensor) -> torch.Tensor:
        return token_loss_sum(self.head(x_TD), labels_T)
