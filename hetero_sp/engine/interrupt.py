"""Stopping a training run on SIGINT (Ctrl-C) or SIGTERM (what SLURM sends before it kills a job).

Every rank gets the signal: torchrun passes it on to each worker, SLURM signals every process
of the job. Before the training loop, a signal stops the rank at once (:class:`Interrupted` is
raised wherever the rank is). In the loop it is only noted: after each step the ranks agree in
one collective (:meth:`StopSignals.agreed`) whether any rank was signalled, so all of them stop
after the same step; a rank that stopped on its own would leave the others waiting in their
next collective. With ``train.ckpt_on_signal`` they save that step's checkpoint first. Rank 0
then prints one line (:func:`interrupted_line`): the step, the checkpoint and the command that
resumes; every rank exits with status 128 + the signal number (130 for SIGINT, 143 for
SIGTERM), as a shell reports a process a signal ended.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):  # noqa: N818 - named like KeyboardInterrupt, which it replaces
    """A run stopped by SIGINT or SIGTERM. A ``BaseException``, as ``KeyboardInterrupt`` is, so
    that no ``except Exception`` on its way out takes it for a failure."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.step = step
        """Steps trained when the ranks stopped together; None when stopped before training."""
        self.checkpoint = checkpoint
        """The newest checkpoint of the run, None when it has none."""


class StopSignals:
    """SIGINT and SIGTERM handlers that stop the run: at once until :meth:`defer`, then at the
    next step boundary the ranks agree on. Only the first signal counts; later ones (SLURM and
    torchrun both signal a worker) change nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        """The first signal this rank got."""
        self.deferred = False

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if not self.deferred:
            raise Interrupted(signum)

    def ends_quietly(self, err: BaseException) -> bool:
        """Whether ``err`` ends the run as the signal's doing, with no traceback: the
        :class:`Interrupted` raised here or by the trainer, or, before training, any failure
        after a signal (a peer rank that stopped first breaks the collective this one is in)."""
        if self.signum is None:
            return False
        return isinstance(err, Interrupted) or not self.deferred

    def defer(self) -> None:
        """From now on a signal is only noted, for :meth:`agreed` to act on."""
        self.deferred = True

    def agreed(self, group=None) -> int | None:
        """Collective over ``group`` (gloo: the tensor is on the CPU): the signal any rank got,
        None when none did."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return int(flag.item()) or None


def interrupted_line(
    signum: int,
    step: int | None,
    checkpoint: Path | None,
    *,
    steps: int,
    resume: bool,
    out_dir: str,
    train_args: list[str],
) -> str:
    """The one line rank 0 prints: where the run stopped and the command that goes on from
    there (``train_args`` are the arguments of ``hetero_sp.train``; the launcher's own are
    left to the reader as ``...``)."""
    from hetero_sp.engine.checkpoint_files import step_of  # imports torch: not at start-up

    name = signal.Signals(signum).name
    same = f"(... -m hetero_sp.train {shlex.join(train_args)})"
    if step is None:
        then = (
            f"resumes from the newest checkpoint in {out_dir}, if any" if resume else "starts over"
        )
        return (
            f"interrupted: {name} while starting, before training; the same command {then} {same}"
        )
    where = f"interrupted: {name} after step {step} of {steps}"
    if checkpoint is None:
        return f"{where}, no checkpoint saved; the same command starts over {same}"
    saved = step_of(checkpoint)
    lost = "" if saved == step else f", training steps {saved + 1}-{step} again"
    if resume:
        how = f"run the same command to resume from it{lost} {same}"
    else:
        args = shlex.join([*train_args, "train.resume=true"])
        how = f"to resume from it{lost}, run (... -m hetero_sp.train {args})"
    return f"{where}; last checkpoint {checkpoint}; {how}"
