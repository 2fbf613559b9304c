"""Bucketing under a token-error target: the fewest buckets that meet it (optimal for that
count), capped; the error reaches the plan's solver stats; the option is wired from the
config."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from hetero_sp.config import ConfigError, load_config
from hetero_sp.engine.plan_modes import make_plan_fn
from hetero_sp.planner import Planner, PlannerConfig, plan_batch
from hetero_sp.planner.bucketing import bucket_lengths
from hetero_sp.planner.simulate import DISTRIBUTIONS, sample_lengths
from tests.planner_common import synthetic_cost


def _long_tailed(num: int, seed: int) -> list[int]:
    return sample_lengths(DISTRIBUTIONS["web"], num, np.random.default_rng(seed), 100_000)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("target", [0.1, 0.05, 0.02])
def test_the_fewest_buckets_under_the_error_target(seed, target):
    lengths = _long_tailed(300, seed)
    got = bucket_lengths(lengths, 200, target, min_buckets=4)
    k = len(got.values)
    assert got.token_error <= target
    # Optimal for its count, and one bucket fewer would miss the target.
    assert got.added_tokens == bucket_lengths(lengths, k).added_tokens
    assert k == 4 or bucket_lengths(lengths, k - 1).token_error > target
    assert sorted(i for m in got.members for i in m) == list(range(len(lengths)))


def test_the_target_adds_buckets_only_beyond_the_minimum_and_up_to_the_cap():
    lengths = _long_tailed(300, 0)
    sixteen = bucket_lengths(lengths, 16)
    assert sixteen.token_error > 0.05  # 16 buckets miss the target on this batch
    assert bucket_lengths(lengths, 64, 0.5, min_buckets=16) == sixteen  # met already
    capped = bucket_lengths(lengths, 20, 1e-6, min_buckets=16)
    assert len(capped.values) == 20 and capped.token_error > 1e-6
    assert bucket_lengths(lengths, 16, 0.0, min_buckets=4) == sixteen  # 0: target off
    assert bucket_lengths([7, 7, 3], 64, 0.01, min_buckets=16).values == (3, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_error=1.0), r"max_error must be in \[0, 1\), got 1.0"),
        (dict(max_error=-0.1), r"max_error must be in \[0, 1\)"),
        (dict(min_buckets=0), r"min_buckets must be in \[1, max_buckets=8\], got 0"),
        (dict(min_buckets=9), r"min_buckets must be in \[1, max_buckets=8\], got 9"),
    ],
)
def test_bad_bucketing_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bucket_lengths([1, 2, 3], 8, **kwargs)


def test_the_plan_reports_the_token_error_it_planned_with():
    cost = synthetic_cost(8, tokens_per_gpu=200_000)
    lengths = _long_tailed(400, 1)
    fast = PlannerConfig(time_limit_s=0.3, min_time_limit_s=0.05)
    for target in (0.0, 0.05, 0.02):
        options = dataclasses.replace(fast, max_bucket_error=target)
        plan = plan_batch(lengths, cost, options)
        for mb in plan.micro_batches:
            sub = [lengths[i] for g in mb.groups for i in g.sequences]
            want = bucket_lengths(sub, options.bucket_cap, target, options.num_buckets)
            assert mb.solver.num_buckets == len(want.values)
            assert mb.solver.token_error == want.token_error
            if target:
                assert mb.solver.token_error <= target or mb.solver.num_buckets == 64
            else:
                assert mb.solver.num_buckets == 16 and mb.solver.token_error > 0.05


def test_bad_options_and_config_are_refused():
    # One dataclass: built in Python or from TOML, the same check and the same message.
    with pytest.raises(ConfigError, match=r"planner\.max_bucket_error: must be in \[0, 1\)"):
        PlannerConfig(max_bucket_error=1.5)
    with pytest.raises(ConfigError, match=r"planner\.max_bucket_error: must be in \[0, 1\)"):
        load_config(None, ["planner.max_bucket_error=1.5"])
    with pytest.raises(ConfigError, match=r"planner\.solver: got 'scip'; allowed values: auto"):
        load_config(None, ["planner.solver=scip"])


def test_every_solver_option_is_settable_from_toml():
    keys = {
        "rel_gap": 0.01,
        "explicit_slots": 4,
        "improve_rounds": 7,
        "solver": "cbc",
        "threads": 2,
        "min_time_limit_s": 0.2,
    }
    cfg = load_config(None, [f"planner.{k}={v!r}".replace("'", '"') for k, v in keys.items()])
    planner = make_plan_fn(cfg, synthetic_cost(4, 1000))
    assert planner.options is cfg.planner
    for key, value in keys.items():
        assert getattr(planner.options, key) == value, key


def test_the_config_value_reaches_the_planner():
    cfg = load_config(None, ["planner.max_bucket_error=0.125"])
    plan_fn = make_plan_fn(cfg, synthetic_cost(4, 1000))
    planner = plan_fn  # the hetero mode's plan function is the Planner itself
    assert isinstance(planner, Planner)
    assert pickle.loads(pickle.dumps(plan_fn)).options == planner.options
    assert planner.options.max_bucket_error == 0.125
    assert planner.options.bucket_cap == 4 * cfg.planner.num_buckets


def test_many_distinct_lengths_are_merged_before_the_dp_and_stay_exact_upper_bounds():
    from hetero_sp.planner.bucketing import MAX_UNITS

    rng = np.random.default_rng(3)
    lengths = [int(x) for x in np.exp(rng.uniform(np.log(16), np.log(300_000), 3000))]
    assert len(set(lengths)) > 4 * MAX_UNITS
    got = bucket_lengths(lengths, 64, max_error=0.05, min_buckets=16)
    arr = np.asarray(lengths)
    # Every sequence is in one bucket whose value is at least its length and is the bucket's
    # longest; the reported error is the true one and meets the target.
    assert sorted(i for m in got.members for i in m) == list(range(len(lengths)))
    for value, members in zip(got.values, got.members):
        assert value == arr[list(members)].max()
    added = sum(v * len(m) - arr[list(m)].sum() for v, m in zip(got.values, got.members))
    assert added == got.added_tokens and got.token_error <= 0.05
