"""Megatron's hybrid (dynamic) context parallelism, planned by HeteroSP.

megatron-core's hybrid context parallelism (``ModelParallelConfig.hybrid_context_parallel``)
gives every sequence of a step its own group of the DP x CP ranks: aligned blocks of 1, 2, 4, ...
ranks (``parallel_state.get_hybrid_data_context_parallel_groups``). Per step,
``HybridCPDataLoaderWrapper`` gathers the step's sequence lengths, asks its scheduler for
``get_groups_and_subsamples`` (phases separated by barriers; in each, the sequences every rank
runs), routes the sequences to their ranks, and ``hybrid_context_parallel_forward_backward``
runs each sequence as one sub-sample on the group of ranks that hold it.

- :func:`use_hetero_sp_scheduler`: with it, every ``HybridCPDataLoaderWrapper`` built inside
  the block (Megatron-LM's ``train`` builds one) schedules with HeteroSP's planner
  (:class:`~hetero_sp.integrations.megatron_schedule.HeteroSPCPScheduler`) instead of
  ``BalancedCPScheduler``, and hands the schedule one packed micro-batch per group and phase.
- :func:`dynamic_cp_cost_model`: the planner's cost model for a Megatron ``TransformerConfig``,
  from a HeteroSP profile (carried over by FLOPs when it was made with another model size).
- :func:`sub_sample_batch`, :func:`hybrid_cp_group`: one sub-sample's shard and its
  ``PackedSeqParams`` (``cp_group``, ``local_cp_size``), for ``forward_step``.

See ``docs/megatron.md`` ("Dynamic CP").
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams

from hetero_sp.config import ModelConfig, PlannerConfig
from hetero_sp.core.errors import UserError
from hetero_sp.core.names import GroupShapes
from hetero_sp.integrations.megatron_data import TOKEN_KEYS, pack_group_streams
from hetero_sp.integrations.megatron_layout import cp_shard_index
from hetero_sp.integrations.megatron_schedule import HeteroSPCPScheduler, megatron_max_group_size
from hetero_sp.log import get_logger
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.estimate import h100_estimate
from hetero_sp.planner.profile import Profile, load_profile, rescale_profile
from hetero_sp.planner.solve import Planner

logger = get_logger(__name__)


def hybrid_cp_group(size: int):
    """This rank's group of ``size`` DP x CP ranks (None for one rank), as Megatron built it."""
    if size == 1:
        return None
    return parallel_state.get_hybrid_data_context_parallel_groups(group_size=size)


def sub_sample_batch(sample: dict, group) -> tuple:
    """This rank's shard of one sub-sample (one sequence, its ``TOKEN_KEYS`` of shape [n],
    n a multiple of 2 x the group size) over ``group`` (None: one rank), on the current device:
    ``(tokens, labels, loss_mask, None, position_ids, packed_seq_params)``, the first [1, n / G].

    Megatron's head-tail split (the sequence in 2 G chunks, group rank r keeps r and
    2 G - 1 - r) and the ``PackedSeqParams`` of ``get_batch_on_this_hybrid_cp_rank``: format
    ``sbhd``, ``cu_seqlens [0, n]``, ``local_cp_size`` and ``cp_group``."""
    size, rank = (1, 0) if group is None else (group.size(), group.rank())
    n = sample["tokens"].numel()
    if size > 1 and n % (2 * size):
        raise UserError(
            f"a sub-sample of {n} tokens cannot be split over {size} ranks: hybrid context "
            f"parallelism needs every sequence padded to a multiple of 2 x the DP x CP size "
            "(HybridCPSamples pads this way)"
        )
    device = torch.device(torch.cuda.current_device()) if torch.cuda.is_available() else None
    index = cp_shard_index([n], size, rank) if size > 1 else slice(None)
    shard = {key: sample[key].reshape(-1)[index][None].to(device) for key in TOKEN_KEYS}
    cu = torch.tensor([0, n], dtype=torch.int32, device=device)
    params = PackedSeqParams(
        qkv_format="sbhd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        cu_seqlens_q_padded=cu,
        cu_seqlens_kv_padded=cu,
        max_seqlen_q=n,
        max_seqlen_kv=n,
        local_cp_size=size,
        cp_group=group,
    )
    return shard["tokens"], shard["labels"], shard["loss_mask"], None, shard["position_ids"], params


def model_config_of(config, pattern: str, vocab_size: int) -> ModelConfig:
    """HeteroSP's description of a Megatron GPT built with ``hybrid_block_spec(config,
    pattern)``: what the cost model prices."""
    heads = config.num_attention_heads
    if config.kv_channels is not None and config.kv_channels * heads != config.hidden_size:
        logger.warning(
            "kv_channels=%d x %d heads differs from hidden_size=%d: the cost model prices "
            "heads of hidden_size / heads",
            config.kv_channels,
            heads,
            config.hidden_size,
        )
    return ModelConfig(
        vocab_size=vocab_size,
        dim=config.hidden_size,
        layers=pattern,
        num_heads=heads,
        num_kv_heads=config.num_query_groups or heads,
        ffn_dim=config.ffn_hidden_size,
    )


def dynamic_cp_cost_model(
    config,
    *,
    pattern: str,
    vocab_size: int,
    world_size: int,
    profile: Profile | str | Path | None = None,
    gpus_per_node: int | None = None,
    memory_gb: float = 0.0,
    zero_stage: int = 1,
    softmax_strategies: tuple[str, ...] | None = None,
    linear_strategies: tuple[str, ...] | None = None,
) -> CostModel:
    """The planner's cost model for a Megatron GPT (``config``, ``pattern``, ``vocab_size``) on
    ``world_size`` DP x CP ranks, priced with ``profile`` (a ``hetero-sp profile`` file or
    :class:`Profile`; default the 8xH100 estimate, ``configs/profiles/h100x8-estimate.json``).
    A profile made with another model size is carried over by FLOP ratios (an estimate). Groups are capped at the sizes
    Megatron builds (:func:`~hetero_sp.integrations.megatron_schedule.megatron_max_group_size`).
    ``softmax_strategies``/``linear_strategies`` default to the ones the layers run, which the
    cost model may only price, not choose: pass the spec's strategy names."""
    if profile is None:
        profile = h100_estimate()
    elif not isinstance(profile, Profile):
        profile = load_profile(profile)
    model = model_config_of(config, pattern, vocab_size)
    keys = ("dim", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size")
    if any(getattr(profile.model, k) != getattr(model, k) for k in keys):
        profile = rescale_profile(profile, model)
    overrides: dict = {"group_shapes": GroupShapes.POWER_OF_TWO}  # Megatron's CP groups
    if gpus_per_node:
        overrides["gpus_per_node"] = gpus_per_node
    if memory_gb:
        overrides["gpu_memory_bytes"] = memory_gb * 2**30
    options = {}
    if softmax_strategies:
        options["softmax_strategies"] = softmax_strategies
    if linear_strategies:
        options["linear_strategies"] = linear_strategies
    return CostModel(
        profile,
        profile.topology(world_size, **overrides),
        zero_stage=zero_stage,
        model=model,
        max_group_size=megatron_max_group_size(world_size),
        **options,
    )


@contextlib.contextmanager
def use_hetero_sp_scheduler(
    config,
    *,
    pattern: str,
    vocab_size: int,
    planner: PlannerConfig | None = None,
    pack_groups: bool = True,
    **cost_options,
) -> Iterator[None]:
    """Inside this block, every ``HybridCPDataLoaderWrapper`` megatron-core builds schedules
    with HeteroSP's planner: ``Planner(dynamic_cp_cost_model(config, pattern=..., vocab_size=...,
    world_size=<its DP x CP size>, **cost_options), planner)`` wrapped in a
    :class:`~hetero_sp.integrations.megatron_schedule.HeteroSPCPScheduler` over the wrapper's
    DP x CP group. With ``pack_groups`` (default), the wrappers it schedules also hand Megatron's
    schedule one packed THD micro-batch per group and phase
    (:func:`~hetero_sp.integrations.megatron_data.pack_group_streams`): one forward and backward
    per group, as the plan prices it, instead of one per sequence. Both are restored on exit;
    the wrapper must be used inside the block.

    Megatron-LM: ``with use_hetero_sp_scheduler(config, pattern=..., vocab_size=...):
    pretrain(...)`` with ``--hybrid-context-parallel`` (``docs/megatron.md``)."""
    # Imported here: where megatron-core keeps its hybrid-CP wrapper differs between releases
    # (0.16.1: megatron.core.datasets.data_schedule); the rest of the plug-in does not need it.
    from megatron.core.datasets import data_schedule

    # Megatron's runtime runs the phases: one stream per group and phase, no passes
    options = dataclasses.replace(planner or PlannerConfig(), passes=False)
    wrapper = data_schedule.HybridCPDataLoaderWrapper
    saved = data_schedule.BalancedCPScheduler, wrapper.__next__
    original_next = wrapper.__next__

    def scheduler(max_seq_len_per_rank, dp_cp_group):
        cost = dynamic_cp_cost_model(
            config,
            pattern=pattern,
            vocab_size=vocab_size,
            world_size=dp_cp_group.size(),
            **cost_options,
        )
        return HeteroSPCPScheduler(Planner(cost, options), dp_cp_group)

    def packed_next(self):
        samples, sample_id_groups = original_next(self)
        if samples is None or not isinstance(self.cp_balancing_scheduler, HeteroSPCPScheduler):
            return samples, sample_id_groups
        return pack_group_streams(samples, sample_id_groups, self.dp_cp_group.rank())

    data_schedule.BalancedCPScheduler = scheduler
    if pack_groups:
        wrapper.__next__ = packed_next
    try:
        yield
    finally:
        data_schedule.BalancedCPScheduler, wrapper.__next__ = saved
