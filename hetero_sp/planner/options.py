"""The planner's knobs: buckets, time budget, MILP shape, solver."""

from __future__ import annotations

from dataclasses import dataclass

from hetero_sp.planner.milp import SOLVERS


@dataclass(kw_only=True, frozen=True)
class PlannerOptions:
    """How hard the planner works on each step."""

    num_buckets: int = 16
    """Length buckets of the MILP (DP bucketing)."""
    time_limit_s: float = 0.5
    """Wall-clock planning time of one step, shared by its micro-batches: MILP rounds are capped
    to end by it and local search stops at it; the best plan found by then is used. Bucketing,
    the homogeneous fall-back and the assignment of each micro-batch run regardless, and the
    step's first MILP round gets at least ``min_time_limit_s`` (see ``StepBudget``)."""
    min_time_limit_s: float = 0.05
    """Least time of a MILP round: one starts only while this much of the step's time is left
    (the step's first round always)."""
    rel_gap: float = 0.005
    """Relative MILP gap at which the solver stops early."""
    explicit_slots: int = 8
    """Group sizes with at most this many possible groups get one MILP slot per group."""
    improve_rounds: int = 300
    """Local-search moves after assignment (each move lowers the busiest group)."""
    solver: str = "auto"
    """auto (HiGHS when highspy is installed, else CBC), highs or cbc."""
    threads: int = 1
    """Solver threads (1 keeps the CPU free for the training step it overlaps)."""

    def __post_init__(self) -> None:
        if self.num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {self.num_buckets}")
        if not 0 < self.min_time_limit_s <= self.time_limit_s:
            raise ValueError("need 0 < min_time_limit_s <= time_limit_s")
        if not 0 <= self.rel_gap < 1:
            raise ValueError(f"rel_gap must be in [0, 1), got {self.rel_gap}")
        if self.explicit_slots < 0 or self.improve_rounds < 0 or self.threads < 1:
            raise ValueError("explicit_slots and improve_rounds must be >= 0, threads >= 1")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver {self.solver!r} is unknown; allowed: {', '.join(SOLVERS)}")
