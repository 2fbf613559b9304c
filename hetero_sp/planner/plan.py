"""A step's plan as data: frozen dataclasses, JSON round trip, and validation before use.

A step runs one or more micro-batches one after another (gradient accumulation). In each, the
world's ranks are split into groups of consecutive ranks, of the shapes the cluster allows
(:class:`~hetero_sp.planner.cluster.Topology`: any size inside a node or whole nodes, or aligned
powers of two). Every rank is in exactly one group of every micro-batch. A group runs the batch
sequences it lists with the named softmax and linear-attention strategies, packed in that order
into one stream, or as several passes (each its own stream, one after another, gradients
accumulated), so memory bounds a pass rather than the group's whole share. A group with no
sequences is idle (the planner only emits idle groups of one rank): the engine runs such a
rank on one padding token whose label is ignored, a forward and backward that keeps ZeRO's
collectives in step and contributes zero gradients.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hetero_sp.core.names import LinearSP, SoftmaxSP, values
from hetero_sp.planner.cost import CostModel, ulysses_allowed
from hetero_sp.planner.errors import PlanError

FORMAT = "hetero-sp-plan/1"


@dataclass(frozen=True)
class GroupPlan:
    ranks: tuple[int, ...]
    """Global ranks, consecutive."""
    sequences: tuple[int, ...]
    """Indices into the step's batch, in stream order; empty for an idle group."""
    softmax_strategy: str
    """ulysses or allgather_kv for the S layers (a group of one rank runs the plain path and
    ignores both names)."""
    linear_strategy: str
    """lasp2 or zeco for the L layers."""
    tokens: int
    """Tokens of the group's stream (before padding)."""
    predicted_s: float
    memory_bytes: float
    """Predicted peak memory per GPU (of its largest pass)."""
    passes: tuple[tuple[int, ...], ...] = ()
    """The group's sequences as several passes run one after another, each a packed stream
    that fits memory, gradients accumulated (in stream order within a pass); empty: one pass of
    ``sequences``."""

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def pass_list(self) -> tuple[tuple[int, ...], ...]:
        """The sequences of each pass; an idle group has none."""
        if self.passes:
            return self.passes
        return (self.sequences,) if self.sequences else ()


def relative_gap(objective: float, bound: float) -> float:
    """How far a proven lower ``bound`` may sit below ``objective``, relative to it (>= 0)."""
    return max(0.0, objective - bound) / objective if objective > 0 else 0.0


@dataclass(frozen=True)
class SolverStats:
    solver: str
    """highs, cbc, or homogeneous when the warm-start plan was kept."""
    status: str
    objective_s: float | None
    """The MILP's makespan, sequences priced at their bucket's mean length."""
    bound_s: float | None
    """The solver's proven lower bound on that objective; None when the solver gives none."""
    gap: float | None
    """``relative_gap(objective_s, bound_s)``; None without a bound."""
    solve_s: float
    """Wall time of bucketing, MILP and assignment for this micro-batch."""
    num_buckets: int
    token_error: float
    """Bucket width: tokens that rounding every sequence up to its bucket's longest would add,
    over the micro-batch's tokens."""
    note: str = ""


@dataclass(frozen=True)
class MicroBatchPlan:
    groups: tuple[GroupPlan, ...]
    """Ordered by first rank."""
    makespan_s: float
    lower_bound_s: float
    """max(total GPU-seconds at each sequence's cheapest size / GPUs, longest single sequence)."""
    solver: SolverStats

    def group_of(self, rank: int) -> GroupPlan:
        for group in self.groups:
            if group.ranks[0] <= rank <= group.ranks[-1]:
                return group
        raise PlanError(f"rank {rank} is in no group of this micro-batch")


@dataclass(frozen=True)
class Plan:
    world_size: int
    lengths: tuple[int, ...]
    micro_batches: tuple[MicroBatchPlan, ...]
    memory_limit_bytes: float

    @property
    def predicted_step_s(self) -> float:
        return sum(mb.makespan_s for mb in self.micro_batches)

    @property
    def solve_s(self) -> float:
        return sum(mb.solver.solve_s for mb in self.micro_batches)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Plan:
        if raw.get("format") != FORMAT:
            raise PlanError(f"not a plan: format is {raw.get('format')!r}, want {FORMAT!r}")
        try:
            mbs = tuple(
                MicroBatchPlan(
                    groups=tuple(
                        GroupPlan(
                            **{
                                **g,
                                "ranks": tuple(g["ranks"]),
                                "sequences": tuple(g["sequences"]),
                                "passes": tuple(tuple(p) for p in g.get("passes", ())),
                            }
                        )
                        for g in mb["groups"]
                    ),
                    makespan_s=mb["makespan_s"],
                    lower_bound_s=mb["lower_bound_s"],
                    solver=SolverStats(**mb["solver"]),
                )
                for mb in raw["micro_batches"]
            )
            return cls(
                world_size=raw["world_size"],
                lengths=tuple(raw["lengths"]),
                micro_batches=mbs,
                memory_limit_bytes=raw["memory_limit_bytes"],
            )
        except (KeyError, TypeError) as err:
            raise PlanError(f"plan JSON is missing or has a bad field: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise PlanError(f"plan is not valid JSON: {err}") from err


def _is_block(ranks: Sequence[int], world: int) -> bool:
    if not ranks or list(ranks) != list(range(ranks[0], ranks[0] + len(ranks))):
        return False
    return ranks[0] >= 0 and ranks[-1] < world


def validate_plan(plan: Plan, cost: CostModel | None = None) -> None:
    """Raise :class:`PlanError` unless every rank is in exactly one group of consecutive ranks
    of every micro-batch (of a shape the cluster allows, with ``cost``), every sequence runs exactly once in the step, strategies are known (and
    allowed for the group size), and no GPU exceeds the memory limit. With ``cost`` given,
    memory and strategy limits are recomputed from the cost model rather than trusted."""
    world, n = plan.world_size, len(plan.lengths)
    if world < 1:
        raise PlanError(f"world_size must be >= 1, got {world}")
    if not plan.micro_batches:
        raise PlanError("a plan needs at least one micro-batch")
    if cost is not None and world != cost.topology.num_gpus:
        raise PlanError(f"the plan is for {world} ranks, the cluster has {cost.topology.num_gpus}")
    seen: dict[int, int] = {}
    for m, mb in enumerate(plan.micro_batches):
        owner: dict[int, int] = {}
        for g, group in enumerate(mb.groups):
            where = f"micro-batch {m}, group {g} (ranks {list(group.ranks)})"
            if not _is_block(group.ranks, world):
                raise PlanError(f"{where}: ranks must be consecutive ranks of the world of {world}")
            if cost is not None and not cost.topology.is_valid_block(group.ranks):
                shape = (
                    "an aligned power-of-two block (or the whole world)"
                    if cost.topology.group_shapes == "power_of_two"
                    else f"inside one node of {cost.topology.node} ranks, or whole nodes"
                )
                raise PlanError(f"{where}: a group must be {shape}")
            for r in group.ranks:
                if r in owner:
                    raise PlanError(f"{where}: rank {r} is also in group {owner[r]}")
                owner[r] = g
            if group.softmax_strategy not in values(SoftmaxSP):
                raise PlanError(f"{where}: softmax strategy {group.softmax_strategy!r} unknown")
            if group.linear_strategy not in values(LinearSP):
                raise PlanError(f"{where}: linear strategy {group.linear_strategy!r} unknown")
            for i in group.sequences:
                if not 0 <= i < n:
                    raise PlanError(f"{where}: sequence index {i} outside the batch of {n}")
                if i in seen:
                    raise PlanError(f"{where}: sequence {i} already runs in micro-batch {seen[i]}")
                seen[i] = m
            tokens = sum(plan.lengths[i] for i in group.sequences)
            if tokens != group.tokens:
                raise PlanError(f"{where}: says {group.tokens} tokens, its sequences have {tokens}")
            if group.passes and (
                sorted(i for p in group.passes for i in p) != sorted(group.sequences)
                or not all(group.passes)
            ):
                raise PlanError(
                    f"{where}: its passes {[list(p) for p in group.passes]} must split its "
                    f"sequences {list(group.sequences)} into non-empty passes, each sequence once"
                )
            stream = max((sum(plan.lengths[i] for i in p) for p in group.pass_list), default=0)
            memory = group.memory_bytes
            if cost is not None and group.sequences:
                if group.size not in cost.groups:
                    raise PlanError(f"{where}: group size {group.size} is not allowed")
                ulysses = group.softmax_strategy == "ulysses" and group.size > 1
                ulysses = ulysses and "S" in cost.model.layers  # no S layer: never runs
                if ulysses and not ulysses_allowed(cost.model, group.size):
                    raise PlanError(
                        f"{where}: Ulysses needs at least one of num_heads="
                        f"{cost.model.num_heads} per rank, the group has {group.size}"
                    )
                kind = cost.group_cost(group.size, group.softmax_strategy, group.linear_strategy)
                memory = kind.memory(stream)
            limit = plan.memory_limit_bytes if cost is None else cost.memory_limit_bytes
            if group.sequences and memory > limit * (1 + 1e-9):
                raise PlanError(
                    f"{where}: needs {memory / 2**30:.2f} GiB per GPU, over the limit of "
                    f"{limit / 2**30:.2f} GiB"
                )
        missing = sorted(set(range(world)) - set(owner))
        if missing:
            raise PlanError(f"micro-batch {m}: ranks {missing} are in no group")
    unplaced = sorted(set(range(n)) - set(seen))
    if unplaced:
        raise PlanError(f"sequences {unplaced} run in no micro-batch")
