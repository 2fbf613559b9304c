"""What the benchmarks share: gloo ranks in spawned processes, and training runs under torchrun.

The benchmark scripts run as ``python benchmarks/<name>.py``, which puts this folder on
``sys.path``; importing this module also puts the repository root there, so the scripts can
import ``hetero_sp`` from a checkout that was not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hetero_sp.engine.deepspeed_ops import use_environment_dir  # noqa: E402
from hetero_sp.engine.metrics import read_metrics  # noqa: E402


def _gloo_rank(rank, world, store_path, out_path, measure, args):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=900)
    )
    group = dist.new_group(list(range(world)))
    result = measure(rank, world, group, *args)
    if rank == 0:
        Path(out_path).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def spawn_gloo(measure, world: int, *args):
    """Runs ``measure(rank, world, group, *args)`` on ``world`` spawned processes joined by gloo
    over loopback (one torch thread each) and returns what rank 0's call returned (JSON-able).
    ``measure`` must be a module-level function, so the spawned processes can import it."""
    with tempfile.TemporaryDirectory(prefix="hsp-bench-") as tmp:
        out_path = os.path.join(tmp, "result.json")
        mp.start_processes(
            _gloo_rank,
            args=(world, os.path.join(tmp, "store"), out_path, measure, args),
            nprocs=world,
            start_method="spawn",
        )
        return json.loads(Path(out_path).read_text())


def torchrun_train(
    config: str, nproc: int, overrides: list[str], out_dir: Path, port: int
) -> list[dict]:
    """Trains ``config`` (a path relative to the repository) with ``overrides`` on ``nproc``
    local ranks under torchrun (rendezvous on loopback at ``port``, no progress bar) and returns
    the run's per-step metrics; stops the benchmark with the run's stderr when it fails."""
    env = dict(os.environ)
    use_environment_dir(env)  # DeepSpeed's op: this environment's own build folder unless set
    cmd = [
        str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        "-m", "hetero_sp.train", "--config", config, *overrides,
        f"train.out_dir={out_dir}", "train.progress=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{config} {overrides} failed:\n{proc.stderr[-4000:]}")
    return read_metrics(out_dir / "metrics.jsonl")
