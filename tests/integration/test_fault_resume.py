"""Crash recovery under torchrun: a rank killed mid-training, torchrun restarts the workers,
they resume from the last checkpoint, and the run ends with per-step losses identical (bit for
bit) to an uninterrupted run of the same config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hetero_sp.engine.metrics import read_metrics
from tests.integration.test_golden_losses import BASE, _prepare
from tests.launch_common import free_port

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(out_dir: Path, dataset: Path, port: int, fault_step: int | None):
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/hetero_sp/torch_extensions"))
    env.pop("HETERO_SP_FAULT_STEP", None)
    if fault_step is not None:
        env.update(HETERO_SP_FAULT_STEP=str(fault_step), HETERO_SP_FAULT_RANK="1")
    overrides = [
        *BASE,
        "train.steps=6",
        "train.ckpt_every=2",
        "parallel.sp_mode=static",
        "parallel.sp_degree=2",
        f"data.dataset={dataset}",
        f"train.out_dir={out_dir}",
    ]
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "hetero_sp.train",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return proc


@pytest.mark.slow
def test_killed_rank_restarts_from_checkpoint_with_identical_losses(tmp_path):
    dataset = tmp_path / "dataset"
    _prepare(dataset)
    _torchrun(tmp_path / "clean", dataset, free_port(), fault_step=None)
    faulty = _torchrun(tmp_path / "faulty", dataset, free_port(), fault_step=4)

    assert "[fault injection] rank 1 exits before step 4" in faulty.stderr
    assert (tmp_path / "faulty" / ".fault_injected").is_file()
    assert "resumed from" in faulty.stderr and "at step 2" in faulty.stderr
    clean = [
        (r["step"], r["loss/train"]) for r in read_metrics(tmp_path / "clean" / "metrics.jsonl")
    ]
    resumed = [
        (r["step"], r["loss/train"]) for r in read_metrics(tmp_path / "faulty" / "metrics.jsonl")
    ]
    assert [s for s, _ in clean] == [1, 2, 3, 4, 5, 6]
    assert resumed == clean
