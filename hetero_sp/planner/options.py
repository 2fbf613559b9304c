"""The planner's knobs: buckets, time budget, MILP shape, solver."""

from __future__ import annotations

from dataclasses import dataclass

from hetero_sp.planner.milp import SOLVERS

BUCKET_CAP_FACTOR = 4  # most buckets with max_bucket_error: this many times num_buckets


@dataclass(kw_only=True, frozen=True)
class PlannerOptions:
    """How hard the planner works on each step."""

    num_buckets: int = 16
    """Length buckets of the MILP (DP bucketing)."""
    max_bucket_error: float = 0.05
    """With > 0, add buckets beyond ``num_buckets`` (up to ``BUCKET_CAP_FACTOR`` times as many)
    until the bucket token error is at most this; 0: exactly ``num_buckets``. At 0.05, batches
    of 512-1024 long-tailed lengths on 64-256 GPUs got 16-36 buckets and plans from 1.6% faster
    to 0.3% slower than with 16 buckets (5-15% error), in the same time budget."""
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
        if not 0 <= self.max_bucket_error < 1:
            raise ValueError(f"max_bucket_error must be in [0, 1), got {self.max_bucket_error}")
        if not 0 < self.min_time_limit_s <= self.time_limit_s:
            raise ValueError("need 0 < min_time_limit_s <= time_limit_s")
        if not 0 <= self.rel_gap < 1:
            raise ValueError(f"rel_gap must be in [0, 1), got {self.rel_gap}")
        if self.explicit_slots < 0 or self.improve_rounds < 0 or self.threads < 1:
            raise ValueError("explicit_slots and improve_rounds must be >= 0, threads >= 1")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver {self.solver!r} is unknown; allowed: {', '.join(SOLVERS)}")

    @property
    def bucket_cap(self) -> int:
        """Most buckets a micro-batch may get."""
        factor = BUCKET_CAP_FACTOR if self.max_bucket_error else 1
        return factor * self.num_buckets
