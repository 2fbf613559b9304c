"""Loss normalisation across ranks.

A step's loss is the sum of every next-token cross-entropy over all ranks divided by the number
of target tokens in the global batch. DeepSpeed averages gradients over its data-parallel
ranks, so each rank back-propagates ``loss_sum_local * world_size / global_tokens``: the average
of those gradients is exactly the gradient of the global loss, however unevenly the tokens are
spread over ranks and groups. The token loss itself is the model's (``hetero_sp.model.loss``).
"""

from __future__ import annotations

from hetero_sp.model.loss import IGNORE_INDEX, token_loss_sum

__all__ = ["IGNORE_INDEX", "backward_scale", "token_loss_sum"]


def backward_scale(global_tokens: int, world_size: int) -> float:
    """Factor on a rank's loss sum so DeepSpeed's gradient average equals the global gradient."""
    if global_tokens <= 0:
        raise ValueError(f"a step needs at least one target token, got {global_tokens}")
    return world_size / global_tokens
