"""The per-step planner: cost model, MILP over heterogeneous SP groups, plans as data, and the
worker that solves the next step's plan while the current one trains. Pure: lengths, a cluster
topology and a cost model in, a plan out; no process group, no GPU.

Names are imported on first use, so ``hetero-sp`` commands that do not plan start fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PlanAhead": "ahead",
    "broadcast_share": "ahead",
    "CostModel": "cost",
    "GroupCost": "cost",
    "ulysses_allowed": "cost",
    "GroupPlan": "plan",
    "MicroBatchPlan": "plan",
    "Plan": "plan",
    "PlanError": "errors",
    "ProfileError": "errors",
    "ClusterError": "errors",
    "validate_plan": "plan",
    "Profile": "profile",
    "load_profile": "profile",
    "save_profile": "profile",
    "Planner": "solve",
    "PlannerConfig": "hetero_sp.config",
    "plan_batch": "solve",
    "Link": "cluster",
    "Topology": "cluster",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hetero_sp.planner' has no attribute {name!r}")
    module = _EXPORTS[name]
    if "." not in module:
        module = f"hetero_sp.planner.{module}"
    return getattr(importlib.import_module(module), name)
