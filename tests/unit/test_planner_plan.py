"""Plans as data: JSON round trip, and validation catching every kind of broken plan."""

from __future__ import annotations

import dataclasses

import pytest

from hetero_sp.planner import Plan, PlanError, PlannerConfig, plan_batch, validate_plan
from hetero_sp.planner.plan import GroupPlan
from tests.planner_common import synthetic_cost

# passes off: the fixture plan needs two micro-batches
FAST = PlannerConfig(time_limit_s=0.3, min_time_limit_s=0.05, passes=False)


@pytest.fixture(scope="module")
def cost():
    return synthetic_cost(4, tokens_per_gpu=1000)


@pytest.fixture(scope="module")
def plan(cost):
    # Two micro-batches: 4400 tokens, 4 GPUs holding 1000 each.
    return plan_batch([1500, 1200, 700, 300, 300, 200, 100, 60, 40], cost, FAST)


def _with_groups(plan: Plan, groups, mb: int = 0) -> Plan:
    mbs = list(plan.micro_batches)
    mbs[mb] = dataclasses.replace(mbs[mb], groups=tuple(groups))
    return dataclasses.replace(plan, micro_batches=tuple(mbs))


def _group(ranks, sequences=(), plan=None, **kw) -> GroupPlan:
    tokens = sum(plan.lengths[i] for i in sequences) if plan else 0
    fields = dict(
        ranks=tuple(ranks),
        sequences=tuple(sequences),
        softmax_strategy="ulysses",
        linear_strategy="lasp2",
        tokens=tokens,
        predicted_s=0.0,
        memory_bytes=0.0,
    )
    fields.update(kw)
    return GroupPlan(**fields)


def test_plan_covers_every_rank_and_sequence(plan, cost):
    validate_plan(plan, cost)
    assert len(plan.micro_batches) == 2
    for mb in plan.micro_batches:
        assert sorted(r for g in mb.groups for r in g.ranks) == [0, 1, 2, 3]
        for rank in range(4):
            assert rank in mb.group_of(rank).ranks
    seqs = sorted(i for mb in plan.micro_batches for g in mb.groups for i in g.sequences)
    assert seqs == list(range(len(plan.lengths)))
    assert plan.predicted_step_s == sum(mb.makespan_s for mb in plan.micro_batches)


def test_json_round_trip(plan):
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.to_json() == plan.to_json()


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else"}', "not a plan"),
        ('{"format": "hetero-sp-plan/1", "world_size": 2}', "missing or has a bad field"),
    ],
)
def test_bad_json_is_refused(text, match):
    with pytest.raises(PlanError, match=match):
        Plan.from_json(text)


def _twice(plan: Plan) -> Plan:
    """The last sequence of micro-batch 1 also runs in a busy group of micro-batch 0."""
    mb0, mb1 = plan.micro_batches
    extra = next(g for g in mb1.groups if g.sequences).sequences[-1]
    groups = list(mb0.groups)
    k = next(k for k, g in enumerate(groups) if g.sequences)
    groups[k] = dataclasses.replace(
        groups[k],
        sequences=(*groups[k].sequences, extra),
        tokens=groups[k].tokens + plan.lengths[extra],
    )
    return _with_groups(plan, groups)


def _broken(plan: Plan) -> dict[str, tuple[Plan, str]]:
    """One broken variant of a valid plan per kind of mistake, with the expected message."""
    mb0 = plan.micro_batches[0]
    first = mb0.groups[0]
    idle = [_group((r,)) for r in range(4)]
    everything = tuple(i for g in mb0.groups for i in g.sequences)
    return {
        "rank twice": (
            _with_groups(plan, [*mb0.groups, dataclasses.replace(mb0.groups[-1], sequences=())]),
            "rank .* is also in group",
        ),
        "not consecutive": (
            _with_groups(plan, [_group((0, 2), everything, plan), _group((1,)), _group((3,))]),
            "must be consecutive ranks",
        ),
        "outside world": (
            _with_groups(plan, [*idle[:3], _group((4,), everything, plan)]),
            "consecutive ranks of the world of 4",
        ),
        "missing rank": (
            _with_groups(plan, list(mb0.groups)[:-1] if len(mb0.groups) > 1 else []),
            "in no group",
        ),
        "sequence twice": (_twice(plan), "already runs"),
        "sequence lost": (
            _with_groups(
                plan, [dataclasses.replace(g, sequences=(), tokens=0) for g in mb0.groups]
            ),
            "run in no micro-batch",
        ),
        "index outside batch": (
            _with_groups(plan, [_group((0, 1, 2, 3), (*everything, 99), plan=None, tokens=0)]),
            "outside the batch",
        ),
        "unknown strategy": (
            _with_groups(
                plan, [dataclasses.replace(first, softmax_strategy="ring"), *mb0.groups[1:]]
            ),
            "softmax strategy 'ring' unknown",
        ),
        "tokens mismatch": (
            _with_groups(
                plan, [dataclasses.replace(first, tokens=first.tokens + 1), *mb0.groups[1:]]
            ),
            "says .* tokens",
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "rank twice",
        "not consecutive",
        "outside world",
        "missing rank",
        "sequence twice",
        "sequence lost",
        "index outside batch",
        "unknown strategy",
        "tokens mismatch",
    ],
)
def test_validation_catches(plan, cost, kind):
    broken, match = _broken(plan)[kind]
    with pytest.raises(PlanError, match=match):
        validate_plan(broken, cost)
    with pytest.raises(PlanError, match=match):
        validate_plan(broken)


@pytest.mark.parametrize(
    "shapes, node, ranks, match",
    [
        ("power_of_two", 4, (1, 2), "aligned power-of-two block"),
        ("power_of_two", 4, (0, 1, 2), "aligned power-of-two block"),
        ("any", 2, (1, 2), "inside one node of 2 ranks, or whole nodes"),
    ],
)
def test_validation_checks_the_group_shapes(plan, shapes, node, ranks, match):
    cost = synthetic_cost(4, tokens_per_gpu=1000, group_shapes=shapes, gpus_per_node=node)
    everything = tuple(i for g in plan.micro_batches[0].groups for i in g.sequences)
    rest = [_group((r,)) for r in range(4) if r not in ranks]
    broken = _with_groups(plan, sorted([*rest, _group(ranks, everything, plan)], key=_first))
    with pytest.raises(PlanError, match=match):
        validate_plan(broken, cost)
    validate_plan(broken)  # without a cluster, any consecutive ranks pass


def _first(group: GroupPlan) -> int:
    return group.ranks[0]


def test_validation_catches_memory_over_the_limit(plan, cost):
    mb0 = plan.micro_batches[0]
    busy = next(g for g in mb0.groups if g.sequences)
    # Trusted numbers (no cost model): the plan's own memory figure is checked.
    heavy = dataclasses.replace(busy, memory_bytes=plan.memory_limit_bytes * 2)
    broken = _with_groups(plan, [heavy if g is busy else g for g in mb0.groups])
    with pytest.raises(PlanError, match="over the limit"):
        validate_plan(broken)
    # With the cost model the memory is recomputed: all sequences on one GPU cannot fit.
    everything = tuple(i for g in mb0.groups for i in g.sequences)
    crammed = _with_groups(
        plan, [_group((0,), everything, plan), *[_group((r,)) for r in (1, 2, 3)]]
    )
    with pytest.raises(PlanError, match="over the limit"):
        validate_plan(crammed, cost)


def test_validation_catches_ulysses_beyond_the_head_limit():
    cost = synthetic_cost(8, tokens_per_gpu=1000)  # 4 query heads: Ulysses up to 4 ranks
    plan = plan_batch([500, 400], cost, FAST)
    group = _group(tuple(range(8)), (0, 1), plan, softmax_strategy="ulysses")
    with pytest.raises(PlanError, match="at least one of num_heads=4 per rank, the group has 8"):
        validate_plan(_with_groups(plan, [group]), cost)
    validate_plan(
        _with_groups(plan, [dataclasses.replace(group, softmax_strategy="allgather_kv")]), cost
    )


def test_plan_for_another_world_is_refused(plan):
    with pytest.raises(PlanError, match="the plan is for 4 ranks, the cluster has 8"):
        validate_plan(plan, synthetic_cost(8, tokens_per_gpu=1000))


def test_empty_plan_is_refused(plan):
    with pytest.raises(PlanError, match="at least one micro-batch"):
        validate_plan(dataclasses.replace(plan, micro_batches=()))
