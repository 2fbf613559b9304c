"""The MILP over bucket counts: how many groups of each size, which buckets run where, and the
makespan C to minimise. Built with pulp; solved by HiGHS through highspy where installed, CBC
otherwise (:func:`make_solver` is the only place a solver is named).

Group sizes with few possible groups (at most ``explicit_slots``: the big ones) get one slot per
possible group, each with its own bucket counts, load <= C and memory limit: exact. Sizes with
many possible groups (the small ones, which run the many short sequences) are aggregated: a
group count n_d and bucket counts y_kd, whose load must fit n_d groups of capacity C. The product
n_d * C is linearised through the binary expansion of n_d; packing the class's sequences into
its n_d groups is left to :mod:`hetero_sp.planner.assign`, so the class is "fluid" here. Cuts
keep the fluid classes honest: a bucket may use a class only if one item fits under C; and
items too big (in time or memory) for m + 1 to share a group are at most m per group. A total
work cut (sum of GPU-seconds <= N * C) makes the LP bound at least total work / GPUs.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pulp

from hetero_sp.core.errors import UserError
from hetero_sp.core.names import Solver, values
from hetero_sp.planner.cluster import Topology, node_patterns, place_groups

SOLVERS = values(Solver)


@dataclass(frozen=True)
class MilpInput:
    num_gpus: int
    sizes: tuple[int, ...]
    """Per group kind (a size and a strategy pair; ``CostModel.kinds``): its size. A size may
    appear once per strategy pair worth deciding, so the pair is a decision of the model."""
    fixed_s: tuple[float, ...]
    """Per kind: a group's fixed time."""
    max_tokens: tuple[int, ...]
    """Per kind: stream tokens a group can hold."""
    values: tuple[int, ...]
    """Per bucket: its longest sequence (whether one sequence fits a group's memory)."""
    tokens: tuple[int, ...]
    """Per bucket: its mean length, the tokens one of its sequences adds to a group's stream."""
    counts: tuple[int, ...]
    """Per bucket: sequences in it."""
    times: np.ndarray
    """[bucket, kind]: seconds one sequence of the bucket takes on a group of the kind."""
    max_groups: tuple[int, ...] = ()
    """Per kind: groups of its size the cluster holds at once (default: GPUs // size)."""
    node: int = 0
    """Ranks per node when groups of a size that does not divide it may share nodes, so which
    counts fit is a packing question (node patterns); 0: any counts whose GPUs add up fit."""
    passes: bool = False
    """Groups may run several passes: a group's tokens must fit its passes times its capacity,
    and each pass pays the fixed time (a relaxation of packing sequences into passes, which
    the assignment does for real)."""


@dataclass(frozen=True)
class SlotCounts:
    """One group of the solution: its size and kind (an index into ``MilpInput.sizes``) and how
    many sequences of each bucket it runs."""

    size: int
    counts: tuple[int, ...]
    kind: int
    passes: int = 1
    """Passes the group runs (each pays the kind's fixed time)."""


@dataclass(frozen=True)
class MilpResult:
    groups: tuple[SlotCounts, ...]
    """Groups of the exactly modelled (explicit) sizes."""
    fluid: tuple[tuple[int, int, tuple[int, ...]], ...]
    """(kind, number of groups, bucket counts of the whole class) of the aggregated kinds."""
    objective: float
    bound: float | None
    """The solver's proven lower bound on ``objective``; None when it stopped before one."""
    status: str
    solver: str
    solve_s: float


class _HiGHSWarm(pulp.HiGHS):
    """pulp's HiGHS API, handing the model to HiGHS in bulk and the variables' initial values
    as a MIP start."""

    def buildSolverModel(self, lp):  # noqa: N802 - pulp's method name
        """The model in two calls, every column then every row (compressed rows), where pulp
        adds them one call each: HiGHS then copies its growing matrix per row, which took
        0.24 s for a 2,500-row model of 256 GPUs, five times a short round's whole limit."""
        import highspy  # present: pulp offers HiGHS only with it

        inf = highspy.kHighsInf
        variables = lp.variables()
        for i, var in enumerate(variables):
            var.index = i
        sign = -1.0 if lp.sense == pulp.LpMaximize else 1.0
        n = len(variables)
        lower = np.array([-inf if v.lowBound is None else v.lowBound for v in variables], float)
        upper = np.array([inf if v.upBound is None else v.upBound for v in variables], float)
        costs = np.array([sign * lp.objective.get(v, 0.0) for v in variables], float)
        none = np.zeros(0, dtype=np.int32)
        lp.solverModel.addCols(
            n, costs, lower, upper, 0, np.zeros(n, np.int32), none, np.zeros(0, float)
        )
        if self.mip:
            integer = np.array(
                [i for i, v in enumerate(variables) if v.cat == pulp.LpInteger], np.int32
            )
            if len(integer):
                kind = np.full(len(integer), int(highspy.HighsVarType.kInteger), np.uint8)
                lp.solverModel.changeColsIntegrality(len(integer), integer, kind)
        rows = list(lp._constraints.values())
        starts, index, coef = [], [], []
        for i, row in enumerate(rows):
            row.index = i
            starts.append(len(index))
            for var, c in row.items():
                if c != 0:
                    index.append(var.index)
                    coef.append(c)
        row_lo = np.array([-inf if r.getLb() is None else r.getLb() for r in rows], float)
        row_up = np.array([inf if r.getUb() is None else r.getUb() for r in rows], float)
        lp.solverModel.addRows(
            len(rows),
            row_lo,
            row_up,
            len(index),
            np.array(starts, np.int32),
            np.array(index, np.int32),
            np.array(coef, float),
        )

    def callSolver(self, lp):  # noqa: N802 - pulp's method name
        """Run, from the variables' initial values where every variable has one. They go to
        HiGHS as a dense solution: given as (index, value) pairs, HiGHS takes them for a partial
        start and solves a MIP to complete it (0.2 s on a 2,200-column model, past the
        round's limit)."""
        import highspy

        variables = lp.variables()
        if all(v.varValue is not None for v in variables):
            start = highspy.HighsSolution()
            start.col_value = [v.varValue for v in sorted(variables, key=lambda v: v.index)]
            start.value_valid = True
            lp.solverModel.setSolution(start)
        lp.solverModel.run()


def _le(prob: pulp.LpProblem, terms: list, rhs: float = 0.0) -> None:
    """Add sum(coef * var) <= rhs, building the expression directly (pulp's operator
    overloading costs more than the solve on small models)."""
    prob.addConstraint(pulp.LpConstraint(_expr(terms), pulp.LpConstraintLE, rhs=rhs))


def _expr(terms: list) -> pulp.LpAffineExpression:
    merged: dict = {}
    for var, coef in terms:  # a plain list would keep only the last coefficient of a variable
        merged[var] = merged.get(var, 0.0) + coef
    return pulp.LpAffineExpression(merged)


@functools.cache
def _swallow_highs_banner() -> None:
    """Make the process's first HiGHS object with its stdout (fd 1) on /dev/null.

    HiGHS's C++ code prints its licence banner straight to fd 1, past ``sys.stdout`` and
    whatever ``output_flag`` says, when the first ``Highs`` object of a process is made: in a
    training run, into the middle of the progress bar. It does so once per process, so later
    objects print nothing. Other threads lose what they write to fd 1 in the meantime (a
    constructor call); training logs and the progress bar go to stderr."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def make_solver(name: str, time_limit_s: float, rel_gap: float, threads: int):
    """The pulp solver object; ``auto`` is HiGHS when highspy is importable, else CBC.

    pulp 3.3 calls the in-process highspy solver ``HiGHS`` (used here) and the one that runs a
    ``highs`` executable ``HiGHS_CMD`` (not used: no binary is installed); CBC is the binary
    bundled with pulp, ``PULP_CBC_CMD``."""
    if name not in SOLVERS:
        raise ValueError(f"solver {name!r} is unknown; allowed: {', '.join(SOLVERS)}")
    highs_ok = pulp.HiGHS().available()
    if name == "highs" and not highs_ok:
        raise UserError("solver 'highs' needs highspy (pip install highspy); or use 'cbc'")
    if name == "highs" or (name == "auto" and highs_ok):
        _swallow_highs_banner()
        return "highs", _HiGHSWarm(
            msg=False, timeLimit=time_limit_s, gapRel=rel_gap, threads=threads
        )
    cbc = getattr(pulp, "PULP_CBC_CMD", None) or pulp.COIN_CMD
    solver = cbc(msg=False, timeLimit=time_limit_s, gapRel=rel_gap, threads=threads, warmStart=True)
    return "cbc", solver


_MIN_SOLVE_SHARE = 0.25
"""Of a round's time limit, what the solver gets however long the model took to build."""


def solve_milp(
    inp: MilpInput,
    *,
    upper_bound: float,
    warm: tuple[SlotCounts, ...] | None,
    explicit_slots: int,
    time_limit_s: float,
    rel_gap: float,
    threads: int = 1,
    solver: str = "auto",
) -> MilpResult | None:
    """Solve within ``time_limit_s`` (building the model included, the solver getting at least
    a quarter of it); None when the model is infeasible (or no solution was found in time)."""
    begun = time.perf_counter()
    n, sizes, values, counts, tokens = inp.num_gpus, inp.sizes, inp.values, inp.counts, inp.tokens
    nk, ub = len(values), upper_bound * (1 + 1e-6)  # slack for float sums of the same loads
    prob = pulp.LpProblem("heterosp", pulp.LpMinimize)
    ok = [
        [
            values[k] <= inp.max_tokens[j] and inp.times[k, j] + inp.fixed_s[j] <= ub
            for j in range(len(sizes))
        ]
        for k in range(nk)
    ]
    lb = max(
        min(
            (inp.times[k, j] + inp.fixed_s[j] for j in range(len(sizes)) if ok[k][j]),
            default=ub,
        )
        for k in range(nk)
    )
    makespan = pulp.LpVariable("C", lowBound=min(lb, ub), upBound=ub)
    prob += makespan
    neg_c = [(makespan, -1.0)]
    placed = [[] for _ in range(nk)]  # per bucket: (variable, 1)
    gpus, work = [], []  # terms of GPUs used and of GPU-seconds
    per_size: dict[int, list] = {}  # per group size: terms of its number of groups
    slots: dict[int, list[tuple[pulp.LpVariable, dict[int, pulp.LpVariable], pulp.LpVariable]]]
    slots = {}
    fluid: dict[int, tuple[list, list, dict, dict, list]] = {}
    for j, d in enumerate(sizes):
        cap, fix = inp.max_tokens[j], float(inp.fixed_s[j])
        t = {k: float(inp.times[k, j]) for k in range(nk) if ok[k][j]}
        if inp.passes:
            most = {k: counts[k] for k in t}
        else:
            most = {k: min(counts[k], cap // tokens[k]) for k in t}
        possible = inp.max_groups[j] if inp.max_groups else n // d
        if possible <= explicit_slots:
            slots[j], prev = [], None
            for s in range(possible):
                used = pulp.LpVariable(f"u_{j}_{s}", cat="Binary")
                x = {k: pulp.LpVariable(f"x_{k}_{j}_{s}", 0, most[k], cat="Integer") for k in t}
                runs = used  # the group's passes: one, or a count of its own
                if inp.passes:
                    top = float(sum(counts))
                    runs = pulp.LpVariable(f"k_{j}_{s}", 0, top, cat="Integer")
                    _le(prob, [(used, 1.0), (runs, -1.0)])
                    _le(prob, [(runs, 1.0), (used, -top)])
                load = [(x[k], t[k]) for k in t] + [(runs, fix)]
                _le(prob, load + neg_c)
                for k in t:
                    _le(prob, [(x[k], 1.0), (used, -float(most[k]))])
                    placed[k].append((x[k], 1.0))
                _le(prob, [(x[k], float(tokens[k])) for k in t] + [(runs, -float(cap))])
                if prev is not None:  # symmetry: used slots first, heaviest first
                    _le(prob, [(used, 1.0), (prev[0], -1.0)])
                    _le(prob, load + [(v, -c) for v, c in prev[1]])
                prev = (used, load)
                slots[j].append((used, x, runs))
                work += [(v, d * c) for v, c in load]
                gpus.append((used, float(d)))
                per_size.setdefault(d, []).append((used, 1.0))
            continue
        bits = max(1, int(possible).bit_length())
        z = [pulp.LpVariable(f"z_{j}_{b}", cat="Binary") for b in range(bits)]
        w = [pulp.LpVariable(f"w_{j}_{b}", 0, ub) for b in range(bits)]
        y = {k: pulp.LpVariable(f"y_{k}_{j}", 0, counts[k], cat="Integer") for k in t}
        on = {k: pulp.LpVariable(f"a_{k}_{j}", cat="Binary") for k in t}
        count = [(z[b], float(1 << b)) for b in range(bits)]
        _le(prob, count, possible)
        for b in range(bits):
            _le(prob, [(w[b], 1.0)] + neg_c)
            _le(prob, [(w[b], 1.0), (z[b], -ub)])
        runs = count  # the class's passes: one per group, or a count of their own
        if inp.passes:
            total = pulp.LpVariable(f"p_{j}", 0, float(sum(counts)), cat="Integer")
            _le(prob, count + [(total, -1.0)])
            runs = [(total, 1.0)]
        load = [(y[k], t[k]) for k in t] + [(v, c * fix) for v, c in runs]
        _le(prob, load + [(w[b], -float(1 << b)) for b in range(bits)])
        _le(prob, [(y[k], float(tokens[k])) for k in t] + [(v, -c * cap) for v, c in runs])
        for k in t:
            _le(prob, [(y[k], 1.0), (on[k], -float(counts[k]))])
            _le(prob, [(on[k], t[k] + fix)] + neg_c)
            placed[k].append((y[k], 1.0))
        for m in (1, 2, 3):
            for big in (
                [k for k in t if (m + 1) * t[k] + fix > ub],
                [] if inp.passes else [k for k in t if (m + 1) * tokens[k] > cap],
            ):
                if big:
                    _le(prob, [(y[k], 1.0) for k in big] + [(v, -m * c) for v, c in count])
        fluid[j] = (z, w, y, on, runs)
        work += [(v, d * c) for v, c in load]
        gpus += [(v, d * c) for v, c in count]
        per_size.setdefault(d, []).extend(count)
    for k in range(nk):
        if not placed[k]:
            return None
        prob.addConstraint(pulp.LpConstraint(_expr(placed[k]), pulp.LpConstraintEQ, rhs=counts[k]))
    _le(prob, gpus, n)
    nodes = _node_packing(prob, per_size, inp.node, n // inp.node) if inp.node else None
    _le(prob, work + [(makespan, -float(n))])
    if warm is not None:
        _set_warm_start(warm, sizes, slots, fluid, makespan, inp, prob)
        if nodes is not None:
            _warm_patterns(warm, inp, *nodes)
    # Building the model counts against the limit (on big models, e.g. 49 kinds at 256 GPUs,
    # it takes a sizeable part of a short one), down to a quarter of it for the solver.
    limit = max(_MIN_SOLVE_SHARE * time_limit_s, time_limit_s - (time.perf_counter() - begun))
    name, solver_obj = make_solver(solver, limit, rel_gap, threads)
    start = time.perf_counter()
    prob.solve(solver_obj)
    solve_s = time.perf_counter() - start
    if makespan.varValue is None or prob.status != pulp.LpStatusOptimal:
        return None  # pulp says "Optimal" for any incumbent; the solution status tells which
    bound = None
    status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "time_limit"
    if name == "highs":
        info = prob.solverModel.getInfo()
        bound = float(info.mip_dual_bound)
        if not np.isfinite(bound):  # stopped before a bound was proven
            bound = None
        text = prob.solverModel.modelStatusToString(prob.solverModel.getModelStatus())
        status = "time_limit" if "time limit" in text.lower() else text.lower().replace(" ", "_")
    groups = []
    for j, slot_list in slots.items():
        for used, x, runs in slot_list:
            if round(used.varValue or 0) == 1:
                c = [0] * nk
                for k, var in x.items():
                    c[k] = round(var.varValue or 0)
                groups.append(SlotCounts(sizes[j], tuple(c), j, round(runs.varValue or 1)))
    fluid_out = []
    for j, (z, _, y, _, _) in fluid.items():
        num = sum((1 << b) * round(v.varValue or 0) for b, v in enumerate(z))
        c = [0] * nk
        for k, var in y.items():
            c[k] = round(var.varValue or 0)
        if num:
            fluid_out.append((j, num, tuple(c)))
    return MilpResult(
        groups=tuple(groups),
        fluid=tuple(fluid_out),
        objective=float(makespan.varValue),
        bound=bound,
        status=status,
        solver=name,
        solve_s=solve_s,
    )


def _node_packing(prob: pulp.LpProblem, per_size: dict[int, list], node: int, nodes: int):
    """Group counts that fit the nodes: m_p nodes filled by pattern p
    (:func:`~hetero_sp.planner.cluster.node_patterns`) hold every group smaller than a node,
    and together with the nodes the bigger groups take they are at most the node count."""
    local = tuple(sorted(d for d in per_size if 1 < d <= node))
    patterns = node_patterns(node, local)
    m = [pulp.LpVariable(f"m_{p}", 0, nodes, cat="Integer") for p in range(len(patterns))]
    for i, d in enumerate(local):
        _le(prob, per_size[d] + [(m[p], -float(pat[i])) for p, pat in enumerate(patterns)])
    big = [(v, c * d / node) for d, terms in per_size.items() if d > node for v, c in terms]
    _le(prob, [(v, 1.0) for v in m] + big, nodes)
    return local, patterns, m


def _set_warm_start(warm, sizes, slots, fluid, makespan, inp, prob) -> None:
    """Initial values of every variable from a known plan (groups with bucket counts)."""
    for var in prob.variables():
        if var is not makespan:
            var.setInitialValue(0)
    loads = []
    by_size: dict[int, list[SlotCounts]] = {}
    for g in warm:
        j = g.kind
        load = inp.fixed_s[j] * g.passes + sum(inp.times[k, j] * c for k, c in enumerate(g.counts))
        loads.append(load)
        by_size.setdefault(j, []).append((load, g))
    makespan.setInitialValue(min(max(loads), makespan.upBound))
    for j, entries in by_size.items():
        entries.sort(key=lambda e: -e[0])  # the model orders a size's slots by load
        if j in slots:
            for (used, x, runs), (_, g) in zip(slots[j], entries):
                used.setInitialValue(1)
                if runs is not used:
                    runs.setInitialValue(g.passes)
                for k, var in x.items():
                    var.setInitialValue(g.counts[k])
        else:
            z, w, y, on, runs = fluid[j]
            if inp.passes:
                runs[0][0].setInitialValue(sum(g.passes for _, g in entries))
            num = len(entries)
            for b, (zb, wb) in enumerate(zip(z, w)):
                zb.setInitialValue((num >> b) & 1)
                wb.setInitialValue(makespan.varValue * ((num >> b) & 1))
            total = [sum(g.counts[k] for _, g in entries) for k in range(len(inp.counts))]
            for k, var in y.items():
                var.setInitialValue(total[k])
                on[k].setInitialValue(1 if total[k] else 0)


def _warm_patterns(warm, inp: MilpInput, local, patterns, m) -> None:
    """Initial node-pattern counts of the warm start: its groups placed on the nodes, each
    node's groups matched to a pattern that holds them."""
    sizes = [inp.sizes[g.kind] for g in warm]
    firsts = place_groups(sizes, Topology(num_gpus=inp.num_gpus, gpus_per_node=inp.node))
    if firsts is None:
        return  # not placeable: the solver ignores the start
    fill = {}
    for d, first in zip(sizes, firsts):
        if d in local:
            row = fill.setdefault(first // inp.node, [0] * len(local))
            row[local.index(d)] += 1
    for row in fill.values():
        p = next(p for p, pat in enumerate(patterns) if all(a <= b for a, b in zip(row, pat)))
        m[p].setInitialValue((m[p].varValue or 0) + 1)
