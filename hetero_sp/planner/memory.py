"""Memory per GPU: model states by ZeRO stage, and activation bytes per token.

The planner's memory model is ``model states + stream tokens / d * activation bytes per token``
(+ a strategy's extras, see :mod:`hetero_sp.planner.cost`); these are its two ingredients.
"""

from __future__ import annotations

from hetero_sp.config import ModelConfig
from hetero_sp.planner.profile import PRECISIONS


def count_params(model: ModelConfig) -> int:
    d, e = model.dim, model.head_dim
    h, g = model.num_heads, model.num_kv_heads
    ffn = 3 * d * model.ffn_dim + 2 * d  # SwiGLU + two RMSNorms
    softmax = d * (2 * h * e + 2 * g * e)
    linear = d * 4 * h * e + (d * h + h) * model.linear_decay + e
    blocks = sum(ffn + (softmax if kind == "S" else linear) for kind in model.layers)
    head = 0 if model.tie_embeddings else model.vocab_size * d
    return model.vocab_size * d + blocks + d + head


def activation_bytes_per_token(model: ModelConfig, elem_bytes: int) -> float:
    """Bytes autograd keeps per token for the backward, without activation checkpointing.

    Per block: the two norm inputs and outputs and the residual (5 D), the mixer's projections
    (S: q, k, v, o and the softmax statistics; L: q, k, v, their normalised copies, g, o and
    o-norm), the SwiGLU gate, up, activation and product (4 F); plus the fp32 logits and their
    gradient. An estimate: a profile may carry a measured number instead.
    """
    d, e, f = model.dim, model.head_dim, model.ffn_dim
    h, g = model.num_heads, model.num_kv_heads
    common = (5 * d + 4 * f) * elem_bytes
    softmax = common + (2 * h + 2 * g) * e * elem_bytes + 4 * h
    linear = common + (7 * h * e + h) * elem_bytes
    blocks = sum(softmax if kind == "S" else linear for kind in model.layers)
    return float(blocks + 2 * d * elem_bytes + 8 * model.vocab_size)


def model_state_bytes(num_params: int, zero_stage: int, world_size: int, precision: str) -> float:
    """Parameters, gradients and Adam states per GPU; ZeRO stage s shards the first s of
    (optimizer states, gradients, parameters) over the world."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    param = PRECISIONS[precision]
    grad = param
    optim = 8 + (4 if precision != "fp32" else 0)  # Adam m and v, plus fp32 master weights
    parts = [optim, grad, param]
    per_param = sum(b / world_size if i < zero_stage else b for i, b in enumerate(parts))
    return num_params * per_param
