"""Bad input versus bugs across ranks: how a failure on one rank reaches the others.

Input errors (a config value, a dataset, a checkpoint of another run, a batch no plan fits) are
:class:`~hetero_sp.core.errors.UserError`; ``hetero_sp.train`` prints one on rank 0 as one
``error:`` line and exits with status 2. Anything else is a bug and keeps its traceback.

Every input error is raised on all ranks at the same point of the run: each rank checks the
config itself, and what only some ranks read (rank 0 opens the dataset first, other ranks load
their own RNG state) is shared with :func:`agree`; plan errors travel with the plan itself
(:func:`hetero_sp.planner.broadcast_share`). Both send an
:data:`~hetero_sp.core.errors.ErrorRecord`, so no rank is left waiting in a collective for one
that stopped and no message is parsed back from text.
"""

from __future__ import annotations

import torch.distributed as dist

from hetero_sp.core.errors import PeerInputError, UserError, error_record, peer_error

INPUT_ERRORS: tuple[type[BaseException], ...] = (UserError,)
"""What the training CLI reports as one line (``PeerInputError`` is a ``UserError``)."""

__all__ = ["INPUT_ERRORS", "PeerInputError", "agree"]


def agree(failure: BaseException | None, group=None) -> None:
    """Collective: raise on every rank when any rank failed, else return.

    A failing rank re-raises its own error; the others raise :class:`PeerInputError` when the
    first failing rank's error is bad input, a ``RuntimeError`` naming it otherwise."""
    mine = None if failure is None else error_record(failure)
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    if failure is not None:
        raise failure
    for rank, reported in enumerate(everyone):
        if reported is not None:
            raise peer_error(rank, tuple(reported))
