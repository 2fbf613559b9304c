"""megatron-core's GPTModel with HeteroSP's layer spec: context-parallel size 2 over gloo equals
context-parallel size 1 (loss and every parameter gradient), for the softmax SP strategies and
the linear-attention ones in a hybrid pattern, on [s, b] batches sharded by Megatron's own
``get_batch_on_this_cp_rank`` and on packed THD batches from the HeteroSP data provider
(through ``forward_step``). At CP 1, HeteroSP's core attention equals Megatron's own
``DotProductAttention``. Both CP sizes run in the same two gloo processes (at CP 1 each rank
runs the whole batch); see ``tests/megatron_common.py`` for the step.
"""

from __future__ import annotations

import pytest

pytest.importorskip("megatron.core", reason="megatron-core is not installed (extra 'megatron')")

from megatron.core import parallel_state  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402

from hetero_sp.integrations.megatron import cpu_compat, hybrid_block_spec  # noqa: E402
from tests.common import assert_rel_close  # noqa: E402
from tests.megatron_common import gpt_config, gpt_model, step  # noqa: E402
from tests.rank_pool import run_ranks  # noqa: E402


def _cp_runs(rank, world_size, pattern, softmax, linear, fmt):
    """The same model and batch at CP 1 and at CP 2, on the same two processes."""
    out, state = {}, None
    with cpu_compat():
        for cp in (1, 2):
            parallel_state.initialize_model_parallel(context_parallel_size=cp)
            try:
                cfg = gpt_config(cp, len(pattern))
                spec = hybrid_block_spec(
                    cfg,
                    pattern,
                    softmax_strategy=softmax,
                    linear_strategy=linear,
                    softmax_backend="torch",
                    linear_backend="torch",
                )
                model = gpt_model(cfg, spec)
                if state is None:
                    state = model.state_dict()
                model.load_state_dict(state)
                out[cp] = step(model, fmt, cp)
            finally:
                parallel_state.destroy_model_parallel()
    return out


def _assert_cp_matches(results):
    for rank, runs in enumerate(results):
        ref, got = runs[1], runs[2]
        # The loss and gradients are sums over ranks in another order than one process adds,
        # of projections run on T / 2 rows (other matmul blocking) and attention over other
        # key blocks (see test_sp_softmax_attention, test_sp_linear): fp32 rounding only.
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6), f"rank {rank} loss"
        assert got["grads"].keys() == ref["grads"].keys()
        for name, expected in ref["grads"].items():
            assert_rel_close(got["grads"][name], expected, 1e-5, f"rank {rank} {name}")


@pytest.mark.parametrize("fmt", ["bshd", "thd"])
@pytest.mark.parametrize("softmax", ["ulysses", "allgather_kv"])
def test_gpt_cp2_equals_cp1_softmax(softmax, fmt):
    _assert_cp_matches(run_ranks(_cp_runs, 2, "SS", softmax, "lasp2", fmt))


LINEAR_CASES = [("ulysses", "lasp2", "thd"), ("allgather_kv", "zeco", "thd")]
LINEAR_CASES += [("allgather_kv", "lasp2", "bshd"), ("ulysses", "zeco", "bshd")]


@pytest.mark.parametrize("softmax, linear, fmt", LINEAR_CASES)
def test_gpt_cp2_equals_cp1_hybrid(softmax, linear, fmt):
    _assert_cp_matches(run_ranks(_cp_runs, 2, "LLLS", softmax, linear, fmt))


def _core_attention_vs_megatron(rank, world_size):
    out = {}
    with cpu_compat():
        parallel_state.initialize_model_parallel(context_parallel_size=1)
        try:
            cfg = gpt_config(1, 2)
            ours = gpt_model(cfg, hybrid_block_spec(cfg, "SS", softmax_backend="torch"))
            theirs = gpt_model(cfg, get_gpt_layer_local_spec(normalization="RMSNorm"))
            theirs.load_state_dict(ours.state_dict())
            for name, model in (("ours", ours), ("megatron", theirs)):
                out[name] = step(model, "bshd", 1, causal_mask=True)
        finally:
            parallel_state.destroy_model_parallel()
    return out


def test_core_attention_equals_megatrons_dot_product_attention():
    """Same weights, CP 1: HeteroSP's core attention reads Megatron's q, k, v layout (heads,
    grouped KV, scale) as Megatron's own DotProductAttention does."""
    out = run_ranks(_core_attention_vs_megatron, 2)[0]
    # Megatron's attention is an explicit softmax(QK^T) V, ours SDPA: fp32 rounding only.
    assert out["ours"]["loss"] == pytest.approx(out["megatron"]["loss"], rel=1e-6)
    for name, expected in out["megatron"]["grads"].items():
        assert_rel_close(out["ours"]["grads"][name], expected, 1e-5, name)
