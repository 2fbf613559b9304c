"""A tiny megatron-core GPT and its batches, for the Megatron plug-in's tests.

``step`` runs one forward and backward the way Megatron-LM's loop does with
``--calculate-per-token-loss``: each rank back-propagates its shard's loss sum over the batch's
token count, and parameter gradients are summed over the context-parallel group (Megatron's
gradient all-reduce over data- and context-parallel ranks). Import only after
``pytest.importorskip("megatron.core")``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from hetero_sp.integrations.megatron import forward_step, loss_func, pack_micro_batch
from hetero_sp.integrations.megatron_compat import megatron_cp_shard

VOCAB = 64
# THD documents (training tokens): padded to 16, 8, 24, 4, 8 at CP 2; one crosses both ranks'
# chunks of its own, the 1-token one is mostly padding.
DOC_LENGTHS = [13, 5, 22, 1, 7]
ROWS, SEQ = 2, 16  # the [b, s] batch


def gpt_config(cp: int, num_layers: int) -> TransformerConfig:
    return TransformerConfig(
        num_layers=num_layers,
        hidden_size=32,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=48,
        context_parallel_size=cp,
        normalization="RMSNorm",
        gated_linear_unit=True,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )


def gpt_model(cfg: TransformerConfig, spec) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(
        config=cfg,
        transformer_layer_spec=spec,
        vocab_size=VOCAB,
        max_sequence_length=128,
        position_embedding_type="rope",
    )


def documents() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, VOCAB, n + 1) for n in DOC_LENGTHS]


def rows() -> torch.Tensor:
    return torch.randint(0, VOCAB, (ROWS, SEQ + 1), generator=torch.Generator().manual_seed(1))


def shard_loss_sum(model, fmt: str, cp: int, causal_mask: bool = False):
    """(this shard's loss sum, number of target tokens in the whole batch)."""
    if fmt == "thd":
        # Megatron-LM's loop: forward_step, then the loss function it returns.
        out, loss = forward_step(iter([pack_micro_batch(documents(), cp)]), model)
        total, _, report = loss(out)
        assert report["lm loss"][0] == total
        return total, sum(DOC_LENGTHS)
    ids = rows()
    batch = {
        "tokens": ids[:, :-1],
        "labels": ids[:, 1:],
        "loss_mask": torch.ones(ROWS, SEQ),
        "position_ids": torch.arange(SEQ).expand(ROWS, SEQ),
    }
    batch = megatron_cp_shard(batch, parallel_state.get_context_parallel_group())
    # Megatron's own DotProductAttention needs an explicit mask on CPU (its default is built
    # on "cuda"); HeteroSP's ignores it, as Transformer Engine does for causal masks.
    mask = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)[None, None] if causal_mask else None
    out = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"])
    return loss_func(batch["loss_mask"], out)[0], ROWS * SEQ


def step(model, fmt: str, cp: int, causal_mask: bool = False) -> dict:
    """Loss and every parameter gradient of the whole batch, on every rank."""
    loss_sum, num_tokens = shard_loss_sum(model, fmt, cp, causal_mask)
    (loss_sum / num_tokens).backward()
    group = parallel_state.get_context_parallel_group()
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = p.grad.detach().clone()
        dist.all_reduce(grads[name], group=group)
    total = loss_sum.detach().clone()
    dist.all_reduce(total, group=group)
    return {"loss": (total / num_tokens).item(), "grads": grads}
