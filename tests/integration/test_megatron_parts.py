"""Parts of the Megatron plug-in: the L layer is HeteroSP's LinearAttention, the block spec
follows pipeline stages, the datasets provider reads Megatron's parallel state, bad input is
refused, and ``cpu_compat`` restores what it patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is not installed (extra 'megatron')")

from megatron.core import num_microbatches_calculator as micro  # noqa: E402
from megatron.core import parallel_state  # noqa: E402
from megatron.core.packed_seq_params import PackedSeqParams  # noqa: E402
from megatron.core.transformer.enums import AttnMaskType  # noqa: E402

from hetero_sp.config import DataConfig  # noqa: E402
from hetero_sp.data.corpus import TokenCorpus  # noqa: E402
from hetero_sp.data.samplers import build_sampler  # noqa: E402
from hetero_sp.integrations.megatron import (  # noqa: E402
    DecomposedBatches,
    HeteroLinearSelfAttention,
    HeteroSoftmaxCoreAttention,
    cpu_compat,
    dd_datasets_provider,
    get_batch,
    hybrid_block_spec,
    pack_micro_batch,
)
from hetero_sp.integrations.megatron_attention import _shard_seqs  # noqa: E402
from hetero_sp.model.attention import LinearAttention  # noqa: E402
from hetero_sp.parallel.packed import PackedSeqs  # noqa: E402
from tests.common import assert_rel_close, tiny_config  # noqa: E402
from tests.megatron_common import (  # noqa: E402
    DOC_LENGTHS,
    VOCAB,
    documents,
    gpt_config,
    gpt_model,
)
from tests.rank_pool import run_ranks  # noqa: E402


def _linear_layer_vs_hetero_sp(rank, world_size):
    parallel_state.initialize_model_parallel()
    try:
        cfg = gpt_config(1, 1)
        cfg.layernorm_epsilon = 1e-6  # HeteroSP's norm_eps
        torch.manual_seed(0)
        ours = LinearAttention(tiny_config("L", dim=32, num_heads=4), backend="torch")
        theirs = HeteroLinearSelfAttention(cfg, layer_number=1, backend="torch")
        with torch.no_grad():
            theirs.linear_qkv.weight.copy_(
                torch.cat([ours.wq.weight, ours.wk.weight, ours.wv.weight])
            )
            theirs.linear_gate.weight.copy_(ours.wg.weight)
            theirs.linear_gate.bias.copy_(ours.wg.bias)
            theirs.o_norm.weight.copy_(torch.rand(8) + 0.5)
            ours.o_norm.weight.copy_(theirs.o_norm.weight)
            theirs.linear_proj.weight.copy_(ours.wo.weight)
        b = pack_micro_batch(documents(), 1)
        _, _, _, _, _, params = get_batch(b)
        x = torch.randn(sum(DOC_LENGTHS), 32, requires_grad=True)
        got, bias = theirs(x[:, None], packed_seq_params=params)
        expected = ours(x, PackedSeqs.from_lengths(DOC_LENGTHS))
        return got[:, 0].detach(), bias, expected.detach()
    finally:
        parallel_state.destroy_model_parallel()


def test_linear_layer_is_hetero_sps_linear_attention():
    """At CP 1 the Megatron L layer computes HeteroSP's ``LinearAttention`` on the same
    weights, document by document of a packed batch."""
    got, bias, expected = run_ranks(_linear_layer_vs_hetero_sp, 2)[0]
    assert bias is None
    # q, k, v come from one fused projection instead of three (other matmul blocking).
    assert_rel_close(got, expected, 1e-6, "output")


def _checkpoint_keys(rank, world_size):
    with cpu_compat():
        parallel_state.initialize_model_parallel()
        try:
            cfg = gpt_config(1, 2)
            model = gpt_model(cfg, hybrid_block_spec(cfg, "LS"))
            params = {name for name, _ in model.named_parameters()}
            return params, set(model.sharded_state_dict())
        finally:
            parallel_state.destroy_model_parallel()


def test_sharded_state_dict_covers_every_parameter():
    """Megatron's distributed checkpointing sees the new layers' parameters (the decay gate and
    the per-head norm included); saving and loading is Megatron's."""
    params, keys = run_ranks(_checkpoint_keys, 2)[0]
    assert {"decoder.layers.0.self_attention.o_norm.weight"} <= params
    assert params <= keys


def _pipeline_slices(rank, world_size):
    parallel_state.initialize_model_parallel(pipeline_model_parallel_size=2)
    try:
        cfg = gpt_config(1, 4)
        cfg.pipeline_model_parallel_size = 2
        spec = hybrid_block_spec(cfg, "LLSS")
        return [s.submodules.self_attention.module.__name__ for s in spec.layer_specs]
    finally:
        parallel_state.destroy_model_parallel()


def test_block_spec_gives_each_pipeline_stage_its_layers():
    first, second = run_ranks(_pipeline_slices, 2)
    assert first == ["HeteroLinearSelfAttention"] * 2
    assert second == ["SelfAttention"] * 2


def _provider_batches(rank, world_size):
    rng = np.random.default_rng(0)
    corpus = TokenCorpus.from_docs([rng.integers(0, VOCAB, n) for n in rng.integers(5, 90, 40)])
    data = DataConfig(sampler="dd", tokens_per_step=256, max_seq_len=64, min_seq_len=8)
    parallel_state.initialize_model_parallel(context_parallel_size=2)
    micro.init_num_microbatches_calculator(rank, None, 3, 1, 1)
    try:
        train, valid, test = dd_datasets_provider(data, corpus, start_step=lambda: 5)(None)
        expected = DecomposedBatches(
            build_sampler(data, corpus), dp_rank=0, dp_size=1, num_microbatches=3, cp_size=2
        ).micro_batch(5, 0)
        got = next(train)
        assert valid is None and test is None and train.state_dict() == {"step": 5, "micro": 1}
        return all(torch.equal(got[k], expected[k]) for k in got if k != "max_seqlen")
    finally:
        micro.destroy_num_microbatches_calculator()
        parallel_state.destroy_model_parallel()


def test_datasets_provider_reads_megatrons_parallel_state():
    """Both CP ranks of the one data-parallel rank get micro-batch 0 of step 5 of 3."""
    assert run_ranks(_provider_batches, 2) == [True, True]


def test_spec_errors():
    cfg = gpt_config(1, 2)
    with pytest.raises(ValueError, match="one letter per layer"):
        hybrid_block_spec(cfg, "LLS")
    with pytest.raises(ValueError, match="of L .linear attention. and"):
        hybrid_block_spec(cfg, "LX")
    cfg.attention_dropout = 0.1
    with pytest.raises(ValueError, match="set attention_dropout=0"):
        HeteroSoftmaxCoreAttention(cfg, 1, AttnMaskType.causal)
    with pytest.raises(ValueError, match="is causal"):
        HeteroSoftmaxCoreAttention(cfg, 1, AttnMaskType.padding, attention_dropout=0.0)


def test_a_per_micro_batch_cp_group_that_is_no_process_group_is_refused():
    # The layers run over packed_seq_params.cp_group (dynamic CP, tests/integration/
    # test_megatron_dynamic_cp.py); anything else in that field is a clear error.
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=torch.tensor([0, 4]), cp_group=object())
    with pytest.raises(ValueError, match="must be a torch.distributed ProcessGroup"):
        _shard_seqs(4, 1, params, None, torch.device("cpu"))


def test_cpu_compat_restores_what_it_patches():
    current_device = torch.cuda.current_device
    torch.manual_seed(0)
    plain = torch.rand(4)
    torch.manual_seed(0)
    with cpu_compat(seed=7) as tracker:
        assert torch.cuda.current_device() == torch.device("cpu")
        with tracker.fork():
            forked = torch.rand(4)
        # the forked stream leaves the default one where it was
        assert torch.equal(torch.rand(4), plain)
    assert torch.cuda.current_device is current_device
    with cpu_compat(seed=7) as tracker, tracker.fork():
        assert torch.equal(torch.rand(4), forked)
