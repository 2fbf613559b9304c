"""The MILP's solver paths: time-limited solves, the CBC fall-back without highspy, and the
warm start HiGHS receives."""

from __future__ import annotations

import dataclasses

import highspy
import numpy as np
import pulp
import pytest

from hetero_sp.planner import (
    CostModel,
    PlannerConfig,
    assign,
    plan_batch,
    solve_microbatch,
    validate_plan,
)
from hetero_sp.planner.bucketing import bucket_lengths
from hetero_sp.planner.estimate import h100_estimate
from hetero_sp.planner.milp import _HiGHSWarm, make_solver, solve_milp
from hetero_sp.planner.plan import relative_gap
from hetero_sp.planner.simulate import DISTRIBUTIONS, sample_lengths
from hetero_sp.planner.solve import split_micro_batches
from hetero_sp.planner.solve_microbatch import StepBudget, _as_slots, _milp_input, _milp_makespan
from tests.planner_common import brute_force, synthetic_cost

EXACT = PlannerConfig(
    num_buckets=64, explicit_slots=64, rel_gap=0.0, time_limit_s=30.0, min_time_limit_s=30.0
)
# A tiny batch whose optimum mixes group sizes (slow links, 1692 tokens need two GPUs), so the
# MILP must run to reach it.
WORLD, TOKENS_PER_GPU, FIT = 4, 1000, dict(a2=0.0, intra_bw=1e7, inter_bw=1e6)
LENGTHS = [1692, 507, 754, 209, 397]


def _web_batch_on_64_gpus():
    profile = h100_estimate()
    cost = CostModel(profile, profile.topology(64), zero_stage=3)
    lengths = sample_lengths(
        DISTRIBUTIONS["web"], 256, np.random.default_rng(0), cost.groups[64].max_tokens
    )
    return lengths, cost


# 256 web-text lengths on 64 simulated H100s: with no gap tolerance the last micro-batch's MILP
# is still ~1% from its bound after 2 s here, so 0.5 s per round always cuts it off. Every round
# gets exactly that (StepBudget's sharing is tested in test_planner_budget.py): on a loaded
# machine the step's own deadline could pass before a round starts.
ROUND_S = 0.5
CUT_OFF = PlannerConfig(time_limit_s=0.2, min_time_limit_s=0.05, rel_gap=0.0)


def test_a_time_limited_solve_keeps_a_valid_plan_and_a_sound_bound(monkeypatch):
    monkeypatch.setattr(StepBudget, "milp_limit", lambda self, fraction: ROUND_S)
    lengths, cost = _web_batch_on_64_gpus()
    plan = plan_batch(lengths, cost, CUT_OFF)
    validate_plan(plan, cost)
    cut = [mb.solver for mb in plan.micro_batches if mb.solver.status == "time_limit"]
    assert cut, [mb.solver for mb in plan.micro_batches]
    for stats in cut:
        assert stats.solver == "highs"
        if stats.bound_s is None:  # HiGHS stopped before proving one (a very loaded machine)
            assert stats.gap is None
            continue
        # The bound may come from the first round and the objective from the second; both
        # rounds are solved to HiGHS's feasibility tolerance (1e-7 s on a load row).
        assert 0 <= stats.bound_s <= stats.objective_s * (1 + 1e-6)
        assert stats.gap == pytest.approx(relative_gap(stats.objective_s, stats.bound_s))
    assert any(stats.bound_s is not None for stats in cut), cut
    for mb in plan.micro_batches:
        assert mb.makespan_s == max(g.predicted_s for g in mb.groups)


def test_a_round_cut_before_its_bound_keeps_the_first_rounds(monkeypatch):
    """The second round (explicit slots) can be cut off before HiGHS proves a bound: the stats
    then keep the first round's bound, and the gap is measured against it (it was None)."""
    calls = []

    def solve(inp, *, explicit_slots, **kwargs):
        result = solve_milp(inp, explicit_slots=explicit_slots, **kwargs)
        if result is not None and explicit_slots:
            result = dataclasses.replace(result, bound=None)
        calls.append((explicit_slots, result))
        return result

    monkeypatch.setattr(solve_microbatch, "solve_milp", solve)
    monkeypatch.setattr(StepBudget, "milp_limit", lambda self, fraction: ROUND_S)
    lengths, cost = _web_batch_on_64_gpus()
    plan = plan_batch(lengths, cost, CUT_OFF)
    first_bounds = {r.bound for slots, r in calls if not slots and r is not None} - {None}
    second = {r.objective for slots, r in calls if slots and r is not None}
    checked = [mb.solver for mb in plan.micro_batches if mb.solver.objective_s in second]
    assert checked, calls
    for stats in checked:
        assert stats.bound_s in first_bounds
        assert stats.gap == pytest.approx(relative_gap(stats.objective_s, stats.bound_s))


def test_without_highspy_auto_falls_back_to_cbc(monkeypatch):
    monkeypatch.setattr(pulp.HiGHS, "available", lambda self: False)
    assert make_solver("auto", 1.0, 0.0, 1)[0] == "cbc"
    with pytest.raises(ValueError, match=r"solver 'highs' needs highspy .* or use 'cbc'"):
        make_solver("highs", 1.0, 0.0, 1)
    cost = synthetic_cost(WORLD, TOKENS_PER_GPU, fit=FIT)
    plan = plan_batch(LENGTHS, cost, EXACT)  # solver="auto"
    (mb,) = plan.micro_batches
    assert mb.solver.solver == "cbc"
    assert plan.predicted_step_s == pytest.approx(brute_force(LENGTHS, cost), rel=1e-9)


def _violation(lp: highspy.HighsLp, x: np.ndarray) -> float:
    """The largest bound, row or integrality violation of ``x`` in ``lp``."""
    a = lp.a_matrix_
    assert a.format_ == highspy.MatrixFormat.kColwise
    rows = np.zeros(lp.num_row_)
    for j in range(lp.num_col_):
        for p in range(a.start_[j], a.start_[j + 1]):
            rows[a.index_[p]] += a.value_[p] * x[j]
    lo_c, hi_c = np.asarray(lp.col_lower_), np.asarray(lp.col_upper_)
    lo_r, hi_r = np.asarray(lp.row_lower_), np.asarray(lp.row_upper_)
    integer = np.array([t == highspy.HighsVarType.kInteger for t in lp.integrality_], dtype=bool)
    if not len(integer):
        integer = np.zeros(lp.num_col_, dtype=bool)
    return float(
        max(
            np.max(np.maximum(lo_c - x, x - hi_c), initial=0.0),
            np.max(np.maximum(lo_r - rows, rows - hi_r), initial=0.0),
            np.max(np.abs(x - np.round(x))[integer], initial=0.0),
        )
    )


def test_highs_gets_the_homogeneous_plan_as_a_complete_feasible_start(monkeypatch):
    starts = []
    set_solution = highspy.Highs.setSolution

    def recording(self, start):
        # a dense solution: the (index, value) form would make HiGHS complete it by a MIP
        assert isinstance(start, highspy.HighsSolution) and start.value_valid
        status = set_solution(self, start)
        x = np.asarray(start.col_value, dtype=float)
        lp = self.getLp()
        starts.append((lp.num_col_, x, _violation(lp, x), x[np.flatnonzero(lp.col_cost_)], status))
        return status

    monkeypatch.setattr(highspy.Highs, "setSolution", recording)
    cost = synthetic_cost(WORLD, TOKENS_PER_GPU, fit=FIT)
    # Two rounds: every size aggregated first, then every size group by group.
    options = dataclasses.replace(EXACT, explicit_slots=4)
    plan = plan_batch(LENGTHS, cost, options)
    arr = np.asarray(LENGTHS)
    homogeneous = [assign.homogeneous(arr, cost, d, improve_rounds=0) for d in cost.sizes]
    mixed = assign.proportional(arr, cost, improve_rounds=0)
    warm = min(p.makespan for p in [*homogeneous, mixed] if p is not None)
    assert plan.micro_batches[0].solver.solver == "highs"
    assert starts, "HiGHS was never given a start"
    for num, x, violation, _, status in starts:
        assert num == len(x) and not np.isnan(x).any()  # every variable has a value
        assert status == highspy.HighsStatus.kOk
        # Row activities sum float loads in another order than the model's coefficients.
        assert violation <= 1e-9
    # The first round starts from the best homogeneous or proportional mixed layout (buckets
    # are exact here).
    assert starts[0][3] == pytest.approx([warm], rel=1e-9)


def test_with_almost_no_time_highs_returns_its_start():
    # HiGHS must take the start as the incumbent, not as a partial solution to complete: with
    # a millisecond it has no time to find a plan of its own for the first micro-batch of 256
    # web lengths at 64 GPUs.
    lengths, cost = _web_batch_on_64_gpus()
    arr = np.asarray(lengths)[split_micro_batches(lengths, cost)[0]]
    buckets = bucket_lengths(arr, 16, 0.05)
    means = tuple(int(round(float(np.mean(arr[list(m)])))) for m in buckets.members)
    bucket_of = np.empty(len(arr), dtype=np.int64)
    for k, members in enumerate(buckets.members):
        bucket_of[list(members)] = k
    rounded = np.asarray(means)[bucket_of]
    inp = _milp_input(cost, buckets, means)
    start = min(
        (p for p in (assign.homogeneous(rounded, cost, d, 0) for d in cost.sizes) if p is not None),
        key=lambda p: p.makespan,
    )
    slots = _as_slots(start, bucket_of, len(means))
    warm = _milp_makespan(slots, inp)
    got = [
        solve_milp(
            inp,
            upper_bound=warm * 1.5,
            warm=start_slots,
            explicit_slots=8,
            time_limit_s=1e-3,
            rel_gap=0.0,
            solver="highs",
        )
        for start_slots in (slots, None)
    ]
    assert got[0] is not None and got[0].objective <= warm * (1 + 1e-6)
    # without the start, the same millisecond finds nothing as good (the test would not show
    # the start was used otherwise)
    assert got[1] is None or got[1].objective > warm * (1 + 1e-6)


def _small_model() -> pulp.LpProblem:
    prob = pulp.LpProblem("bulk", pulp.LpMinimize)
    x = pulp.LpVariable("x", 0, 4, cat="Integer")
    y = pulp.LpVariable("y", cat="Binary")
    z = pulp.LpVariable("z", lowBound=-1.5)
    w = pulp.LpVariable("w", upBound=3.0)
    prob += 2 * x + 3 * y - z + 0.5 * w
    prob += x + y + z >= 1.25
    prob += x - 2 * w <= 2.0
    prob += y + z == 0.5
    prob += 0 * x + w <= 2.5  # a zero coefficient is left out of the matrix
    return prob


def test_the_bulk_model_build_matches_pulps_row_by_row_build():
    built = []
    for solver in (
        _HiGHSWarm(msg=False, timeLimit=10.0),
        pulp.HiGHS(msg=False, timeLimit=10.0),
    ):
        prob = _small_model()
        prob.solve(solver)
        lp = prob.solverModel.getLp()
        a = np.zeros((lp.num_row_, lp.num_col_))
        m = lp.a_matrix_
        for j in range(lp.num_col_):
            for p in range(m.start_[j], m.start_[j + 1]):
                a[m.index_[p], j] = m.value_[p]
        built.append(
            dict(
                cost=list(lp.col_cost_),
                col_lo=list(lp.col_lower_),
                col_up=list(lp.col_upper_),
                row_lo=list(lp.row_lower_),
                row_up=list(lp.row_upper_),
                integer=[t == highspy.HighsVarType.kInteger for t in lp.integrality_],
                matrix=a.tolist(),
                nonzeros=int(m.start_[lp.num_col_]),
                solution={v.name: v.varValue for v in prob.variables()},
                objective=pulp.value(prob.objective),
            )
        )
    ours, pulps = built
    assert ours == pulps
    assert ours["integer"] == [False, True, True, False]  # w, x, y, z: pulp sorts by name
    assert ours["nonzeros"] == 8  # 3 + 2 + 2 + 1: no zero stored
