"""The training CLI under torchrun: the README's demo command trains and the loss falls; a run
writes metrics and an atomic checkpoint and resumes from it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hetero_sp.cli import main as cli_main
from hetero_sp.engine.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/hetero_sp/torch_extensions"))
    env["MASTER_PORT"] = str(29600 + os.getpid() % 200)
    return env


def _torchrun(nproc, *overrides, timeout=600):
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        _env()["MASTER_PORT"],
        "-m",
        "hetero_sp.train",
        "--config",
        "configs/cpu-tiny.toml",
        "train.progress=false",
        *overrides,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.mark.slow
def test_readme_demo_command_trains_and_loss_falls(tmp_path):
    """The README's main-job command as written (with a shorter run and its own folder)."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            "bash",
            "launch/demo_cpu.sh",
            "train.steps=30",
            f"train.out_dir={out}",
            "train.progress=false",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert f"metrics: {out}/metrics.jsonl" in proc.stdout
    losses = [r["loss/train"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 30
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.5, f"loss did not fall: first 10 steps {first:.3f}, last 10 {last:.3f}"
    assert (out / "checkpoints" / "step_00000030" / "manifest.json").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_two_rank_run_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    small = [
        "model.dim=32",
        "model.ffn_dim=64",
        "data.tokens_per_step=1024",
        "data.max_seq_len=256",
        f"train.out_dir={out}",
        "train.ckpt_every=2",
        "train.zero_stage=2",
    ]
    _torchrun(2, "train.steps=4", *small)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000004"]
    meta = json.loads((out / "checkpoints" / "step_00000004" / "meta.json").read_text())
    assert meta["step"] == 4 and meta["config"]["train"]["zero_stage"] == 2

    proc = _torchrun(2, "train.steps=6", *small)
    assert "resumed from" in proc.stderr and "at step 4" in proc.stderr
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_config_command_prints_resolved_values(capsys):
    assert (
        cli_main(["config", "--config", str(ROOT / "configs/cpu-tiny.toml"), "model.dim=64"]) == 0
    )
    out = capsys.readouterr().out
    assert "[model]" in out and "dim = 64" in out and 'layers = "LLLS"' in out


def test_config_reference_lists_every_key(capsys):
    assert cli_main(["config", "--reference"]) == 0
    out = capsys.readouterr().out
    assert "| `tokens_per_step` | `8192` |" in out
    assert "## [train]" in out
