"""Megatron's hybrid-CP schedule end to end on 4 gloo ranks: ``HybridCPDataLoaderWrapper``
(gathers the step's lengths, schedules, routes the sequences) and
``hybrid_context_parallel_forward_backward`` (one forward and backward per sub-sample on its
group, barriers between phases), with HeteroSP's data (``HybridCPSamples``), ``forward_step``
and layers, scheduled by HeteroSP's planner (switched on by ``use_hetero_sp_scheduler``) or by
Megatron's own ``BalancedCPScheduler``.

The step's loss and every gradient (summed over the 4 ranks, over the step's token count, as
``finalize_model_grads`` does with ``--calculate-per-token-loss``) equal the same model at CP 1
on the same tokens; the step uses groups of more than one size. HeteroSP's scheduler runs with
a group's sequences packed into one micro-batch (``pack_groups``, its default) and with one
sub-sample per sequence (Megatron's format). Over a step's phases, ranks and shards every target
token is seen exactly once, for the ``dd`` and ``mixed`` samplers and every scheduler, and a
resumed iterator continues where the first stopped; the datasets provider reads Megatron's
parallel state.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytest.importorskip("megatron.core", reason="megatron-core is not installed (extra 'megatron')")

from megatron.core import parallel_state  # noqa: E402
from megatron.core.datasets.data_schedule import HybridCPDataLoaderWrapper  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from megatron.core.pipeline_parallel.hybrid_cp_schedule import BalancedCPScheduler  # noqa: E402

from hetero_sp.config import DataConfig, PlannerConfig  # noqa: E402
from hetero_sp.data.corpus import TokenCorpus  # noqa: E402
from hetero_sp.data.samplers import build_sampler  # noqa: E402
from hetero_sp.integrations.megatron import cpu_compat, forward_step  # noqa: E402
from hetero_sp.integrations.megatron_data import HybridCPSamples  # noqa: E402
from hetero_sp.integrations.megatron_dynamic_cp import use_hetero_sp_scheduler  # noqa: E402
from hetero_sp.integrations.megatron_layout import cp_shard_index  # noqa: E402
from hetero_sp.integrations.megatron_schedule import HeteroSPCPScheduler  # noqa: E402
from hetero_sp.planner.memory import (  # noqa: E402
    activation_bytes_per_token,
    count_params,
    model_state_bytes,
)
from tests.integration.test_megatron_dynamic_cp import (  # noqa: E402
    WORLD,
    assert_equal_runs,
    build,
    result,
    run_sample,
    sub_sample,
)
from tests.megatron_common import VOCAB, gpt_config  # noqa: E402
from tests.planner_common import synthetic_profile  # noqa: E402
from tests.rank_pool import run_ranks  # noqa: E402

# Training tokens; padded to multiples of 8 the first needs more than one rank's memory
# (ONE_RANK_TOKENS) and more than Megatron's max_seqlen_per_dp_cp_rank.
LENGTHS = [50, 30, 21, 13, 7, 5]
ONE_RANK_TOKENS = 36
# A generous budget: the MILP stops at optimality in milliseconds, and a budget spent under load
# would fall back to one group size per micro-batch.
PLANNER = PlannerConfig(time_limit_s=10.0, split_search=False)


def tiny_profile(pattern: str, one_rank_tokens: int = ONE_RANK_TOKENS):
    """Per-token costs dominate and the links are slow (so the planner balances tokens on the
    smallest groups that hold them); one rank holds about
    ``one_rank_tokens`` tokens, a group of 2 twice as many."""
    profile = synthetic_profile(pattern, a1=1e-4, a2=1e-7, fixed=1e-5, intra_bw=1e7)
    model = profile.model
    state = model_state_bytes(count_params(model), 1, WORLD, "fp32")
    memory = (state + activation_bytes_per_token(model, 4) * one_rank_tokens) / 0.9
    return dataclasses.replace(profile, gpu_memory_bytes=memory)


class FixedSteps:
    """A sampler whose every step has the same sequences."""

    def __init__(self, seqs: list[np.ndarray]) -> None:
        self.seqs = seqs

    def batch(self, step: int):
        return self

    @property
    def lengths(self) -> list[int]:
        return [len(s) - 1 for s in self.seqs]

    def materialize(self, indices) -> list[np.ndarray]:
        return [self.seqs[i] for i in indices]


def sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, VOCAB, n + 1) for n in LENGTHS]


def hybrid_config(pattern: str):
    cfg = gpt_config(1, len(pattern))
    cfg.hybrid_context_parallel = True
    cfg.calculate_per_token_loss = True
    cfg.max_seqlen_per_dp_cp_rank = 32  # BalancedCPScheduler: the 56-token sequence on 2 ranks
    return cfg


SCHEDULERS = ("hetero_sp", "hetero_sp_per_sequence", "megatron")
"""HeteroSP's scheduler with one packed micro-batch per group and phase, with one sub-sample
per sequence (Megatron's format), and Megatron's BalancedCPScheduler."""


@contextlib.contextmanager
def scheduling(scheduler: str, cfg, pattern: str):
    """The block inside which wrappers are built and stepped, for ``scheduler``."""
    if scheduler == "megatron":
        yield
        return
    with use_hetero_sp_scheduler(
        cfg,
        pattern=pattern,
        vocab_size=VOCAB,
        profile=tiny_profile(pattern),
        planner=PLANNER,
        pack_groups=scheduler == "hetero_sp",
    ):
        yield


def wrapper_for(scheduler: str, data, cfg) -> HybridCPDataLoaderWrapper:
    wrapper = HybridCPDataLoaderWrapper(data, cfg)
    expected = BalancedCPScheduler if scheduler == "megatron" else HeteroSPCPScheduler
    assert isinstance(wrapper.cp_balancing_scheduler, expected)
    return wrapper


def group_sizes(sample_id_groups) -> list[list[int]]:
    """Per phase, the sizes of the groups its sequences run on."""
    out = []
    for phase in sample_id_groups:
        ids = {gid for rank_ids in phase for gid in rank_ids}
        out.append(sorted(sum(gid in rank_ids for rank_ids in phase) for gid in ids))
    return out


class Recorder:
    """Passes the wrapper's output through and keeps its schedule."""

    def __init__(self, wrapper) -> None:
        self.wrapper, self.schedules = wrapper, []

    def __iter__(self):
        return self

    def __next__(self):
        samples, sample_id_groups = next(self.wrapper)
        self.schedules.append(sample_id_groups)
        return samples, sample_id_groups


def _schedule_vs_cp1(rank, world_size, scheduler, pattern, softmax, linear):
    seqs = sequences()
    with cpu_compat():
        parallel_state.initialize_model_parallel(hybrid_context_parallel=True)
        try:
            cfg = hybrid_config(pattern)
            ref_model = build(pattern, softmax, linear)
            ref = sum((run_sample(ref_model, sub_sample(seq, 1)) for seq in seqs), torch.zeros(()))
            model = build(pattern, softmax, linear)
            model.load_state_dict(ref_model.state_dict())
            model.config.hybrid_context_parallel = True
            model.config.calculate_per_token_loss = True
            data = HybridCPSamples(
                FixedSteps(seqs), bins_per_step=WORLD, dp_cp_size=WORLD, dp_rank=rank, dp_size=WORLD
            )
            with scheduling(scheduler, cfg, pattern):
                recorder = Recorder(wrapper_for(scheduler, data, cfg))
                store = get_forward_backward_func()(
                    forward_step_func=forward_step,
                    data_iterator=recorder,
                    model=model,
                    num_microbatches=1,
                    seq_length=0,
                    micro_batch_size=1,
                )
            total = torch.stack([report["lm loss"][0] for report in store]).sum()
            (schedule,) = recorder.schedules
            runs = [len(phase[rank]) for phase in schedule]
            assert len(store) == sum(runs)  # one forward per listed sub-sample
            if scheduler == "hetero_sp":
                assert max(runs) == 1  # a group's sequences in one packed micro-batch
            sizes = group_sizes(schedule)
            return result(ref_model, ref, None), result(model, total, dist.group.WORLD), sizes
        finally:
            parallel_state.destroy_model_parallel()


SCHEDULE_CASES = [
    ("hetero_sp", "SS", "ulysses", "lasp2"),
    ("hetero_sp", "LLLS", "allgather_kv", "zeco"),
    ("hetero_sp_per_sequence", "SS", "allgather_kv", "lasp2"),
    ("hetero_sp_per_sequence", "LLLS", "ulysses", "lasp2"),
    ("megatron", "SS", "allgather_kv", "lasp2"),
    ("megatron", "LLLS", "ulysses", "zeco"),
]


@pytest.mark.parametrize("scheduler, pattern, softmax, linear", SCHEDULE_CASES)
def test_hybrid_cp_schedule_equals_cp1(scheduler, pattern, softmax, linear):
    results = run_ranks(_schedule_vs_cp1, WORLD, scheduler, pattern, softmax, linear)
    assert_equal_runs([(ref, got) for ref, got, _ in results])
    sizes = results[0][2]
    assert all(r[2] == sizes for r in results)
    used = {size for phase in sizes for size in phase}
    assert 1 in used and max(used) > 1, sizes  # groups of different sizes in one step


def positional_corpus(lengths: list[int]) -> TokenCorpus:
    """Token id = position in the corpus, so a (token, label) pair says where it came from."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenCorpus.from_docs([np.arange(a, b) for a, b in zip(offsets, offsets[1:])])


def real_sampler(kind: str):
    lengths = [int(n) for n in np.random.default_rng(0).integers(3, 300, size=60)]
    cfg = DataConfig(sampler=kind, tokens_per_step=512, max_seq_len=64, min_seq_len=8, seed=3)
    return build_sampler(cfg, positional_corpus(lengths))


def shard_pairs(samples: dict, sample_id_groups, rank: int) -> list[tuple[int, int]]:
    """The (input, label) pairs with loss this rank's shards hold over the step's phases."""
    pairs = []
    for phase in sample_id_groups:
        for gid in phase[rank]:
            holders = [r for r, ids in enumerate(phase) if gid in ids]
            size = len(holders)
            assert holders == list(range(holders[0], holders[0] + size))
            assert holders[0] % size == 0, "not an aligned block of Megatron's groups"
            sample = samples[gid]
            if "cu_seqlens_padded" in sample:  # a group's packed micro-batch
                lengths = sample["cu_seqlens_padded"].diff().tolist()
            else:  # one sequence
                lengths = [sample["tokens"].numel()]
            index = cp_shard_index(lengths, size, rank - holders[0])
            flat = {key: sample[key].reshape(-1)[index] for key in ("tokens", "labels")}
            mask = sample["loss_mask"].reshape(-1)[index] == 1
            tokens, labels = flat["tokens"][mask], flat["labels"][mask]
            pairs += [(int(a), int(b)) for a, b in zip(tokens, labels)]
    return pairs


def _routed_pairs(rank, world_size, scheduler, kind, steps):
    cfg = hybrid_config("LLLS")

    def samples():
        return HybridCPSamples(
            real_sampler(kind), bins_per_step=WORLD, dp_cp_size=WORLD, dp_rank=rank, dp_size=WORLD
        )

    with cpu_compat():
        parallel_state.initialize_model_parallel(hybrid_context_parallel=True)
        try:
            data = samples()
            out, sizes, cursors = [], [], []
            with scheduling(scheduler, cfg, "LLLS"):
                wrapper = wrapper_for(scheduler, data, cfg)
                for _ in range(steps):
                    cursors.append(data.state_dict())
                    routed, sample_id_groups = next(wrapper)
                    out.append(shard_pairs(routed, sample_id_groups, rank))
                    sizes.append(group_sizes(sample_id_groups))
                resumed = samples()
                resumed.load_state_dict(cursors[-1])
                routed, sample_id_groups = next(wrapper_for(scheduler, resumed, cfg))
                again = shard_pairs(routed, sample_id_groups, rank)
            return out, again, sizes, data.state_dict()
        finally:
            parallel_state.destroy_model_parallel()


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("kind", ["dd", "mixed"])
def test_every_target_token_once_through_megatrons_wrapper(scheduler, kind):
    """Routed by Megatron's wrapper and split over each sequence's group, the step's (input,
    label) pairs with loss are exactly the step's next-token pairs, each once; an iterator
    resumed from the cursor saved before the last step gives that step again."""
    steps = 2
    results = run_ranks(_routed_pairs, WORLD, scheduler, kind, steps)
    sampler = real_sampler(kind)
    for step in range(steps):
        batch = sampler.batch(step)
        expected = sorted(
            (int(a), int(b))
            for seq in batch.materialize(range(len(batch)))
            for a, b in zip(seq[:-1], seq[1:])
        )
        got = sorted(p for out, _, _, _ in results for p in out[step])
        assert got == expected, f"step {step}"
        used = {size for phase in results[0][2][step] for size in phase}
        assert max(used) > 1, used  # some sequence is split over a group
    resumed = sorted(p for _, again, _, _ in results for p in again)
    assert resumed == sorted(p for out, _, _, _ in results for p in out[steps - 1])
    assert all(state == {"step": steps} for *_, state in results)


def _provider(rank, world_size):
    from megatron.core import num_microbatches_calculator as micro

    from hetero_sp.integrations.megatron import hybrid_cp_datasets_provider

    lengths = [int(n) for n in np.random.default_rng(0).integers(3, 300, size=60)]
    data = DataConfig(sampler="dd", tokens_per_step=512, max_seq_len=64, min_seq_len=8, seed=3)
    parallel_state.initialize_model_parallel(hybrid_context_parallel=True)
    micro.init_num_microbatches_calculator(rank, None, 2 * WORLD, 1, WORLD)
    try:
        train, valid, test = hybrid_cp_datasets_provider(data, positional_corpus(lengths))(
            [10 * 2 * WORLD, 0, 0]
        )
        items = [train[2 * 2 * WORLD + m * WORLD + rank] for m in range(2)]
        step = train.step_samples(2)
        same = all(torch.equal(a[k], b[k]) for a, b in zip(items, step) for k in a)
        return (valid, test, len(train), train.bins_per_step, train.dp_cp_size, same)
    finally:
        micro.destroy_num_microbatches_calculator()
        parallel_state.destroy_model_parallel()


def test_hybrid_cp_datasets_provider_reads_megatrons_parallel_state():
    """The provider's dataset has a step's global batch of samples (2 micro-batches x 4
    data-parallel ranks), 10 steps for Megatron-LM's 80 train samples, pads for groups of up to
    4 ranks, and the items Megatron-LM's hybrid-CP sampler picks for a rank (s G + m dp + d)
    are the rank's samples of step s."""
    for out in run_ranks(_provider, WORLD):
        assert out == (None, None, 10 * 2 * WORLD, 2 * WORLD, WORLD, True)
