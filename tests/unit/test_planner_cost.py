"""Cost model, topology, profile files and DP bucketing."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from hetero_sp.core.traffic import allgather_kv_bytes, lasp2_bytes, ulysses_bytes
from hetero_sp.planner.bucketing import bucket_lengths
from hetero_sp.planner.cluster import Link, Topology, node_patterns, place_groups
from hetero_sp.planner.cost import CostModel, ulysses_allowed
from hetero_sp.planner.estimate import h100_estimate
from hetero_sp.planner.memory import activation_bytes_per_token, count_params, model_state_bytes
from hetero_sp.planner.profile import Profile, load_profile, save_profile
from tests.common import tiny_config, tiny_model
from tests.planner_common import synthetic_cost, synthetic_profile

PROFILES = Path(__file__).resolve().parents[2] / "configs" / "profiles"


@pytest.mark.parametrize(
    "overrides", [{}, {"tie_embeddings": True}, {"linear_decay": False}, {"num_kv_heads": 4}]
)
def test_parameter_count_matches_the_model(overrides):
    model = tiny_model("LLS", **overrides)
    assert count_params(model.cfg) == sum(p.numel() for p in model.parameters())


def test_model_states_by_zero_stage():
    # fp32: Adam m, v = 8 bytes, gradient 4, parameter 4; stage s shards the first s of those.
    assert model_state_bytes(100, 0, 4, "fp32") == 1600
    assert model_state_bytes(100, 1, 4, "fp32") == 100 * (8 / 4 + 4 + 4)
    assert model_state_bytes(100, 2, 4, "fp32") == 100 * (8 / 4 + 4 / 4 + 4)
    assert model_state_bytes(100, 3, 4, "fp32") == 100 * 16 / 4
    # bf16 adds fp32 master weights to the optimizer states.
    assert model_state_bytes(100, 0, 4, "bf16") == 100 * (12 + 2 + 2)
    with pytest.raises(ValueError, match="zero_stage must be"):
        model_state_bytes(100, 4, 4, "fp32")


def test_ulysses_head_limit_shapes_the_allowed_sizes():
    # 4 query heads: any group of at most 4 ranks, heads split unevenly on 3
    assert [d for d in (1, 2, 3, 4, 5, 8) if ulysses_allowed(tiny_config(), d)] == [1, 2, 3, 4]
    only_ulysses = synthetic_cost(8, softmax_strategies=("ulysses",))
    assert only_ulysses.sizes == (1, 2, 3, 4)
    both = synthetic_cost(8)
    assert both.sizes == (1, 2, 3, 4, 8) and both.groups[8].softmax_strategy == "allgather_kv"
    linear_only = synthetic_cost(8, layers="LL", softmax_strategies=("ulysses",))
    assert linear_only.sizes == (1, 2, 3, 4, 8)  # no softmax layer, no head limit
    pow2 = synthetic_cost(8, group_shapes="power_of_two")
    assert pow2.sizes == (1, 2, 4, 8)


def test_uneven_ulysses_prices_the_busiest_rank():
    # 4 query heads on 3 ranks: 1, 1, 2; the busiest holds half the attention's quadratic work
    ulysses = synthetic_cost(4, softmax_strategies=("ulysses",), layers="S")
    gather = synthetic_cost(4, softmax_strategies=("allgather_kv",), layers="S")
    a2 = ulysses.profile.compute["S"].a2
    assert ulysses.groups[3].per_token2_s == pytest.approx(a2 * 2 / 4, rel=1e-12)
    assert gather.groups[3].per_token2_s == pytest.approx(a2 / 3, rel=1e-12)
    assert ulysses.groups[4].per_token2_s == pytest.approx(a2 / 4, rel=1e-12)


@pytest.mark.parametrize("strategy", ["ulysses", "allgather_kv"])
def test_softmax_traffic_comes_from_the_shared_formulas(strategy):
    cost = synthetic_cost(4, fit=dict(a2=0.0), softmax_strategies=(strategy,), layers="S")
    g, m, prof = cost.groups[4], cost.model, cost.profile
    tokens_per_rank = 4096
    if strategy == "ulysses":
        cb = ulysses_bytes(tokens_per_rank, 4, m.num_heads, m.num_kv_heads, m.head_dim, 4)
    else:
        cb = allgather_kv_bytes(tokens_per_rank, 4, m.num_kv_heads, m.head_dim, 4)
    compute = (prof.compute["S"].a1 + prof.compute["head"].a1) / 4
    comm = (cb.fwd_send + cb.bwd_send) / prof.intra_node.bandwidth_Bps
    stream = 4 * tokens_per_rank
    assert g.softmax_strategy == strategy
    assert g.per_token_s * stream == pytest.approx(compute * stream + comm, rel=1e-12)


def test_linear_state_exchange_is_a_fixed_cost():
    cost = synthetic_cost(4, layers="L", linear_strategies=("lasp2",))
    m, prof = cost.model, cost.profile
    one, two = cost.groups[1], cost.groups[4]
    state = lasp2_bytes(4, m.num_heads, m.head_dim, m.head_dim, 4).fwd_send
    exchange = 2 * prof.intra_node.time(state)
    pad = 3 * two.per_token_s  # a group of 4 pads its stream by up to 3 tokens
    assert two.fixed_s == pytest.approx(one.fixed_s + exchange + pad, rel=1e-12)
    assert two.per_token_s == pytest.approx(one.per_token_s / 4, rel=1e-12)


def test_memory_per_gpu():
    cost = synthetic_cost(4, tokens_per_gpu=1000, softmax_strategies=("ulysses",))
    act = activation_bytes_per_token(cost.model, 4)
    g = cost.groups[2]
    assert g.memory(1000) == pytest.approx(cost.state_bytes + act * (1000 + 1) / 2)
    assert g.max_tokens == 1999  # 2 GPUs of 1000 tokens, less one padding token
    gathered = synthetic_cost(4, tokens_per_gpu=1000, softmax_strategies=("allgather_kv",))
    extra = 2 * cost.model.num_kv_heads * cost.model.head_dim * 4 * (2 - 1) / 2  # one S layer
    assert gathered.groups[2].mem_per_token_bytes == pytest.approx(act / 2 + extra)


def test_model_states_that_do_not_fit_are_refused():
    profile = synthetic_profile()
    with pytest.raises(ValueError, match="model states alone need .* raise the ZeRO stage"):
        CostModel(profile, profile.topology(2, gpu_memory_bytes=1000))


def test_profile_of_another_model_is_refused():
    with pytest.raises(ValueError, match=r"measured with model.dim=32.*re-run `hetero-sp profile`"):
        CostModel(synthetic_profile(), Topology(num_gpus=2), model=tiny_config(dim=64))


def test_topology_group_sizes_and_blocks():
    pow2 = dict(group_shapes="power_of_two")
    assert Topology(num_gpus=8, **pow2).group_sizes() == (1, 2, 4, 8)
    assert Topology(num_gpus=6, gpus_per_node=6, **pow2).group_sizes() == (1, 2, 4, 6)
    assert Topology(num_gpus=8, **pow2).group_sizes(max_size=2) == (1, 2)
    topo = Topology(num_gpus=6, gpus_per_node=6, **pow2)
    assert topo.is_valid_block((4, 5)) and topo.is_valid_block(tuple(range(6)))
    assert not topo.is_valid_block((2, 3, 4, 5)) and not topo.is_valid_block((1, 2))
    with pytest.raises(ValueError, match="gpus_per_node must be a power of two"):
        Topology(num_gpus=12, gpus_per_node=6, **pow2)
    # any: every size inside a node, whole nodes above it
    any_ = Topology(num_gpus=12, gpus_per_node=6)
    assert any_.group_sizes() == (1, 2, 3, 4, 5, 6, 12)
    assert any_.group_sizes(max_size=5) == (1, 2, 3, 4, 5)
    assert any_.is_valid_block((1, 2, 3)) and any_.is_valid_block((6, 7, 8, 9, 10))
    assert not any_.is_valid_block((4, 5, 6)) and not any_.is_valid_block((3, 4, 5, 6, 7, 8, 9))
    assert [any_.max_groups(d) for d in (1, 2, 4, 5, 6, 12)] == [12, 6, 2, 2, 2, 1]
    assert Topology(num_gpus=24, gpus_per_node=8).group_sizes()[-3:] == (8, 16, 24)
    with pytest.raises(ValueError, match=r"gpus_per_node \(8\) must divide num_gpus \(12\)"):
        Topology(num_gpus=12, gpus_per_node=8)
    with pytest.raises(ValueError, match="group_shapes 'square' is unknown"):
        Topology(num_gpus=4, group_shapes="square")


def test_groups_are_placed_inside_nodes_or_on_whole_nodes():
    topo = Topology(num_gpus=16, gpus_per_node=8)
    assert topo.needs_node_packing((1, 3, 4)) and not topo.needs_node_packing((1, 2, 4, 8))
    sizes = [5, 3, 3, 3, 2]
    firsts = place_groups(sizes, topo)
    spans = sorted((f, f + d - 1) for f, d in zip(firsts, sizes))
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # no overlap
    assert all(topo.is_valid_block(range(f, f + d)) for f, d in zip(firsts, sizes))
    # nodes of 10: first fit decreasing gives 5+4 | 3+3+3 and no room for the 2; the search
    # finds 5+3+2 | 4+3+3
    tens = Topology(num_gpus=20, gpus_per_node=10)
    sizes = [5, 4, 3, 3, 3, 2]
    firsts = place_groups(sizes, tens)
    assert firsts is not None
    assert all(tens.is_valid_block(range(f, f + d)) for f, d in zip(firsts, sizes))
    assert place_groups([5, 5, 5], topo) is None  # 15 GPUs of 16, but no node holds two 5s
    assert place_groups([16], topo) == [0] and place_groups([8, 3, 5], topo) is not None
    # patterns of one node of 8 with groups of 3 and 5: the maximal fillings
    assert set(node_patterns(8, (3, 5))) == {(2, 0), (1, 1)}


def test_all_to_all_across_nodes_splits_over_both_links():
    intra, inter = Link(latency_s=0, bandwidth_Bps=8.0), Link(latency_s=1.0, bandwidth_Bps=1.0)
    topo = Topology(num_gpus=16, gpus_per_node=4, intra_node=intra, inter_node=inter)
    assert topo.derived_link("all_to_all", 4) == intra
    link = topo.derived_link("all_to_all", 16)  # 3 of 15 peers local, 12 remote
    assert link.latency_s == 1.0
    assert 1 / link.bandwidth_Bps == pytest.approx(max(3 / 15 / 8.0, 12 / 15 / 1.0))
    assert topo.derived_link("all_gather", 8) == inter


def test_profile_json_round_trip(tmp_path):
    profile = synthetic_profile()
    save_profile(profile, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json") == profile


def test_bad_profiles_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(tmp_path / "bad.json")
    raw = synthetic_profile().to_dict()
    del raw["compute"]["S"]
    with pytest.raises(ValueError, match=r"no compute fit for layer kinds \['S'\]"):
        Profile.from_dict(raw)
    with pytest.raises(ValueError, match="must say where its numbers come from"):
        dataclasses.replace(synthetic_profile(), source="estimate", notes={})


def test_shipped_h100_estimate_is_the_documented_derivation():
    shipped = json.loads((PROFILES / "h100x8-estimate.json").read_text())
    assert shipped == json.loads(json.dumps(h100_estimate().to_dict()))
    assert shipped["source"] == "estimate" and "ESTIMATE" in shipped["notes"]["source"]


def test_shipped_cpu_profile_plans_up_to_its_measured_sizes():
    profile = load_profile(PROFILES / "cpu-gloo.json")
    assert profile.source == "measured"
    assert set(profile.collectives["all_to_all"]) == {2, 4}
    for fit in profile.compute.values():
        assert fit.max_rel_err is not None and len(fit.samples) >= 3
    # 3 is interpolated between the measured 2 and 4
    cost = CostModel(profile, profile.topology(4))
    assert cost.sizes == (1, 2, 3, 4)
    two, three, four = (cost.link("all_to_all", d) for d in (2, 3, 4))
    assert two.latency_s < three.latency_s < four.latency_s or (
        two.latency_s > three.latency_s > four.latency_s
    )
    assert 1 / three.bandwidth_Bps == pytest.approx(
        (1 / two.bandwidth_Bps + 1 / four.bandwidth_Bps) / 2
    )
    with pytest.raises(ValueError, match="groups of 8 ranks"):
        CostModel(profile, profile.topology(8))


def _brute_bucketing(lengths, k):
    distinct = sorted(set(lengths))
    best = None
    for cut_count in range(min(k, len(distinct))):
        for cuts in itertools.combinations(range(1, len(distinct)), cut_count):
            edges = [0, *cuts, len(distinct)]
            tops = [distinct[b - 1] for b in edges[1:]]
            added = sum(next(t for t in tops if t >= s) - s for s in lengths)
            best = added if best is None else min(best, added)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_bucketing_is_optimal(seed, k):
    import random

    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 9))]
    buckets = bucket_lengths(lengths, k)
    assert buckets.added_tokens == _brute_bucketing(lengths, k)
    assert len(buckets.values) <= k
    assert sorted(i for m in buckets.members for i in m) == list(range(len(lengths)))
    for value, members in zip(buckets.values, buckets.members):
        assert value == max(lengths[i] for i in members)
    assert buckets.token_error == buckets.added_tokens / sum(lengths)


def test_bucketing_edges():
    assert bucket_lengths([5, 5, 7], 16).added_tokens == 0
    assert bucket_lengths([3, 9], 1).values == (9,)
    with pytest.raises(ValueError, match="max_buckets must be >= 1"):
        bucket_lengths([1], 0)
    with pytest.raises(ValueError, match="empty batch"):
        bucket_lengths([], 4)
