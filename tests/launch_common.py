"""Running the launch scripts from tests: environment, unique ports, a process session that is
checked empty afterwards (no stray workers), and reading what a run wrote."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hetero_sp.engine.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
SHIMS = ROOT / "tests" / "fake_slurm"
TIMEOUT_S = 600  # a 2-step run takes ~20 s alone; other work on the 2 cores can make it 10x slower
# A small model and batch (the brief's sizes): the point is the launch path, not the training.
SMALL = [
    "model.dim=32",
    "model.ffn_dim=64",
    "data.tokens_per_step=1024",
    "data.max_seq_len=256",
    "train.steps=2",
    "train.ckpt_every=0",
    "train.progress=false",
]
# Variables a launcher reads; a value left in the calling shell must not leak into a test.
_LAUNCH_VARS = (
    "NPROC_PER_NODE",
    "NNODES",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RDZV_ID",
    "MAX_RESTARTS",
    "LOG_DIR",
    "CONSOLE_RANKS",
    "CPU_PROCS",
    "HETERO_SP_FAULT_STEP",
    "HETERO_SP_FAULT_RANK",
)


# Rendezvous ports are taken below Linux's ephemeral range (32768-60999 by default): a port in
# it can be held at any moment by an outgoing connection, such as gloo's between the ranks of
# another test (a run failed with EADDRINUSE on 33013 that way).
_PORTS = range(20000, 32700)
_given: set[int] = set()


def _bindable(p: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", p))  # no SO_REUSEADDR: a port in TIME_WAIT counts as taken
        except OSError:
            return False
    return True


def free_port() -> int:
    """A rendezvous port that is free now and not handed out before in this process. The
    search starts at a place that depends on the process id, so parallel sessions start
    apart; another program may still take the port before the launcher binds it, but nothing
    in the ephemeral range can."""
    span = len(_PORTS)
    start = (os.getpid() * 97) % span
    for i in range(span):
        p = _PORTS[(start + 7 * i) % span]  # 7 is prime to the span: every port is visited
        if p not in _given and _bindable(p):
            _given.add(p)
            return p
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1} on this machine")


def launch_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM")
    }
    # The launchers take .venv/bin/torchrun when the checkout has one, else torchrun on PATH:
    # put this interpreter's first so a checkout without .venv uses the same installation.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/hetero_sp/torch_extensions"))
    env.update(extra)
    return env


def _session_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _marked(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (a test's unique tmp path). torchrun
    starts each worker in a session of its own, so the launcher's session does not hold them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def _left_over(pgids: list[int], marker: str | None) -> list[str]:
    left = [f"session {pgid}" for pgid in pgids if _session_alive(pgid)]
    return left + [f"pid {pid}" for pid in (_marked(marker) if marker else [])]


def _kill(pgids: list[int], marker: str | None) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in _marked(marker) if marker else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its shells and torchrun agents share its process group)."""
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def collect(proc: subprocess.Popen, marker: str | None, timeout: float = TIMEOUT_S) -> str:
    """``proc``'s output once it exits; past ``timeout`` everything it started (its session and
    the processes with ``marker``) is killed and the test fails."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        _kill([proc.pid], marker)
        out = proc.communicate()[0]
        raise AssertionError(f"{proc.args} ran past {timeout} s:\n{out[-6000:]}") from None


def check_none_left(procs: list[subprocess.Popen], marker: str | None) -> None:
    """Fail (after killing them) if anything the exited ``procs`` started is still running: a
    process in their sessions, or one whose command line has ``marker``."""
    pgids = [p.pid for p in procs]
    deadline = time.monotonic() + 15  # orphans exit right after their parent; give them a moment
    while _left_over(pgids, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _left_over(pgids, marker)
    if left:
        _kill(pgids, marker)
    assert not left, f"{[p.args for p in procs]} left {left} running after they exited"


def finish(proc: subprocess.Popen, marker: str | None, timeout: float = TIMEOUT_S) -> str:
    out = collect(proc, marker, timeout)
    check_none_left([proc], marker)
    return out


def run(
    cmd: list[str], env: dict[str, str], marker: str | None, timeout: float = TIMEOUT_S
) -> tuple[int, str]:
    proc = start(cmd, env)
    out = finish(proc, marker, timeout)
    return proc.returncode, out


def trained_steps(out_dir: Path) -> list[int]:
    """Steps in the run's metrics.jsonl, after checking each has a finite loss."""
    records = read_metrics(out_dir / "metrics.jsonl")
    for r in records:
        assert math.isfinite(r["loss/train"]), r
    return [r["step"] for r in records]


def topology_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "INFO hetero_sp.engine.trainer: topology:" in line]
