"""What the planner reports as the user's to fix: a profile that cannot price this run, a
cluster description that cannot exist, a batch no plan can hold. Internal failures (a broken
MILP, an assignment that loses a sequence) are ``RuntimeError`` and keep their traceback."""

from __future__ import annotations

from hetero_sp.core.errors import UserError


class ProfileError(UserError):
    """A cost profile that is missing, malformed, or does not fit the model or cluster."""


class ClusterError(UserError):
    """A cluster description (world size, node size, memory, links) that cannot be planned."""


class PlanError(UserError):
    """A batch that cannot be planned, or a plan that must not be run; the message names the
    sequence, micro-batch or group and what to change."""
