"""The two kinds of failure: what a user can fix, and everything else.

A :class:`UserError` is bad input (a config value, a data file, a checkpoint, a batch the
cluster cannot hold): the command line prints its message as one ``error:`` line and exits with
status 2. Anything else that escapes is a bug or an environment failure and keeps its
traceback. Code that checks an internal invariant raises ``AssertionError``, ``RuntimeError`` or
a plain ``ValueError``, never ``UserError``, so a bug never reads as a user's mistake.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
"""Process status of a run stopped by a :class:`UserError` (argparse's status for bad usage)."""


class UserError(ValueError):
    """Input a user can change; the message says what is wrong and what to change.

    It subclasses ``ValueError`` so callers that validate arguments keep their usual contract;
    handlers that turn errors into the one-line report catch ``UserError`` only."""


class PeerInputError(UserError):
    """Another rank stopped on bad input; the message names that rank and its error."""


ErrorRecord = tuple[str, bool, str]
"""How a failure crosses ranks: (exception class name, is it a :class:`UserError`, message).
Plain data, so it travels through ``all_gather_object`` or ``broadcast_object_list`` without
pickling exception objects and is read back without parsing text."""


def error_record(err: BaseException) -> ErrorRecord:
    return type(err).__name__, isinstance(err, UserError), str(err)


def peer_error(rank: int, record: ErrorRecord, what: str = "failed") -> Exception:
    """The error a rank raises for a failure another rank reported: :class:`PeerInputError`
    for a user error (the same one-line message, prefixed with the rank), else a
    ``RuntimeError`` naming the rank and the exception class."""
    name, is_user, message = record
    if is_user:
        return PeerInputError(f"rank {rank}: {message}")
    return RuntimeError(f"rank {rank} {what}: {name}: {message}")
