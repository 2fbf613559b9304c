"""HeteroSP inside megatron-core's GPT model and Megatron's pretraining loop.

- :func:`hybrid_layer_specs` / :func:`hybrid_block_spec`: megatron-core layer specs for a layer
  pattern such as ``LLLS``. ``S`` layers are Megatron's local GPT layer with HeteroSP's softmax
  attention SP as core attention; ``L`` layers have HeteroSP's linear-attention mixer in place
  of self-attention. Both run over Megatron's context-parallel group. Pass the block spec to
  ``GPTModel(transformer_layer_spec=...)``.
- :func:`dd_datasets_provider`, :func:`forward_step`, :func:`get_batch`, :func:`loss_func`:
  feed dataset-decomposition batches (HeteroSP samplers) into Megatron's ``pretrain`` as packed
  THD micro-batches (``--dataloader-type external --micro-batch-size 1
  --calculate-per-token-loss``).
- Dynamic CP (Megatron's hybrid context parallelism, every sequence on its own group of the
  DP x CP ranks): the layers follow ``packed_seq_params.cp_group``; :func:`use_hetero_sp_scheduler`
  makes Megatron's data wrapper schedule with HeteroSP's planner; :func:`hybrid_cp_datasets_provider`
  and :class:`HybridCPSamples` feed it dataset-decomposition steps; :func:`forward_step` runs its
  sub-samples.
- :func:`cpu_compat`: run it on a machine without CUDA (tests).

See ``docs/megatron.md``. Needs the ``megatron`` extra (megatron-core >= 0.16).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from hetero_sp.config import DataConfig
from hetero_sp.core.errors import UserError
from hetero_sp.integrations.megatron_attention import (
    HeteroLinearSelfAttention,
    HeteroSoftmaxCoreAttention,
)
from hetero_sp.integrations.megatron_compat import (
    cpu_compat,
    local_layer_range,
    rope_over_micro_batch_group,
)
from hetero_sp.integrations.megatron_data import (
    DecomposedBatches,
    HybridCPSamples,
    pack_micro_batch,
    pack_sub_samples,
)
from hetero_sp.integrations.megatron_dynamic_cp import (
    dynamic_cp_cost_model,
    hybrid_cp_group,
    sub_sample_batch,
    use_hetero_sp_scheduler,
)
from hetero_sp.integrations.megatron_layout import cp_layout, cp_shard_index
from hetero_sp.integrations.megatron_schedule import HeteroSPCPScheduler, plan_phases

__all__ = [
    "DecomposedBatches",
    "HeteroLinearSelfAttention",
    "HeteroSPCPScheduler",
    "HeteroSoftmaxCoreAttention",
    "HybridCPSamples",
    "cp_layout",
    "cpu_compat",
    "dd_datasets_provider",
    "dynamic_cp_cost_model",
    "forward_step",
    "get_batch",
    "hybrid_block_spec",
    "hybrid_cp_datasets_provider",
    "hybrid_layer_specs",
    "loss_func",
    "pack_micro_batch",
    "pack_sub_samples",
    "plan_phases",
    "rope_over_micro_batch_group",
    "use_hetero_sp_scheduler",
]


def hybrid_layer_specs(
    pattern: str,
    *,
    softmax_strategy: str = "ulysses",
    linear_strategy: str = "lasp2",
    softmax_backend: str = "auto",
    linear_backend: str = "auto",
    linear_decay: bool = True,
    decay_normalizer: float = 16.0,
    normalization: str = "RMSNorm",
) -> list[ModuleSpec]:
    """One transformer-layer spec per letter of ``pattern`` (``L`` linear, ``S`` softmax).

    Layers are Megatron's local GPT layer (``get_gpt_layer_local_spec``: norms, MLP, residuals)
    with the attention replaced. Strategies are looked up when the model is built with context
    parallelism (an unknown name raises ``ValueError`` there).
    """
    bad = sorted(set(pattern) - {"L", "S"})
    if not pattern or bad:
        raise UserError(
            f"layer pattern {pattern!r} must be a non-empty string of L (linear attention) and "
            "S (softmax attention)"
        )
    base = get_gpt_layer_local_spec(normalization=normalization)
    attention = base.submodules.self_attention
    core = functools.partial(
        HeteroSoftmaxCoreAttention, strategy=softmax_strategy, backend=softmax_backend
    )
    softmax_layer = dataclasses.replace(
        base,
        submodules=dataclasses.replace(
            base.submodules,
            self_attention=dataclasses.replace(
                attention,
                submodules=dataclasses.replace(attention.submodules, core_attention=core),
            ),
        ),
    )
    linear_layer = dataclasses.replace(
        base,
        submodules=dataclasses.replace(
            base.submodules,
            self_attention=ModuleSpec(
                module=HeteroLinearSelfAttention,
                params={
                    "attn_mask_type": AttnMaskType.causal,
                    "strategy": linear_strategy,
                    "backend": linear_backend,
                    "decay": linear_decay,
                    "decay_normalizer": decay_normalizer,
                },
            ),
        ),
    )
    return [softmax_layer if c == "S" else linear_layer for c in pattern]


def hybrid_block_spec(
    config, pattern: str, *, vp_stage: int | None = None, **options
) -> TransformerBlockSubmodules:
    """The decoder-block spec of this pipeline stage for ``GPTModel(transformer_layer_spec=)``.

    ``pattern`` has one letter per layer of the whole model (``config.num_layers``); ``options``
    are those of :func:`hybrid_layer_specs`.
    """
    if len(pattern) != config.num_layers:
        raise UserError(
            f"layer pattern {pattern!r} has {len(pattern)} letters for "
            f"num_layers={config.num_layers}; give one letter per layer"
        )
    specs = hybrid_layer_specs(pattern, **options)
    local = [specs[i] for i in local_layer_range(config, vp_stage)]
    return TransformerBlockSubmodules(
        layer_specs=local, layer_norm=specs[0].submodules.input_layernorm
    )


def get_batch(batch: dict, cp_group=None):
    """This CP rank's shard of a packed micro-batch (:func:`pack_micro_batch`), on the current
    device: ``(tokens, labels, loss_mask, attention_mask=None, position_ids, packed_seq_params)``,
    the first ones [1, T / CP]. ``cp_group`` defaults to Megatron's context-parallel group.

    A batch with ``local_cp_size`` (what Megatron's hybrid-CP schedule adds to each sub-sample)
    is sharded over this rank's group of that many DP x CP ranks instead, and its
    ``PackedSeqParams`` names the group (``cp_group``, ``local_cp_size``): a single sequence
    ([n] tensors, as ``HybridCPDataLoaderWrapper`` routes them) by :func:`sub_sample_batch`, a
    packed micro-batch here."""
    local_size = batch.get("local_cp_size")
    hybrid = local_size is not None
    if hybrid:
        group = hybrid_cp_group(int(local_size)) if cp_group is None else cp_group
        if "cu_seqlens_padded" not in batch:
            return sub_sample_batch(batch, group)
    else:
        group = cp_group if cp_group is not None else parallel_state.get_context_parallel_group()
    cp_size, cp_rank = (1, 0) if group is None else (group.size(), group.rank())
    cu_padded = [int(x) for x in batch["cu_seqlens_padded"].flatten().tolist()]
    lengths = [b - a for a, b in zip(cu_padded, cu_padded[1:])]
    device = torch.device(torch.cuda.current_device()) if torch.cuda.is_available() else None
    index = cp_shard_index(lengths, cp_size, cp_rank)
    shard = {
        key: batch[key][:, index].to(device)
        for key in ("tokens", "labels", "loss_mask", "position_ids")
    }
    cu = batch["cu_seqlens"].flatten().to(device)
    cu_pad = batch["cu_seqlens_padded"].flatten().to(device)
    max_len = int(batch["max_seqlen"])
    params = PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        cu_seqlens_q_padded=cu_pad,
        cu_seqlens_kv_padded=cu_pad,
        max_seqlen_q=max_len,
        max_seqlen_kv=max_len,
        **({"local_cp_size": cp_size, "cp_group": group} if hybrid else {}),
    )
    return (
        shard["tokens"],
        shard["labels"],
        shard["loss_mask"],
        None,
        shard["position_ids"],
        params,
    )


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Megatron-LM's loss-function contract: (sum of this shard's token losses, its token count,
    report). With ``--calculate-per-token-loss`` Megatron divides by the count summed over the
    data- and context-parallel ranks: the exact mean over the step's tokens."""
    losses = output_tensor.reshape(-1).float()
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().detach().to(torch.int)
    report = {"lm loss": torch.cat([loss.detach().view(1), num_tokens.view(1).float()])}
    return loss, num_tokens, report


def forward_step(data_iterator: Iterator[dict], model) -> tuple[torch.Tensor, Callable]:
    """Megatron-LM's ``forward_step``: one micro-batch from the iterator through ``model`` (a
    packed micro-batch, or a sub-sample of Megatron's hybrid-CP schedule: :func:`get_batch`)."""
    tokens, labels, loss_mask, attention_mask, position_ids, params = get_batch(next(data_iterator))
    with rope_over_micro_batch_group(model, params):
        output = model(
            tokens, position_ids, attention_mask, labels=labels, packed_seq_params=params
        )
    return output, functools.partial(loss_func, loss_mask)


def dd_datasets_provider(
    data: DataConfig, corpus=None, *, start_step: int | Callable[[], int] = 0
) -> Callable:
    """A ``train_valid_test_datasets_provider`` for Megatron-LM's ``pretrain`` with
    ``--dataloader-type external``: the train "dataset" is this rank's :class:`DecomposedBatches`
    iterator (validation and test: none). ``corpus`` defaults to the one ``data`` names;
    ``start_step`` may be a callable read when Megatron calls the provider (after a checkpoint
    is loaded, e.g. ``lambda: get_args().iteration``)."""
    from hetero_sp.data.open_corpus import open_corpus
    from hetero_sp.data.samplers import build_sampler

    def provider(train_val_test_num_samples=None, vp_stage=None):
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        step = start_step() if callable(start_step) else start_step
        train = DecomposedBatches(
            build_sampler(data, corpus if corpus is not None else open_corpus(data)),
            dp_rank=parallel_state.get_data_parallel_rank(),
            dp_size=parallel_state.get_data_parallel_world_size(),
            num_microbatches=get_num_microbatches(),
            cp_size=parallel_state.get_context_parallel_world_size(),
            start_step=step,
        )
        return train, None, None

    provider.is_distributed = True  # every rank builds its own (deterministic) iterator
    return provider


def hybrid_cp_datasets_provider(data: DataConfig, corpus=None) -> Callable:
    """A ``train_valid_test_datasets_provider`` for Megatron-LM's ``pretrain`` with hybrid
    context parallelism (``--hybrid-context-parallel --dataloader-type single``): the train
    dataset is a :class:`HybridCPSamples` of the step's ``--global-batch-size`` packed samples
    (micro-batch size 1), every sequence padded for any group of the DP x CP ranks; validation
    and test: none. Megatron-LM's ``HybridCPMegatronPretrainingSampler`` picks each data-parallel
    rank's items of a step and resumes from ``consumed_samples``."""
    from hetero_sp.data.open_corpus import open_corpus
    from hetero_sp.data.samplers import build_sampler

    def provider(train_val_test_num_samples=None, vp_stage=None):
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        dp = parallel_state.get_data_parallel_world_size()
        bins = get_num_microbatches() * dp
        total = train_val_test_num_samples[0] if train_val_test_num_samples else 0
        train = HybridCPSamples(
            build_sampler(data, corpus if corpus is not None else open_corpus(data)),
            bins_per_step=bins,
            dp_cp_size=parallel_state.get_data_parallel_world_size(with_context_parallel=True),
            dp_rank=parallel_state.get_data_parallel_rank(),
            dp_size=dp,
            num_steps=max(1, -(-total // bins)) if total else 1 << 30,
        )
        return train, None, None

    provider.is_distributed = True  # every rank builds its own (deterministic) dataset
    return provider
