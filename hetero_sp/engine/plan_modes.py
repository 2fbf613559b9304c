"""The engine's side of planning: a cost model and a plan function built from the config.

Modes (``parallel.sp_mode``): ``hetero`` solves the planner's MILP over mixed group sizes every
step; ``homogeneous`` picks, per step, the single group size the cost model predicts fastest;
``static`` runs every sequence on groups of ``parallel.sp_degree`` ranks; ``dp`` is static with
groups of one rank. All four produce the same kind of :class:`~hetero_sp.planner.Plan`, so the
step runs them the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from hetero_sp.config import Config, ConfigError
from hetero_sp.log import get_logger
from hetero_sp.planner.cost import LINEAR_STRATEGIES, SOFTMAX_STRATEGIES, CostModel
from hetero_sp.planner.plan import Plan, PlanError
from hetero_sp.planner.profile import load_profile, rescale_profile
from hetero_sp.planner.simulate import homogeneous_plan, homogeneous_times
from hetero_sp.planner.solve import Planner

logger = get_logger(__name__)

_MODEL_KEYS = ("dim", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size")


def build_cost_model(cfg: Config, world_size: int, node_size: int, log: bool = True) -> CostModel:
    """The cost model of this run: the configured profile (rescaled by FLOPs when it was measured
    with another model size), the run's topology, ZeRO stage and allowed strategies.

    Raises the planner's :class:`~hetero_sp.planner.ProfileError` or
    :class:`~hetero_sp.planner.ClusterError` (user errors) when the config does not fit: an
    unreadable profile, model states that fill the memory, ..."""
    profile = load_profile(cfg.planner.profile)
    if any(getattr(profile.model, k) != getattr(cfg.model, k) for k in _MODEL_KEYS):
        if log:
            logger.warning(
                "profile %s was measured with another model size; its compute costs are carried "
                "over by FLOP ratios (an estimate): run `hetero-sp profile` with this model for "
                "accurate plans",
                cfg.planner.profile,
            )
        profile = rescale_profile(profile, cfg.model)
    if log and profile.precision != cfg.train.precision:
        logger.warning(
            "profile %s was measured in %s, the run trains in %s: predicted times and memory "
            "use the profile's precision; profile in the precision you train in",
            cfg.planner.profile,
            profile.precision,
            cfg.train.precision,
        )
    overrides: dict = {
        "gpus_per_node": node_size if node_size else world_size,
        "group_shapes": cfg.planner.group_shapes,
    }
    if cfg.planner.memory_gb:
        overrides["gpu_memory_bytes"] = cfg.planner.memory_gb * 2**30
    topology = profile.topology(world_size, **overrides)
    p = cfg.parallel
    softmax = SOFTMAX_STRATEGIES if p.softmax_sp == "auto" else (p.softmax_sp,)
    linear = LINEAR_STRATEGIES if p.linear_sp == "auto" else (p.linear_sp,)
    return CostModel(
        profile,
        topology,
        zero_stage=cfg.train.zero_stage,
        softmax_strategies=softmax,
        linear_strategies=linear,
        model=cfg.model,
        max_group_size=cfg.planner.max_group_size or None,
    )


def static_degree(cfg: Config) -> int | None:
    """The fixed group size of the static modes, None for the planned ones."""
    if cfg.parallel.sp_mode == "dp":
        return 1
    if cfg.parallel.sp_mode == "static":
        return cfg.parallel.sp_degree
    return None


def make_plan_fn(cfg: Config, cost: CostModel) -> Callable[[Sequence[int]], Plan]:
    """lengths -> validated plan, for the configured mode; a batch that cannot be planned raises
    :class:`PlanError`. The function pickles (module-level functions and a ``Planner``), so a
    run-ahead worker process can hold it."""
    return _plan_fn(cfg, cost)


def _static_plan(cost: CostModel, degree: int, lengths: Sequence[int]) -> Plan:
    plan = homogeneous_plan(lengths, cost, degree)
    if plan is None:
        longest = max(range(len(lengths)), key=lambda i: lengths[i])
        need = cost.groups[degree].memory(lengths[longest])
        raise PlanError(
            f"sequence {longest} ({lengths[longest]} tokens) needs {need / 2**30:.2f} GiB "
            f"per rank on groups of {degree}, more than the "
            f"{cost.memory_limit_bytes / 2**30:.2f} GiB available; raise "
            "parallel.sp_degree, planner.memory_gb or use parallel.sp_mode=hetero"
        )
    return plan


def _homogeneous_plan(cost: CostModel, lengths: Sequence[int]) -> Plan:
    cost.check_lengths(lengths)
    times = homogeneous_times(lengths, cost)
    if not times:
        raise PlanError("no single group size fits this batch; use parallel.sp_mode=hetero")
    best = min(times, key=lambda d: (times[d], d))
    return homogeneous_plan(lengths, cost, best)


def _plan_fn(cfg: Config, cost: CostModel) -> Callable[[Sequence[int]], Plan]:
    degree = static_degree(cfg)
    if degree is not None:
        if degree not in cost.groups:
            raise ConfigError(
                f"parallel.sp_degree: groups of {degree} ranks are not possible here (possible: "
                f"{', '.join(map(str, cost.sizes))}); pick one of those"
            )
        return functools.partial(_static_plan, cost, degree)
    if cfg.parallel.sp_mode == "homogeneous":
        return functools.partial(_homogeneous_plan, cost)
    return Planner(cost, cfg.planner)
