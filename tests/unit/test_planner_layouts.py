"""The proportional mixed layout (warm start, fall-back and split estimate of the planner) with
a makespan target: the work-cheapest kind of a long document can run it far slower than a
bigger group, so where the longest document sets the makespan, targets at its times on faster
kinds are tried too."""

from __future__ import annotations

import numpy as np
import pytest

from hetero_sp.planner import CostModel, assign
from hetero_sp.planner.estimate import h100_estimate
from hetero_sp.planner.simulate import DISTRIBUTIONS, sample_lengths


@pytest.fixture(scope="module")
def cost_256():
    profile = h100_estimate()
    return CostModel(profile, profile.topology(256), zero_stage=3)


def _check_layout(pack, lengths):
    assert sorted(np.flatnonzero(pack.where >= 0)) == list(range(len(lengths)))
    assert np.all(pack.tokens <= pack.cap)
    assert sum(pack.sizes) <= pack.cost.topology.num_gpus


def _longest_group(pack, lengths):
    return pack.sizes[int(pack.where[int(np.argmax(lengths))])]


def test_a_target_puts_the_longest_document_on_a_bigger_group(cost_256):
    lengths = np.array([300_000, 60_000, 40_000, 20_000, 10_000, 5_000])
    plain = assign.proportional(lengths, cost_256, 0)
    best = assign.proportional_best(lengths, cost_256, 0)
    _check_layout(plain, lengths)
    _check_layout(best, lengths)
    # work-cheapest: 32 GPUs for the 300K document, which then takes 2.6 s; a target moves it
    # to a bigger group (1.65 s here) while the rest keep small ones
    assert _longest_group(plain, lengths) == 32
    assert _longest_group(best, lengths) > 32
    assert best.makespan < 0.7 * plain.makespan


def test_no_target_is_tried_where_the_longest_does_not_set_the_makespan(cost_256, monkeypatch):
    lengths = np.full(512, 4_000)
    calls = []
    layout = assign.proportional

    def counting(*args, **kwargs):
        calls.append(kwargs.get("cap_s"))
        return layout(*args, **kwargs)

    monkeypatch.setattr(assign, "proportional", counting)
    best = assign.proportional_best(lengths, cost_256, 0)
    assert calls == [None]
    assert best.makespan == pytest.approx(layout(lengths, cost_256, 0).makespan)


def test_a_cap_the_gpus_cannot_meet_gives_no_layout_and_the_best_keeps_the_plain_one(cost_256):
    # cap 0: every sequence may only use its fastest kind, the biggest groups, which do not fit
    # side by side
    lengths = np.array([300_000, 100_000])
    assert assign.proportional(lengths, cost_256, 0, cap_s=0.0) is None
    plain = assign.proportional(lengths, cost_256, 0)
    best = assign.proportional_best(lengths, cost_256, 0)
    _check_layout(best, lengths)
    assert best.makespan <= plain.makespan


@pytest.mark.parametrize("num_gpus", [8, 64])
@pytest.mark.parametrize("seed", range(3))
def test_the_heap_placement_with_passes_places_as_the_general_one(num_gpus, seed):
    # Single-kind layouts with passes place by a heap over identical groups; every sequence
    # must land where the general longest-first placement (numpy over all groups) puts it.
    profile = h100_estimate()
    cost = CostModel(profile, profile.topology(num_gpus), zero_stage=1)
    rng = np.random.default_rng(seed)
    lengths = np.asarray(
        sample_lengths(DISTRIBUTIONS["code"], int(rng.integers(50, 600)), rng, cost.capacity(8))
    )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    kinds = [k for k in cost.kinds if k.max_tokens >= lengths.max()][::4]
    assert kinds
    for kind in kinds:
        groups = [kind] * cost.topology.max_groups(kind.size)
        general = assign.Packing(lengths, cost, groups, passes=True)
        assert general.lpt(order) == []
        heap = assign._lpt_identical_passes(
            assign.Packing(lengths, cost, groups, passes=True), order
        )
        np.testing.assert_array_equal(heap.where, general.where)
        assert heap.makespan == pytest.approx(general.makespan, rel=1e-12)
