"""SIGINT / SIGTERM handling of a training process: at once before training, only noted (for
the ranks' agreement after a step) once it runs; the one line rank 0 prints for each case."""

import os
import signal
from pathlib import Path

import pytest

from hetero_sp.engine.interrupt import Interrupted, StopSignals, interrupted_line

ARGS = ["--config", "configs/cpu-tiny.toml", "train.steps=60"]
CKPT = Path("runs/x/checkpoints")


@pytest.fixture
def stop():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield StopSignals().install()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_before_training_stops_at_once(stop):
    with pytest.raises(Interrupted) as raised:
        os.kill(os.getpid(), signal.SIGTERM)
    assert raised.value.signum == signal.SIGTERM and raised.value.step is None
    os.kill(os.getpid(), signal.SIGINT)  # a second signal (SLURM and torchrun both send one)
    assert stop.signum == signal.SIGTERM
    assert stop.ends_quietly(RuntimeError("a peer rank left"))  # its doing, before training


def test_a_signal_during_training_is_only_noted(stop):
    stop.defer()
    os.kill(os.getpid(), signal.SIGINT)  # no exception: the ranks stop after the step
    assert stop.signum == signal.SIGINT
    assert stop.ends_quietly(Interrupted(signal.SIGINT, 3, None))
    assert not stop.ends_quietly(RuntimeError("a bug"))  # keeps its traceback


def _line(step, checkpoint, resume=True):
    return interrupted_line(
        signal.SIGINT, step, checkpoint, steps=60, resume=resume, out_dir="runs/x", train_args=ARGS
    )


def test_the_line_names_the_checkpoint_and_the_command():
    same = "(... -m hetero_sp.train --config configs/cpu-tiny.toml train.steps=60)"
    assert _line(7, CKPT / "step_00000007") == (
        "interrupted: SIGINT after step 7 of 60; last checkpoint runs/x/checkpoints/step_00000007;"
        f" run the same command to resume from it {same}"
    )
    assert _line(7, CKPT / "step_00000004").endswith(
        f"resume from it, training steps 5-7 again {same}"
    )
    assert _line(7, None) == (
        f"interrupted: SIGINT after step 7 of 60, no checkpoint saved; the same command starts "
        f"over {same}"
    )
    assert _line(None, None) == (
        "interrupted: SIGINT while starting, before training; the same command resumes from the "
        f"newest checkpoint in runs/x, if any {same}"
    )


def test_without_resume_the_command_asks_for_it():
    assert _line(7, CKPT / "step_00000007", resume=False).endswith(
        "; to resume from it, run (... -m hetero_sp.train --config configs/cpu-tiny.toml "
        "train.steps=60 train.resume=true)"
    )
    assert _line(None, None, resume=False).startswith(
        "interrupted: SIGINT while starting, before training; the same command starts over"
    )
