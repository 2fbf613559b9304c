"""Token loss normalised by the step's global token count.

A step's loss is the sum of every next-token cross-entropy over all ranks divided by the number
of target tokens in the global batch. DeepSpeed averages gradients over its data-parallel
ranks, so each rank back-propagates ``loss_sum_local * world_size / global_tokens``: the average
of those gradients is exactly the gradient of the global loss, however unevenly the tokens are
spread over ranks and groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_loss_sum(logits_TW: torch.Tensor, labels_T: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropies over tokens whose label is not ``IGNORE_INDEX`` (fp32 scalar)."""
    return F.cross_entropy(logits_TW.float(), labels_T, ignore_index=IGNORE_INDEX, reduction="sum")


def backward_scale(global_tokens: int, world_size: int) -> float:
    """Factor on a rank's loss sum so DeepSpeed's gradient average equals the global gradient."""
    if global_tokens <= 0:
        raise ValueError(f"a step needs at least one target token, got {global_tokens}")
    return world_size / global_tokens
