"""SIGINT (Ctrl-C) and SIGTERM (SLURM, which signals every process of a job) on a 2-rank run
under the single-node launcher: the ranks stop after the same step, rank 0 prints one line
naming the checkpoint and the command that resumes, nothing prints a traceback, and everything
exits within seconds (it was a traceback per rank and from torchrun, and ~27 s). With
train.ckpt_on_signal the checkpoint of that step exists and the same command resumes from it.
"""

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_golden_losses import _prepare
from tests.launch_common import SMALL, check_none_left, free_port, launch_env, run, start

STEPS = 1000  # far more than the test lets run
EXIT_S = 20  # the ranks stop after their step (well under a second here) and leave together
LINE = re.compile(r"^\[default0\]:interrupted: .*$", re.M)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("interrupt") / "dataset"
    _prepare(out)
    return out


def _command(dataset: Path, out_dir: Path, p: int, *overrides: str) -> list[str]:
    return ["bash", "launch/torchrun_single_node.sh", "--nproc-per-node", "2", "--master-port",
            str(p), "--log-dir", str(out_dir.parent / "logs"), "--config", "configs/cpu-tiny.toml",
            *SMALL, f"data.dataset={dataset}", f"train.out_dir={out_dir}", *overrides]  # fmt: skip


class _Run:
    """A launcher whose output is read as it comes, so the test can wait for a line."""

    def __init__(self, cmd: list[str], marker: str):
        self.proc = start(cmd, launch_env())
        self.marker = marker  # in the workers' command lines: torchrun gives each its session
        self.out: list[str] = []
        self._reader = threading.Thread(target=lambda: self.out.extend(self.proc.stdout))
        self._reader.start()

    def text(self) -> str:
        return "".join(self.out)

    def wait_for(self, ready, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"exited before {what}:\n{self.text()[-6000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{self.text()[-6000:]}"
            time.sleep(0.1)

    def signal(self, sig: int, workers_too: bool = False) -> float:
        """Send ``sig`` to torchrun (the launcher execs it) and, as SLURM does, to its workers;
        returns the seconds until everything exited."""
        pids = [self.proc.pid]
        if workers_too:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(pid) for pid in children.split()]
        start_s = time.monotonic()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            self.proc.wait(timeout=EXIT_S)
        finally:
            elapsed = time.monotonic() - start_s
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(timeout=30)
            check_none_left([self.proc], self.marker)
        return elapsed


def _steps_done(out_dir: Path) -> int:
    metrics = out_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def _one_line(out: str) -> str:
    lines = LINE.findall(out)
    assert len(lines) == 1, out[-6000:]
    assert "Traceback" not in out, out[-6000:]
    return lines[0].removeprefix("[default0]:")


@pytest.mark.slow
def test_ctrl_c_saves_the_step_and_the_same_command_resumes(dataset, tmp_path):
    out_dir = tmp_path / "run"
    overrides = [f"train.steps={STEPS}", "train.log_every=1"]  # train.ckpt_on_signal: default
    job = _Run(_command(dataset, out_dir, free_port(), *overrides), str(tmp_path))
    job.wait_for(lambda: _steps_done(out_dir) >= 2, "2 trained steps")
    elapsed = job.signal(signal.SIGINT)

    out = job.text()
    assert job.proc.returncode == 128 + signal.SIGINT, out[-6000:]
    assert elapsed < EXIT_S
    line = _one_line(out)
    found = re.fullmatch(
        r"interrupted: SIGINT after step (\d+) of 1000; last checkpoint (\S+); run the same "
        r"command to resume from it \(\.\.\. -m hetero_sp\.train (.*)\)",
        line,
    )
    assert found, line
    step, checkpoint = int(found.group(1)), Path(found.group(2))
    assert found.group(3).startswith("--config configs/cpu-tiny.toml ")
    assert checkpoint == out_dir / "checkpoints" / f"step_{step:08d}"
    assert (checkpoint / "manifest.json").is_file()
    assert _steps_done(out_dir) == step  # both ranks stopped after that step, none trained on

    # The same command (a nearer end, so that it finishes) goes on from that checkpoint.
    rc, again = run(
        _command(dataset, out_dir, free_port(), f"train.steps={step + 1}", "train.log_every=1"),
        launch_env(),
        str(tmp_path),
    )
    assert rc == 0, again[-6000:]
    assert f"resumed from {checkpoint} at step {step}" in again


@pytest.mark.slow
def test_sigterm_to_every_process_stops_without_a_checkpoint_when_asked(dataset, tmp_path):
    out_dir = tmp_path / "run"
    overrides = [f"train.steps={STEPS}", "train.log_every=1", "train.ckpt_on_signal=false"]
    job = _Run(_command(dataset, out_dir, free_port(), *overrides), str(tmp_path))
    job.wait_for(lambda: _steps_done(out_dir) >= 2, "2 trained steps")
    elapsed = job.signal(signal.SIGTERM, workers_too=True)

    out = job.text()
    assert job.proc.returncode == 128 + signal.SIGTERM, out[-6000:]
    assert elapsed < EXIT_S
    line = _one_line(out)
    assert re.fullmatch(
        r"interrupted: SIGTERM after step \d+ of 1000, no checkpoint saved; the same command "
        r"starts over \(\.\.\. -m hetero_sp\.train .*\)",
        line,
    ), line
    assert not (out_dir / "checkpoints").exists() or not any((out_dir / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_signal_while_starting_stops_at_once(dataset, tmp_path):
    out_dir = tmp_path / "run"
    job = _Run(_command(dataset, out_dir, free_port(), f"train.steps={STEPS}"), str(tmp_path))
    job.wait_for(lambda: "INFO hetero_sp.engine.trainer: data:" in job.text(), "data: line")
    elapsed = job.signal(signal.SIGINT)  # rank 0 has opened the data; DeepSpeed starts next

    out = job.text()
    assert job.proc.returncode == 128 + signal.SIGINT, out[-6000:]
    assert elapsed < EXIT_S
    line = _one_line(out)
    assert line.startswith(
        f"interrupted: SIGINT while starting, before training; the same command resumes from "
        f"the newest checkpoint in {out_dir}, if any (... -m hetero_sp.train --config "
    ), line
