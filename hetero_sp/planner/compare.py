"""HeteroSP against its baselines on the same batches, priced by the same cost model: what
``hetero-sp simulate`` prints and ``benchmarks/planner.py`` sweeps.

Per step, for one batch of lengths:

- **HeteroSP**: the planner, ``Planner(cost, options)``;
- **FlexSP**: the planner restricted to FlexSP's formulation (Ulysses, groups of 2, 4, 8, ...;
  :func:`~hetero_sp.planner.baselines.flexsp_cost`) with a 10 s planning limit;
- **Megatron**: Megatron-core's ``BalancedCPScheduler``
  (:class:`~hetero_sp.planner.baselines.MegatronBaseline`), when megatron-core is installed;
- **homogeneous**: the best single SP degree for this batch, and over the steps **static**, the
  best single degree for the whole run (:mod:`hetero_sp.planner.simulate`);
- the **lower bound** no plan beats (:func:`~hetero_sp.planner.simulate.step_lower_bound`).

A ratio is a baseline's total step time over HeteroSP's on the steps the baseline could run
(above 1: HeteroSP is faster). A step's batch holds a number of documents, or a token budget
filled by drawing documents until it is full (:func:`fill_tokens`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetero_sp.config import PlannerConfig
from hetero_sp.planner.baselines import BaselineStatus, MegatronBaseline, flexsp_cost
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.errors import PlanError
from hetero_sp.planner.plan import Plan
from hetero_sp.planner.simulate import (
    LengthDistribution,
    homogeneous_times,
    milp_bound,
    sample_lengths,
    step_lower_bound,
)
from hetero_sp.planner.solve import Planner

FLEXSP_TIME_LIMIT_S = 10.0
"""FlexSP's planning limit per step."""

LEFT_OUT = "left out"
"""Why a baseline the caller chose not to run has no numbers."""

LengthSource = Callable[[np.random.Generator, int], np.ndarray]
"""``source(rng, num)``: ``num`` document lengths, before any cut."""


def distribution_source(dist: LengthDistribution) -> LengthSource:
    """Lengths drawn from a synthetic distribution."""
    return lambda rng, num: np.asarray(sample_lengths(dist, num, rng), dtype=np.int64)


def corpus_source(lengths: Sequence[int] | np.ndarray) -> LengthSource:
    """Documents of a corpus drawn uniformly, with replacement."""
    pool = np.asarray(lengths, dtype=np.int64)
    if pool.size == 0 or int(pool.min()) < 1:
        raise PlanError("a corpus needs at least one document, every length >= 1")
    return lambda rng, num: pool[rng.integers(0, len(pool), num)]


@dataclass(kw_only=True, frozen=True)
class StepBatch:
    """What one step trains: ``sequences`` documents, or documents filling ``tokens``."""

    sequences: int = 0
    """Documents per step (0: by tokens)."""
    tokens: int = 0
    """Tokens per step (0: by documents)."""

    def __post_init__(self) -> None:
        if self.sequences < 0 or self.tokens < 0 or (self.sequences > 0) == (self.tokens > 0):
            raise PlanError(
                f"a step is either a number of sequences or a number of tokens, a positive "
                f"number: got sequences={self.sequences}, tokens={self.tokens}"
            )

    @property
    def label(self) -> str:
        if self.sequences:
            return f"{self.sequences} seqs"
        millions = self.tokens / 1e6
        return f"{millions:g}M tok" if self.tokens % 100_000 == 0 else f"{self.tokens} tok"


def fill_tokens(
    source: LengthSource, budget: int, rng: np.random.Generator, max_len: int
) -> list[int]:
    """Documents drawn (cut to ``max_len``) until they hold ``budget`` tokens; the last is cut to
    the room left, as a loader that packs a token budget cuts the document at the step's end."""
    out, total = [], 0
    while total < budget:
        for s in np.minimum(source(rng, 64), max_len):
            s = min(int(s), budget - total)
            out.append(s)
            total += s
            if total == budget:
                break
    return out


def draw_batch(
    source: LengthSource, batch: StepBatch, rng: np.random.Generator, max_len: int
) -> list[int]:
    """One step's lengths, every document cut to ``max_len``."""
    if batch.sequences:
        return [int(s) for s in np.minimum(source(rng, batch.sequences), max_len)]
    return fill_tokens(source, batch.tokens, rng, max_len)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class Comparison:
    """The methods of one setup (cost model and planner options), built once and run step by
    step: ``Comparison(cost, options).run(batches)``."""

    def __init__(
        self,
        cost: CostModel,
        options: PlannerConfig | None = None,
        *,
        flexsp_time_limit_s: float = FLEXSP_TIME_LIMIT_S,
        flexsp: bool = True,
        megatron: bool = True,
    ) -> None:
        self.cost = cost
        self.options = options or PlannerConfig()
        self.hetero = Planner(cost, self.options)
        self.flexsp, self.flexsp_missing = None, LEFT_OUT
        if flexsp:
            flex = flexsp_cost(cost)
            if flex is None:
                self.flexsp_missing = "no Ulysses group of 2 or more GPUs exists on this cluster"
            else:
                # FlexSP's formulation: one stream per group, no passes
                opts = dataclasses.replace(
                    self.options, time_limit_s=flexsp_time_limit_s, passes=False
                )
                self.flexsp = Planner(flex, opts)
        self.megatron, self.megatron_missing = None, LEFT_OUT
        if megatron:
            try:
                self.megatron = MegatronBaseline(cost)
            except ImportError as err:
                self.megatron_missing = f"megatron-core is not installed ({err})"

    @property
    def max_len(self) -> int:
        """The longest document every method run can schedule: what batches are cut to, so
        that every method sees the same batches."""
        cost = self.cost
        # HeteroSP's biggest group (any strategy pair), and the homogeneous baselines' (each
        # size's default pair).
        longest = [
            cost.capacity(cost.sizes[-1]),
            max(cost.groups[d].max_tokens for d in cost.sizes),
        ]
        if self.flexsp is not None:
            flex = self.flexsp.cost
            longest.append(flex.capacity(flex.sizes[-1]))
        if self.megatron is not None:
            world = self.cost.topology.num_gpus
            longest.append(self.megatron.cap * (1 << (world.bit_length() - 1)))
        return min(longest)

    def step(self, lengths: Sequence[int]) -> tuple[dict[str, Any], Plan]:
        """Every method on one batch: the step's record and HeteroSP's plan."""
        lengths = [int(s) for s in lengths]
        start, cpu_start = time.perf_counter(), time.process_time()
        plan = self.hetero(lengths)
        solve_s = time.perf_counter() - start
        # the process's CPU time: the planner runs here alone (HiGHS on one thread)
        solve_cpu_s = time.process_time() - cpu_start
        record: dict[str, Any] = dict(
            sequences=len(lengths),
            tokens=sum(lengths),
            max_len=max(lengths),
            lower_bound_s=step_lower_bound(lengths, self.cost),
            hetero=dict(
                step_s=plan.predicted_step_s,
                solve_s=solve_s,
                solve_cpu_s=solve_cpu_s,
                micro_batches=len(plan.micro_batches),
                split_bound_s=sum(mb.lower_bound_s for mb in plan.micro_batches),
                milp_bound_s=milp_bound(plan),
                max_gap=max((mb.solver.gap or 0.0) for mb in plan.micro_batches),
                token_errors=[mb.solver.token_error for mb in plan.micro_batches],
            ),
            homog={str(d): t for d, t in homogeneous_times(lengths, self.cost).items()},
        )
        if self.flexsp is not None:
            start = time.perf_counter()
            try:
                flex = self.flexsp(lengths)
                record["flexsp"] = dict(
                    status=BaselineStatus.OK,
                    step_s=flex.predicted_step_s,
                    solve_s=time.perf_counter() - start,
                    micro_batches=len(flex.micro_batches),
                    sizes=sorted(
                        {g.size for mb in flex.micro_batches for g in mb.groups if g.sequences}
                    ),
                    reason="",
                )
            except PlanError as err:  # a sequence no Ulysses group holds
                record["flexsp"] = dict(
                    status=BaselineStatus.UNPLANNABLE, step_s=None, solve_s=None, reason=str(err)
                )
        if self.megatron is not None:
            mp = self.megatron(lengths)
            record["megatron"] = dict(
                status=mp.status,
                step_s=mp.step_s,
                schedule_s=mp.schedule_s,
                rounds=len(mp.rounds),
                sizes=sorted({len(g.ranks) for r in mp.rounds for g in r}),
                reason=mp.reason,
            )
        return record, plan

    def run(self, batches: Sequence[Sequence[int]]) -> tuple[dict[str, Any], Plan]:
        """Every method on every batch: the summary (with each step's record under
        ``steps``) and HeteroSP's first plan."""
        steps, first = [], None
        for lengths in batches:
            record, plan = self.step(lengths)
            steps.append(record)
            first = first or plan
        return self.summarize(steps), first

    def summarize(self, steps: list[dict[str, Any]]) -> dict[str, Any]:
        hetero = [s["hetero"]["step_s"] for s in steps]
        total = sum(hetero)
        static = {
            d: sum(s["homog"][d] for s in steps)
            for d in map(str, self.cost.sizes)
            if all(d in s["homog"] for s in steps)
        }
        best_static = min(static, key=static.get) if static else None
        with_homog = [i for i, s in enumerate(steps) if s["homog"]]
        homog = sum(min(steps[i]["homog"].values()) for i in with_homog)
        solve = [s["hetero"]["solve_s"] for s in steps]
        out: dict[str, Any] = dict(
            steps_run=len(steps),
            sequences_mean=float(np.mean([s["sequences"] for s in steps])),
            tokens_mean=float(np.mean([s["tokens"] for s in steps])),
            micro_batches=float(np.mean([s["hetero"]["micro_batches"] for s in steps])),
            hetero_s=total,
            lower_bound_s=sum(s["lower_bound_s"] for s in steps),
            split_bound_s=sum(s["hetero"]["split_bound_s"] for s in steps),
            milp_bound_s=sum(s["hetero"]["milp_bound_s"] for s in steps),
            static_degree=None if best_static is None else int(best_static),
            static_s=None if best_static is None else static[best_static],
            homog_s=homog,
            speedup_vs_static=None if best_static is None else static[best_static] / total,
            homog_steps=len(with_homog),
            speedup_vs_homog=homog / sum(hetero[i] for i in with_homog) if with_homog else None,
            over_lower_bound=total / sum(s["lower_bound_s"] for s in steps),
            solve_p50_s=_percentile(solve, 50),
            solve_p95_s=_percentile(solve, 95),
            solve_cpu_p95_s=_percentile([s["hetero"]["solve_cpu_s"] for s in steps], 95),
            token_error_p95=_percentile(
                [e for s in steps for e in s["hetero"]["token_errors"]], 95
            ),
        )
        for name, missing, timing in (
            ("flexsp", self.flexsp_missing if self.flexsp is None else "", "solve_s"),
            ("megatron", self.megatron_missing if self.megatron is None else "", "schedule_s"),
        ):
            if missing:
                out[name] = dict(ran=False, reason=missing)
                continue
            ok = [i for i, s in enumerate(steps) if s[name]["status"] == BaselineStatus.OK]
            statuses: dict[str, int] = {}
            for s in steps:
                statuses[s[name]["status"]] = statuses.get(s[name]["status"], 0) + 1
            base = sum(steps[i][name]["step_s"] for i in ok)
            times = [s[name][timing] for s in steps if s[name][timing] is not None]
            out[name] = dict(
                ran=True,
                steps_ok=len(ok),
                statuses=statuses,
                first_problem=next((s[name]["reason"] for s in steps if s[name]["reason"]), ""),
                step_s=base,
                hetero_s=sum(hetero[i] for i in ok),
                speedup=base / sum(hetero[i] for i in ok) if ok else None,
                time_p50_s=_percentile(times, 50),
                time_p95_s=_percentile(times, 95),
            )
        out["steps"] = steps
        return out


HEADER = (
    f"{'gpus':>4} {'lengths':>12} {'batch':>10} {'seqs':>6} {'mb':>5} {'HeteroSP':>9} "
    f"{'x static(d)':>11} {'x homog':>7} {'x FlexSP':>13} {'x Megatron':>13} {'/LB':>6} "
    f"{'/MILPb':>6} {'p50 s':>6} {'p95 s':>6} {'cpu95':>6} {'Flex p95':>8} {'Mcore p95':>9}"
)
"""The columns of :func:`format_row`."""


def _ratio(summary: dict[str, Any], name: str) -> str:
    part = summary[name]
    if not part["ran"]:
        return "-"
    n = f"{part['steps_ok']}/{summary['steps_run']}"
    return f"{part['speedup']:.2f} {n}" if part["speedup"] is not None else f"- {n}"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_row(gpus: int, lengths: str, batch: str, s: dict[str, Any]) -> str:
    """One configuration's line under :data:`HEADER`. Ratios: the baseline's step time over
    HeteroSP's (above 1: HeteroSP faster); after FlexSP and Megatron, the steps they could run."""
    static = (
        "-"
        if s["static_degree"] is None
        else f"{s['speedup_vs_static']:.2f} ({s['static_degree']})"
    )
    flex_p95 = s["flexsp"].get("time_p95_s") if s["flexsp"]["ran"] else None
    mcore_p95 = s["megatron"].get("time_p95_s") if s["megatron"]["ran"] else None
    return (
        f"{gpus:>4} {lengths:>12} {batch:>10} {s['sequences_mean']:>6.0f} {s['micro_batches']:>5.1f} "
        f"{s['hetero_s']:>9.1f} {static:>11} {_cell(s['speedup_vs_homog']):>7} "
        f"{_ratio(s, 'flexsp'):>13} {_ratio(s, 'megatron'):>13} {s['over_lower_bound']:>6.3f} "
        f"{s['hetero_s'] / s['milp_bound_s']:>6.3f} {_cell(s['solve_p50_s']):>6} "
        f"{_cell(s['solve_p95_s']):>6} {_cell(s['solve_cpu_p95_s']):>6} {_cell(flex_p95):>8} "
        f"{_cell(mcore_p95):>9}"
    )


def format_notes(s: dict[str, Any]) -> list[str]:
    """Why a baseline left steps out, one line each."""
    lines = []
    if s["homog_steps"] < s["steps_run"]:
        lines.append(
            f"homog: {s['steps_run'] - s['homog_steps']} steps have no homogeneous plan (a "
            "document no size holds with its default strategies); the ratio leaves them out"
        )
    for name, label in (("flexsp", "FlexSP"), ("megatron", "Megatron")):
        part = s[name]
        if not part["ran"]:
            if part["reason"] != LEFT_OUT:
                lines.append(f"{label}: not run: {part['reason']}")
        elif part["steps_ok"] < s["steps_run"]:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(part["statuses"].items()) if k != "ok")
            lines.append(f"{label}: steps not counted: {counts}; first: {part['first_problem']}")
    return lines
