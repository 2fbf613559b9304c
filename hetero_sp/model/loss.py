"""The token loss: next-token cross-entropy summed over the tokens that have a label.

How a rank's sum is normalised across ranks is the engine's business (``hetero_sp.engine.loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_loss_sum(logits_TW: torch.Tensor, labels_T: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropies over tokens whose label is not ``IGNORE_INDEX`` (fp32 scalar)."""
    return F.cross_entropy(logits_TW.float(), labels_T, ignore_index=IGNORE_INDEX, reduction="sum")
