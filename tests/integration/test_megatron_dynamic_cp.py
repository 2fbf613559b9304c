"""Megatron's hybrid (dynamic) context parallelism with HeteroSP's layers, on 4 gloo ranks.

Every sequence of a step runs on its own group of the DP x CP ranks (Megatron's aligned blocks of
1, 2 and 4 ranks) through ``packed_seq_params.cp_group``. The step's loss and every parameter
gradient (summed over the ranks, over the step's token count: ``--calculate-per-token-loss``)
equal the same model at CP 1 on the same tokens, for the softmax-only ``SS`` and the hybrid
``LLLS`` patterns and every strategy:

- here, the layers: a hand-made step of three phases (one long sequence on 2 ranks beside short
  ones on single ranks; one on all 4; packed THD micro-batches on 2 ranks), each sub-sample
  through HeteroSP's ``forward_step``, and a check that a layer ignoring the group is caught;
- ``test_megatron_dynamic_cp_schedule.py``: Megatron's own schedule and data wrapper, driven by
  HeteroSP's scheduler and by Megatron's ``BalancedCPScheduler``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytest.importorskip("megatron.core", reason="megatron-core is not installed (extra 'megatron')")

from megatron.core import parallel_state  # noqa: E402
from megatron.core.datasets.data_schedule import HybridCPDataLoaderWrapper  # noqa: E402
from megatron.core.utils import get_batch_on_this_hybrid_cp_rank  # noqa: E402

from hetero_sp.integrations import megatron_attention  # noqa: E402
from hetero_sp.integrations.megatron import (  # noqa: E402
    cpu_compat,
    forward_step,
    get_batch,
    hybrid_block_spec,
    pack_micro_batch,
)
from hetero_sp.integrations.megatron_data import pack_sub_samples  # noqa: E402
from tests.common import assert_rel_close  # noqa: E402
from tests.megatron_common import VOCAB, gpt_config, gpt_model  # noqa: E402
from tests.rank_pool import run_ranks  # noqa: E402

WORLD = 4
# Training tokens of the step's sequences; sub-samples are padded to multiples of 2 x WORLD.
LENGTHS = [40, 7, 13, 21, 5, 30, 11, 17]
# (ranks, sequences, format) of every group of every phase.
PHASES = [
    [((0, 1), (0,), "sbhd"), ((2,), (1, 4), "sbhd"), ((3,), (2,), "sbhd")],
    [((0, 1, 2, 3), (3,), "sbhd")],
    [((0, 1), (5, 6), "thd"), ((2, 3), (7,), "thd")],
]
CASES = [
    ("SS", "ulysses", "lasp2"),
    ("SS", "allgather_kv", "lasp2"),
    ("LLLS", "ulysses", "lasp2"),
    ("LLLS", "allgather_kv", "zeco"),
]


def sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, VOCAB, n + 1) for n in LENGTHS]


def sub_sample(seq: np.ndarray, local_cp_size: int) -> dict:
    """One sequence as Megatron's wrapper routes it ([n] tensors) and its schedule tags it."""
    (sample,) = HybridCPDataLoaderWrapper.unpack_batch(None, [pack_sub_samples([seq], 2 * WORLD)])
    sample["local_cp_size"] = torch.tensor(local_cp_size, dtype=torch.int32)
    return sample


def thd_micro_batch(seqs: list[np.ndarray], local_cp_size: int) -> dict:
    batch = pack_micro_batch(seqs, local_cp_size)
    batch["local_cp_size"] = torch.tensor(local_cp_size, dtype=torch.int32)
    return batch


def build(pattern: str, softmax: str, linear: str):
    cfg = gpt_config(1, len(pattern))
    spec = hybrid_block_spec(
        cfg,
        pattern,
        softmax_strategy=softmax,
        linear_strategy=linear,
        softmax_backend="torch",
        linear_backend="torch",
    )
    return gpt_model(cfg, spec)


def run_sample(model, batch: dict, ignore_group: bool = False) -> torch.Tensor:
    """Forward and backward of one sub-sample (its loss sum, not divided). With
    ``ignore_group`` HeteroSP's layers run an [s, b] sub-sample over their own CP group (one
    rank) instead of the sub-sample's, the mutation a test must catch; the data and Megatron's
    RoPE still follow the group. (A THD batch would be refused then: its offsets count more
    tokens than the rank holds.)"""
    if ignore_group and "cu_seqlens_padded" not in batch:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(megatron_attention, "micro_batch_cp_group", lambda params, group: group)
            out, loss = forward_step(iter([batch]), model)
            loss_sum = loss(out)[0]
            loss_sum.backward()
        return loss_sum.detach()
    out, loss = forward_step(iter([batch]), model)
    loss_sum = loss(out)[0]
    loss_sum.backward()
    return loss_sum.detach()


def result(model, loss_sum: torch.Tensor, world_group) -> dict:
    """Loss and gradients over the step's tokens, summed over ``world_group`` (None: local)."""
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    if world_group is not None:
        for g in grads.values():
            dist.all_reduce(g, group=world_group)
        dist.all_reduce(loss_sum, group=world_group)
    n = sum(LENGTHS)
    return {"loss": (loss_sum / n).item(), "grads": {k: g / n for k, g in grads.items()}}


def _dynamic_vs_cp1(rank, world_size, pattern, softmax, linear, ignore_group=False):
    seqs = sequences()
    with cpu_compat():
        parallel_state.initialize_model_parallel(hybrid_context_parallel=True)
        try:
            ref_model = build(pattern, softmax, linear)
            ref = torch.zeros(())
            for seq in seqs:
                ref += run_sample(ref_model, sub_sample(seq, 1))
            model = build(pattern, softmax, linear)
            model.load_state_dict(ref_model.state_dict())
            total = torch.zeros(())
            for phase in PHASES:
                for ranks, idx, fmt in phase:
                    if rank not in ranks:
                        continue
                    if fmt == "thd":
                        batches = [thd_micro_batch([seqs[i] for i in idx], len(ranks))]
                    else:
                        batches = [sub_sample(seqs[i], len(ranks)) for i in idx]
                    for batch in batches:
                        total += run_sample(model, batch, ignore_group)
                dist.barrier()
            return result(ref_model, ref, None), result(model, total, dist.group.WORLD)
        finally:
            parallel_state.destroy_model_parallel()


def assert_equal_runs(results):
    for rank, (ref, got) in enumerate(results):
        # Sums over ranks in another order than one process adds, projections on shards (other
        # matmul blocking), attention over other key blocks: fp32 rounding only.
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6), f"rank {rank} loss"
        assert got["grads"].keys() == ref["grads"].keys()
        for name, expected in ref["grads"].items():
            assert_rel_close(got["grads"][name], expected, 1e-5, f"rank {rank} {name}")


@pytest.mark.parametrize("pattern, softmax, linear", CASES)
def test_layers_run_over_the_micro_batch_group(pattern, softmax, linear):
    """Sub-samples on groups of 2, 1 and 4 ranks ([s, b] with RoPE sliced by the group) and
    packed THD micro-batches on groups of 2 (RoPE over the group: ``rope_over_micro_batch_group``)
    give the CP-1 loss and gradients."""
    assert_equal_runs(run_ranks(_dynamic_vs_cp1, WORLD, pattern, softmax, linear))


def test_ignoring_the_micro_batch_group_is_caught():
    """The comparison above fails when the layers do not run over the sub-sample's group (each
    rank's shard is then attended as if it were the whole sequence)."""
    for pattern in ("SS", "LLLS"):
        ref, got = run_ranks(_dynamic_vs_cp1, WORLD, pattern, "allgather_kv", "lasp2", True)[0]
        # 100 x the tolerance of the equality test, for the loss and most gradients.
        assert abs(got["loss"] - ref["loss"]) > 1e-4 * abs(ref["loss"]), pattern
        off = [name for name, g in ref["grads"].items() if not _close(got["grads"][name], g)]
        assert len(off) > len(ref["grads"]) // 2, (pattern, off)


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    try:
        assert_rel_close(got, expected, 1e-3, "")
    except AssertionError:
        return False
    return True


def _params(params) -> dict:
    """The PackedSeqParams fields a sub-sample sets, its group as (size, global ranks)."""
    group = params.cp_group
    return {
        "qkv_format": params.qkv_format,
        "local_cp_size": params.local_cp_size,
        "cp_group": None if group is None else dist.get_process_group_ranks(group),
        "max_seqlen": (params.max_seqlen_q, params.max_seqlen_kv),
        **{
            key: getattr(params, key).long()
            for key in ("cu_seqlens_q", "cu_seqlens_kv", "cu_seqlens_q_padded")
        },
    }


def _hybrid_batch_vs_megatron(rank, world_size):
    seq = sequences()[0]
    out = {}
    with cpu_compat():
        parallel_state.initialize_model_parallel(hybrid_context_parallel=True)
        try:
            for size in (1, 2, 4):
                *ours, ours_params = get_batch(sub_sample(seq, size))
                sample = sub_sample(seq, size)
                theirs, params = get_batch_on_this_hybrid_cp_rank(
                    sample, int(sample.pop("local_cp_size"))
                )
                out[size] = (ours, theirs, _params(ours_params), _params(params))
        finally:
            parallel_state.destroy_model_parallel()
    return out


def test_sub_sample_batch_is_megatrons_hybrid_cp_batch():
    """HeteroSP's shard of a sub-sample and its PackedSeqParams are Megatron's
    ``get_batch_on_this_hybrid_cp_rank`` (which needs cpu_compat's CUDA-on-CPU mode here)."""
    for rank, out in enumerate(run_ranks(_hybrid_batch_vs_megatron, WORLD)):
        for size, (ours, theirs, ours_params, params) in out.items():
            tokens, labels, mask, attention_mask, positions = ours
            assert attention_mask is None
            keys = ("tokens", "labels", "loss_mask", "position_ids")
            for got, key in zip((tokens, labels, mask, positions), keys):
                assert torch.equal(got, theirs[key]), (rank, size, key)
            assert ours_params.keys() == params.keys()
            for key, value in params.items():
                same = torch.equal(ours_params[key], value) if key.startswith("cu_") else None
                assert same or ours_params[key] == value, (rank, size, key)
            block = rank // size * size
            assert params["cp_group"] == (None if size == 1 else list(range(block, block + size)))


def _group_rules(rank, world_size):
    from megatron.core.packed_seq_params import PackedSeqParams

    from hetero_sp.integrations.megatron_attention import micro_batch_cp_group

    parallel_state.initialize_model_parallel(hybrid_context_parallel=True)
    try:
        pair = parallel_state.get_hybrid_data_context_parallel_groups(group_size=2)
        own = parallel_state.get_context_parallel_group()  # one rank
        out = {
            "group": micro_batch_cp_group(PackedSeqParams(cp_group=pair, local_cp_size=2), own)
            is pair,
            "one rank": micro_batch_cp_group(PackedSeqParams(local_cp_size=1), own) is None,
            "layer's": micro_batch_cp_group(PackedSeqParams(), own) is own,
        }
        for name, params, layer in (
            ("size mismatch", PackedSeqParams(cp_group=pair, local_cp_size=4), own),
            ("static CP > 1", PackedSeqParams(cp_group=pair, local_cp_size=2), pair),
        ):
            try:
                micro_batch_cp_group(params, layer)
                out[name] = "accepted"
            except ValueError as err:
                out[name] = str(err)
        return out
    finally:
        parallel_state.destroy_model_parallel()


def test_micro_batch_group_rules():
    """Transformer Engine's rule: the sub-sample's group, one rank for ``local_cp_size=1``
    without one, else the layer's; a group of another size than ``local_cp_size`` and a static
    CP group of more than one rank beside per-micro-batch groups are refused."""
    for out in run_ranks(_group_rules, WORLD):
        assert out["group"] and out["one rank"] and out["layer's"]
        assert "local_cp_size=4 but its cp_group has 2 ranks" in out["size mismatch"]
        assert "need context_parallel_size=1, got 2" in out["static CP > 1"]
