"""HeteroSP plans as Megatron hybrid-CP phases (no megatron, no process group): every sequence
once, on an aligned block of the sizes Megatron builds, no rank idle in the last phase, and
the plan's groups kept as they are wherever Megatron's schedule allows."""

from __future__ import annotations

import pytest

from hetero_sp.integrations.megatron_schedule import (
    HeteroSPCPScheduler,
    fill_idle,
    megatron_group_sizes,
    megatron_max_group_size,
    plan_phases,
)
from hetero_sp.planner.plan import GroupPlan, MicroBatchPlan, Plan, SolverStats
from hetero_sp.planner.solve import Planner
from tests.planner_common import synthetic_cost


def _plan(lengths, micro_batches) -> Plan:
    """A plan from ``[[(ranks, sequences), ...], ...]``."""
    stats = SolverStats("homogeneous", "test", None, None, None, 0.0, 0, 0.0)
    mbs = tuple(
        MicroBatchPlan(
            groups=tuple(
                GroupPlan(
                    tuple(ranks),
                    tuple(seqs),
                    "ulysses",
                    "lasp2",
                    sum(lengths[i] for i in seqs),
                    0.0,
                    0.0,
                )
                for ranks, seqs in groups
            ),
            makespan_s=0.0,
            lower_bound_s=0.0,
            solver=stats,
        )
        for groups in micro_batches
    )
    world = sum(len(r) for r, _ in micro_batches[0])
    return Plan(world_size=world, lengths=tuple(lengths), micro_batches=mbs, memory_limit_bytes=1)


def holders(phase, i):
    return [r for r, seqs in enumerate(phase) if i in seqs]


def assert_megatron_phases(phases, num_sequences, world):
    seen = []
    for phase in phases:
        assert len(phase) == world
        for i in {i for seqs in phase for i in seqs}:
            ranks = holders(phase, i)
            size = len(ranks)
            assert size in megatron_group_sizes(world)
            assert ranks == list(range(ranks[0], ranks[0] + size)) and ranks[0] % size == 0
            seen.append(i)
    assert sorted(seen) == list(range(num_sequences))
    assert all(phases[-1]), "a rank is idle in the last phase: Megatron's schedule indexes it"


def test_megatron_group_sizes():
    assert megatron_group_sizes(2) == (1, 2)
    assert megatron_group_sizes(8) == (1, 2, 4, 8)
    assert megatron_group_sizes(6) == (1, 2, 6)  # no block of 4: Megatron builds none
    assert megatron_max_group_size(8) == 8
    for bad in (1, 6, 12):
        with pytest.raises(ValueError, match="power-of-two number of DP x CP ranks"):
            megatron_max_group_size(bad)


def test_plan_maps_one_to_one_when_its_last_micro_batch_is_full():
    lengths = [40, 8, 16, 24]
    plan = _plan(lengths, [[((0, 1), (0,)), ((2,), (1, 2)), ((3,), ())], [((0, 1, 2, 3), (3,))]])
    phases = plan_phases(plan)
    assert phases == [[[0], [0], [1, 2], []], [[3], [3], [3], [3]]]
    assert_megatron_phases(phases, 4, 4)


def test_a_full_micro_batch_goes_last():
    lengths = [40, 8, 16, 24]
    plan = _plan(lengths, [[((0, 1, 2, 3), (3,))], [((0, 1), (0,)), ((2,), (1, 2)), ((3,), ())]])
    assert plan_phases(plan) == [[[0], [0], [1, 2], []], [[3], [3], [3], [3]]]


@pytest.mark.parametrize(
    "groups, expected",
    [
        # an idle rank's sibling grows over it
        ([((0,), (0,)), ((1,), ()), ((2, 3), (1,))], [((0, 1), (0,)), ((2, 3), (1,))]),
        # an idle half takes the lightest group of the other half
        (
            [((0,), (0,)), ((1,), (1,)), ((2,), (2,)), ((3,), ()), ((4, 5, 6, 7), ())],
            [((0, 1), (1,)), ((2, 3), (2,)), ((4, 5, 6, 7), (0,))],
        ),
        # one group alone grows to the world
        ([((0, 1), (0,)), ((2,), ()), ((3,), ())], [((0, 1, 2, 3), (0,))]),
    ],
)
def test_fill_idle(groups, expected):
    assert fill_idle(groups, [10, 20, 30]) == expected


def test_filled_last_phase_when_every_micro_batch_has_an_idle_rank():
    lengths = [40, 8, 16]
    plan = _plan(
        lengths,
        [[((0, 1), (0,)), ((2,), (1,)), ((3,), ())], [((0,), (2,)), ((1,), ()), ((2, 3), ())]],
    )
    phases = plan_phases(plan)
    assert phases[0] == [[0], [0], [1], []]  # kept: an idle rank is fine before the last phase
    assert phases[1] == [[2]] * 4
    assert_megatron_phases(phases, 3, 4)


def test_scheduler_speaks_megatrons_interface():
    """``get_groups_and_subsamples`` takes (sample id, length) pairs of the whole step and
    returns per phase and rank the lengths and the sample ids, planned by HeteroSP."""
    cost = synthetic_cost(8, tokens_per_gpu=4096, layers="LS")
    scheduler = HeteroSPCPScheduler(Planner(cost))
    lengths = [6000, 3000, 2000, 1500, 1200, 1000, 800, 600, 500, 400, 300, 200]
    ids = [100 + i for i in range(len(lengths))]
    groups, sample_ids = scheduler.get_groups_and_subsamples(list(zip(ids, lengths)), None)
    assert scheduler.last_plan.lengths == tuple(lengths)
    phases = [[[ids.index(g) for g in rank_ids] for rank_ids in phase] for phase in sample_ids]
    assert_megatron_phases(phases, len(lengths), 8)
    assert groups == [[[lengths[i] for i in seqs] for seqs in phase] for phase in phases]


def test_pack_group_streams():
    """A group's sub-samples become one THD micro-batch under its first id, on every rank of
    the group; schedules where ranks share a sequence but not their lists are refused."""
    import numpy as np
    import torch

    from hetero_sp.integrations.megatron_data import pack_group_streams, pack_sub_samples

    seqs = [np.arange(n + 1) + 100 * i for i, n in enumerate([9, 3, 5])]
    packed = pack_sub_samples(seqs, 8)
    cu = packed["cu_seqlens"].tolist()
    samples = {
        i: {k: packed[k][a:b] for k in ("tokens", "labels", "loss_mask", "position_ids")}
        for i, (a, b) in enumerate(zip(cu, cu[1:]))
    }
    phases = [[[0], [0], [1, 2], []]]
    streams, ids = pack_group_streams(samples, phases, 2)
    assert ids == [[[0], [0], [1], []]]
    (stream,) = streams.values()
    assert list(streams) == [1]
    assert stream["cu_seqlens_padded"].tolist() == [0, 8, 16] == stream["cu_seqlens"].tolist()
    assert stream["tokens"].shape == (1, 16) and stream["max_seqlen"] == 8
    assert torch.equal(stream["tokens"][0, :3], torch.tensor([100, 101, 102]))
    assert stream["loss_mask"].sum() == 3 + 5
    with pytest.raises(ValueError, match="not their lists"):
        pack_group_streams(samples, [[[0, 1], [0, 2], [], []]], 0)
    with pytest.raises(ValueError, match="two groups"):
        pack_group_streams(samples, [[[0, 1], [1], [2], [2]]], 0)
