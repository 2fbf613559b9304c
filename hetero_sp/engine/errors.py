"""Bad input versus bugs: which errors the training CLI reports as one line, and how a failure on
one rank reaches the others.

Input errors (a config value, a dataset, a checkpoint of another run, a batch no plan fits)
carry a message that says what to change; ``hetero_sp.train`` prints it once, on rank 0, and
exits with status 2. Anything else is a bug and keeps its traceback.

Every input error is raised on all ranks at the same point of the run: each rank checks the
config itself, and what only some ranks read (rank 0 opens the dataset first, other ranks load
their own RNG state, rank 0 solves the plans) is shared with :func:`agree` or
:func:`share_plan_errors`, so no rank is left waiting in a collective for one that stopped.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

import torch.distributed as dist

from hetero_sp.config import ConfigError
from hetero_sp.data.dataset import DatasetError
from hetero_sp.data.prepare import PrepareError
from hetero_sp.data.samplers.base import SamplerStateError
from hetero_sp.engine.checkpoint import CheckpointError
from hetero_sp.parallel.heads import UnsupportedGroupSize
from hetero_sp.planner.plan import Plan, PlanError


class PeerInputError(RuntimeError):
    """Another rank stopped on bad input; the message names that rank and its error."""


INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    PlanError,
    CheckpointError,
    DatasetError,
    PrepareError,
    SamplerStateError,
    UnsupportedGroupSize,
    PeerInputError,
)
_INPUT_NAMES = frozenset(cls.__name__ for cls in INPUT_ERRORS)


def agree(failure: BaseException | None, group=None) -> None:
    """Collective: raise on every rank when any rank failed, else return.

    A failing rank re-raises its own error; the others raise :class:`PeerInputError` when the
    first failing rank's error is bad input, a ``RuntimeError`` naming it otherwise."""
    mine = None if failure is None else (type(failure).__name__, str(failure))
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    if failure is not None:
        raise failure
    for rank, reported in enumerate(everyone):
        if reported is not None:
            name, message = reported
            if name in _INPUT_NAMES:
                raise PeerInputError(f"rank {rank}: {message}")
            raise RuntimeError(f"rank {rank} failed: {name}: {message}")


# broadcast_share (hetero_sp.planner.ahead) fails the ranks that do not solve with
# "the planner failed on rank <src>: <repr of the solver's error>".
_PLANNER_FAILED = re.compile(r"the planner failed on rank (\d+): (\w+)\((.*)\)$", re.DOTALL)


def _unquote(args: str) -> str:
    """The message inside an exception's repr (``'text'`` -> ``text``)."""
    try:
        value = ast.literal_eval(args)
    except (ValueError, SyntaxError):
        return args
    return value if isinstance(value, str) else args


def share_plan_errors(
    share: Callable[[Plan | BaseException | None], Plan],
) -> Callable[[Plan | BaseException | None], Plan]:
    """Wrap a plan ``share`` function so that the ranks that do not solve stop with
    :class:`PeerInputError` when the solver's error is bad input (the solver reports it)."""

    def wrapped(plan: Plan | BaseException | None) -> Plan:
        try:
            return share(plan)
        except RuntimeError as err:
            found = _PLANNER_FAILED.match(str(err))
            if plan is None and found and found.group(2) in _INPUT_NAMES:
                raise PeerInputError(f"rank {found.group(1)}: {_unquote(found.group(3))}") from err
            raise

    return wrapped
