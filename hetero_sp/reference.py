"""The single-process reference every parallel path is tested against.

``reference_step`` runs one forward and backward of a model on a whole packed batch in one
process, with the loss normalised by the batch's target-token count, and returns the logits,
loss and every parameter gradient. Parallel paths must reproduce these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hetero_sp.engine.loss import IGNORE_INDEX, token_loss_sum
from hetero_sp.parallel.packed import PackedSeqs


@dataclass
class ReferenceResult:
    logits: torch.Tensor
    """[T, W] logits of the packed batch."""
    loss: torch.Tensor
    """Mean token loss (sum / num_tokens)."""
    loss_sum: torch.Tensor
    num_tokens: int
    grads: dict[str, torch.Tensor]
    """Gradient of ``loss`` for every parameter, by name (zeros for unused parameters)."""


def pack_documents(docs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Documents of L + 1 token ids each -> (inputs [T], next-token labels [T], lengths L)."""
    inputs = torch.cat([d[:-1] for d in docs])
    labels = torch.cat([d[1:] for d in docs])
    return inputs, labels, [len(d) - 1 for d in docs]


def reference_step(
    model: nn.Module,
    tokens_T: torch.Tensor,
    labels_T: torch.Tensor,
    doc_lengths: list[int],
) -> ReferenceResult:
    """Forward + backward of ``model`` on the packed batch in this process."""
    model.zero_grad(set_to_none=True)
    seqs = PackedSeqs.from_lengths(doc_lengths, tokens_T.device)
    logits = model(tokens_T, seqs)
    loss_sum = token_loss_sum(logits, labels_T)
    num_tokens = int((labels_T != IGNORE_INDEX).sum())
    loss = loss_sum / num_tokens
    loss.backward()
    grads = {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return ReferenceResult(
        logits=logits.detach(),
        loss=loss.detach(),
        loss_sum=loss_sum.detach(),
        num_tokens=num_tokens,
        grads=grads,
    )
