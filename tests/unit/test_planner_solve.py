"""The planner end to end: optimal on tiny instances (brute force), always valid on random ones,
deterministic, and clear errors on bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetero_sp.planner import PlannerConfig, load_profile, plan_batch, validate_plan
from hetero_sp.planner.cluster import Link
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.errors import PlanError
from hetero_sp.planner.plan import Plan
from hetero_sp.planner.simulate import homogeneous_plan
from hetero_sp.planner.solve import split_micro_batches
from tests.planner_common import brute_force, synthetic_cost, synthetic_profile

# Exact settings: one MILP slot per possible group (no aggregated classes), one bucket per
# distinct length, no early stop on the gap, and time enough to prove optimality.
EXACT = PlannerConfig(
    num_buckets=64, explicit_slots=64, rel_gap=0.0, time_limit_s=30.0, min_time_limit_s=30.0
)
FAST = PlannerConfig(time_limit_s=0.3, min_time_limit_s=0.05)


def _instances():
    """Random tiny batches that fit in one micro-batch (brute force models one)."""
    rng = np.random.default_rng(7)
    out = []
    for world in (2, 3, 4):
        for tokens_per_gpu in (600, 5000):
            cost = synthetic_cost(world, tokens_per_gpu)
            while sum(1 for w, t, _ in out if (w, t) == (world, tokens_per_gpu)) < 3:
                lengths = [int(x) for x in rng.integers(20, 1100, int(rng.integers(2, 6)))]
                if max(lengths) <= cost.groups[cost.sizes[-1]].max_tokens and (
                    len(split_micro_batches(lengths, cost)) == 1
                ):
                    out.append((world, tokens_per_gpu, lengths))
    return out


@pytest.mark.parametrize("world,tokens_per_gpu,lengths", _instances())
def test_tiny_instances_reach_the_brute_force_optimum(world, tokens_per_gpu, lengths):
    cost = synthetic_cost(world, tokens_per_gpu)
    plan = plan_batch(lengths, cost, EXACT)
    best = brute_force(lengths, cost)
    assert len(plan.micro_batches) == 1
    # Both sides sum the same float costs in different orders.
    assert plan.predicted_step_s == pytest.approx(best, rel=1e-9)


SLOW_LINKS = dict(intra_bw=1e7, inter_bw=1e6)
LINEAR_SLOW_LINKS = dict(a2=0.0, intra_bw=1e7, inter_bw=1e6)

# Tiny batches whose optimum mixes group sizes: communication is expensive (slow links), so a
# sequence runs on more than one GPU only when memory needs it or the others are busy. Each
# one's brute-force optimum beats every homogeneous layout (asserted below), so only the MILP
# reaches it: the planner's fall-back is the best homogeneous layout.
MIXED = [
    (4, 600, SLOW_LINKS, [345, 414, 578, 252, 546]),
    (4, 1000, LINEAR_SLOW_LINKS, [1692, 507, 754, 209, 397]),  # 1692 tokens need 2 GPUs
    (4, 2000, SLOW_LINKS, [562, 1893, 1398, 1028, 625]),
    (4, 600, dict(intra_bw=3e7), [748, 588, 594, 235, 154]),
    (3, 5000, LINEAR_SLOW_LINKS, [5188, 892, 838, 763, 382]),  # world 3: sizes 1, 2 and 3
    (3, 600, LINEAR_SLOW_LINKS, [319, 391, 393, 408, 169]),
]


@pytest.mark.parametrize("world,tokens_per_gpu,fit,lengths", MIXED)
def test_mixed_optima_need_the_milp(world, tokens_per_gpu, fit, lengths):
    cost = synthetic_cost(world, tokens_per_gpu, fit=fit)
    best = brute_force(lengths, cost)
    assert best < brute_force(lengths, cost, homogeneous=True) * (1 - 0.02)
    plan = plan_batch(lengths, cost, EXACT)
    (mb,) = plan.micro_batches
    assert plan.predicted_step_s == pytest.approx(best, rel=1e-9)
    assert len({g.size for g in mb.groups if g.sequences}) > 1
    assert mb.solver.solver == "highs"


def test_aggregated_classes_bound_the_optimum_from_below():
    """With every size aggregated (fluid), the MILP objective is a relaxation: <= optimum."""
    cost = synthetic_cost(4, 5000)
    lengths = [900, 850, 400, 390, 120, 60]
    fluid = dataclasses.replace(EXACT, explicit_slots=0)
    plan = plan_batch(lengths, cost, fluid)
    best = brute_force(lengths, cost)
    (mb,) = plan.micro_batches
    assert mb.solver.objective_s <= best * (1 + 1e-9)
    assert plan.predicted_step_s >= best * (1 - 1e-9)


def test_heterogeneous_groups_beat_every_homogeneous_layout():
    # Linear compute and slow links: the long sequence needs 4 GPUs for memory and a group of 8
    # would only add traffic between nodes; the short ones are cheapest without communication.
    cost = synthetic_cost(8, tokens_per_gpu=5000, fit=dict(a2=0.0, intra_bw=1e7, inter_bw=1e6))
    lengths = [12000] + [500] * 30
    plan = plan_batch(lengths, cost, FAST)
    (mb,) = plan.micro_batches
    assert next(g for g in mb.groups if 0 in g.sequences).size == 4
    for d in cost.sizes:
        homogeneous = homogeneous_plan(lengths, cost, d)
        assert homogeneous is None or plan.predicted_step_s < homogeneous.predicted_step_s


def test_the_strategy_pair_is_chosen_with_the_tokens_it_holds():
    # H100 estimate, 2 GPUs per node, 6 GB/s between nodes, 4 GPUs, ZeRO-3. Choosing one
    # softmax strategy per size by time per token took all-gather K/V for pairs, which hold
    # 13,446 tokens: the batch then needed one cross-node group of 4 (0.886 s). Ulysses pairs
    # hold 13,511: two pairs inside the nodes take 0.703 s, which the planner must find.
    profile = load_profile("configs/profiles/h100x8-estimate.json")
    inter = Link(latency_s=profile.inter_node.latency_s, bandwidth_Bps=6e9)
    cost = CostModel(profile, profile.topology(4, gpus_per_node=2, inter_node=inter), zero_stage=3)
    lengths = [10152, 5134, 799, 4490, 775, 3855, 633]
    plan = plan_batch(lengths, cost, PlannerConfig(time_limit_s=5.0, min_time_limit_s=0.5))
    validate_plan(plan, cost)
    (mb,) = plan.micro_batches
    busy = [g for g in mb.groups if g.sequences]
    assert [(g.size, g.softmax_strategy) for g in busy] == [(2, "ulysses")] * 2
    assert plan.predicted_step_s == pytest.approx(0.7031, rel=1e-3)


@pytest.mark.parametrize("why", ["passes off", "zero stage 2"])
def test_too_much_memory_for_one_micro_batch_splits_into_the_fewest(why):
    stage = 2 if why == "zero stage 2" else 1
    cost = synthetic_cost(2, tokens_per_gpu=1000, zero_stage=stage)
    lengths = [900, 800, 600, 500, 400, 300]
    plan = plan_batch(lengths, cost, dataclasses.replace(FAST, passes=why != "passes off"))
    assert len(plan.micro_batches) == 2  # 3500 tokens; 2 GPUs hold 2000 at a time
    assert sorted(i for mb in plan.micro_batches for g in mb.groups for i in g.sequences) == list(
        range(len(lengths))
    )
    first = {i for g in plan.micro_batches[0].groups for i in g.sequences}
    assert first == {0, 1}  # longest first, consecutive in length order


def test_passes_hold_more_than_memory_in_one_micro_batch():
    # the same batch with passes: one micro-batch, every pass within a GPU's memory, the
    # group's time paying its fixed cost once per pass, and faster than two micro-batches
    cost = synthetic_cost(2, tokens_per_gpu=1000)
    lengths = [900, 800, 600, 500, 400, 300]
    split = plan_batch(lengths, cost, dataclasses.replace(FAST, passes=False))
    plan = plan_batch(lengths, cost, FAST)
    validate_plan(plan, cost)
    (mb,) = plan.micro_batches
    assert plan.predicted_step_s < split.predicted_step_s
    assert any(len(g.pass_list) > 1 for g in mb.groups)
    for g in mb.groups:
        kind = cost.group_cost(g.size, g.softmax_strategy, g.linear_strategy)
        streams = [[lengths[i] for i in p] for p in g.pass_list]
        assert all(sum(s) <= kind.max_tokens for s in streams)
        want = len(streams) * kind.fixed_s + sum(kind.seq_time(x) for s in streams for x in s)
        assert g.predicted_s == pytest.approx(want, rel=1e-12)
        assert g.memory_bytes == pytest.approx(kind.memory(max(map(sum, streams))), rel=1e-12)
    assert mb.makespan_s == max(g.predicted_s for g in mb.groups)


def test_plans_with_passes_round_trip_and_bad_passes_are_refused():
    cost = synthetic_cost(2, tokens_per_gpu=1000)
    lengths = [900, 800, 600, 500, 400, 300]
    plan = plan_batch(lengths, cost, FAST)
    assert Plan.from_json(plan.to_json()) == plan
    (mb,) = plan.micro_batches
    k, g = next((k, g) for k, g in enumerate(mb.groups) if len(g.pass_list) > 1)
    groups = list(mb.groups)
    for passes, match in (
        ((g.passes[0], g.passes[0]), "must split its sequences"),
        ((*g.passes, ()), "must split its sequences"),
        ((tuple(i for p in g.passes for i in p),), "over the limit"),  # one pass: too big
    ):
        groups[k] = dataclasses.replace(g, passes=passes)
        bad = dataclasses.replace(
            plan, micro_batches=(dataclasses.replace(mb, groups=tuple(groups)),)
        )
        with pytest.raises(PlanError, match=match):
            validate_plan(bad, cost)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    world=st.integers(1, 9),
    tokens_per_gpu=st.integers(300, 3000),
    lengths=st.lists(st.integers(1, 2500), min_size=1, max_size=24),
    zero_stage=st.integers(0, 3),
    explicit=st.sampled_from([0, 2, 16]),
    softmax=st.sampled_from([("ulysses",), ("allgather_kv",), ("ulysses", "allgather_kv")]),
    shapes=st.sampled_from(["any", "power_of_two"]),
    node=st.sampled_from([2, 3, 4]),
    passes=st.booleans(),
)
def test_random_batches_always_get_valid_plans(
    world, tokens_per_gpu, lengths, zero_stage, explicit, softmax, shapes, node, passes
):
    if shapes == "power_of_two":
        node = 4
    elif world % node:
        node = world  # nodes must divide the world for any-size shapes
    cost = synthetic_cost(
        world,
        tokens_per_gpu,
        zero_stage=zero_stage,
        softmax_strategies=softmax,
        group_shapes=shapes,
        gpus_per_node=node,
    )
    options = dataclasses.replace(FAST, explicit_slots=explicit, passes=passes)
    biggest = cost.groups[cost.sizes[-1]].max_tokens
    if max(lengths) > biggest:
        with pytest.raises(ValueError, match=r"sequence \d+ \(\d+ tokens\) needs"):
            plan_batch(lengths, cost, options)
        return
    plan = plan_batch(lengths, cost, options)
    validate_plan(plan, cost)
    for mb in plan.micro_batches:
        assert mb.makespan_s >= mb.lower_bound_s * (1 - 1e-9)
        assert mb.makespan_s == max(g.predicted_s for g in mb.groups)
        for g in mb.groups:
            if g.sequences and g.size > 1 and g.softmax_strategy == "ulysses":
                assert g.size <= cost.model.num_heads
    assert plan.predicted_step_s >= cost.lower_bound(lengths) * (1 - 1e-9)


def _without_timings(plan) -> dict:
    raw = plan.to_dict()
    for mb in raw["micro_batches"]:
        mb["solver"]["solve_s"] = 0.0
    return raw


def test_same_batch_same_plan():
    cost = synthetic_cost(8, tokens_per_gpu=1500)
    rng = np.random.default_rng(3)
    lengths = [int(x) for x in rng.integers(10, 3000, 40)]
    options = PlannerConfig(time_limit_s=30.0, min_time_limit_s=30.0)  # finishes, no cut-off
    first, second = plan_batch(lengths, cost, options), plan_batch(lengths, cost, options)
    assert json.dumps(_without_timings(first)) == json.dumps(_without_timings(second))


@pytest.mark.parametrize(
    "lengths,match",
    [
        ([], "the batch is empty"),
        ([10, 0, 5], "sequence 1 has length 0"),
        ([10, -3], "sequence 1 has length -3"),
        ([10, 2.5], "sequence 1 has length 2.5"),
        ([10, 10**6], r"sequence 1 \(1000000 tokens\) needs .* GiB per GPU even on a group of 4"),
    ],
)
def test_bad_batches_raise_clear_errors(lengths, match):
    with pytest.raises(ValueError, match=match):
        plan_batch(lengths, synthetic_cost(4, 1000), FAST)


def test_world_size_zero_is_refused():
    profile = synthetic_profile()
    with pytest.raises(ValueError, match="num_gpus .* must be >= 1, got 0"):
        profile.topology(0)


def test_a_group_size_the_profile_lacks_is_refused():
    profile = dataclasses.replace(
        synthetic_profile(), intra_node=None, inter_node=None, collectives={}
    )
    with pytest.raises(ValueError, match="no all_to_all timing for groups of 2 ranks"):
        CostModel(profile, profile.topology(4))
    capped = CostModel(profile, profile.topology(4), max_group_size=1)
    assert capped.sizes == (1,)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_buckets=0), "num_buckets"),
        (dict(min_time_limit_s=0.0), "min_time_limit_s"),
        (dict(rel_gap=1.5), "rel_gap"),
        (dict(solver="gurobi"), "solver: got 'gurobi'; allowed values: auto, highs, cbc"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlannerConfig(**kwargs)


def test_round_floor_never_exceeds_the_step_budget():
    assert PlannerConfig(time_limit_s=0.01, min_time_limit_s=0.05).round_floor_s == 0.01
    assert PlannerConfig(time_limit_s=1.0, min_time_limit_s=0.05).round_floor_s == 0.05


@pytest.mark.parametrize("solver", ["highs", "cbc"])
@pytest.mark.parametrize("world,tokens_per_gpu,fit,lengths", [MIXED[1], MIXED[4]])
def test_both_solvers_give_the_optimum(solver, world, tokens_per_gpu, fit, lengths):
    cost = synthetic_cost(world, tokens_per_gpu, fit=fit)
    plan = plan_batch(lengths, cost, dataclasses.replace(EXACT, solver=solver))
    assert plan.predicted_step_s == pytest.approx(brute_force(lengths, cost), rel=1e-9)
    assert plan.micro_batches[0].solver.solver == solver
    assert plan.micro_batches[0].solver.status == "optimal"
