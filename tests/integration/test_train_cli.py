"""The training CLI under torchrun: the README's demo command trains and the loss falls; a run
writes metrics and an atomic checkpoint and resumes from it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hetero_sp.cli import main as cli_main
from hetero_sp.config import load_config
from hetero_sp.core.flops import training_flops
from hetero_sp.engine import checkpoint as ckpt_io
from hetero_sp.engine.metrics import read_metrics
from hetero_sp.engine.plots import plot_run
from tests.launch_common import free_port

ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = (
    "loss/train",
    "throughput/tokens_per_s",
    "throughput/mfu",
    "memory/peak_bytes_max_rank",
    "plan/solve_ms",
    "plan/imbalance",
    "comm/bytes",
    "padding/tokens",
)


def _env():
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/hetero_sp/torch_extensions"))
    return env


def _torchrun(nproc, *overrides, timeout=600):
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
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


def _ranks(nproc, *overrides, timeout=300):
    """Start the ranks of ``hetero_sp.train`` the way torchrun would (its environment variables),
    without torchrun: torchrun answers any failed worker with its own traceback
    (ChildFailedError) and exit status 1, which would hide what the workers printed and
    returned. Returns each rank's (exit status, stdout + stderr)."""
    env = _env()
    env.update(
        MASTER_ADDR="127.0.0.1",
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_PORT=str(free_port()),
    )
    cmd = [sys.executable, "-m", "hetero_sp.train", "--config", "configs/cpu-tiny.toml",
           "train.progress=false", *overrides]  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(nproc)
    ]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _assert_stopped_on_bad_input(results, message):
    """Every rank exits with status 2; rank 0 prints the message once; no traceback anywhere;
    DeepSpeed never started (its engine logs a "DeepSpeed" banner when it does)."""
    outputs = "\n".join(out for _, out in results)
    assert [rc for rc, _ in results] == [2] * len(results), outputs[-6000:]
    assert message in results[0][1], outputs[-6000:]
    assert outputs.count("error: ") == 1, outputs[-6000:]
    assert "Traceback" not in outputs, outputs[-6000:]
    return outputs


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["parallel.sp_mode=static", "parallel.sp_degree=4"],
            "error: parallel.sp_degree: groups of 4 ranks are not possible here (possible: 1, 2)",
        ),
        (["data.dataset={tmp}/nowhere"], "error: data.dataset: {tmp}/nowhere is not a prepared"),
        (["data.tokens_per_step=1073741824"], "fewer than one step of 1073741824"),
        (["parallel.softmax_backend=flash"], "error: softmax backend 'flash' needs flash-attn"),
    ],
    ids=["sp_degree", "missing_dataset", "dataset_too_small", "backend"],
)
def test_bad_input_stops_every_rank_before_deepspeed(overrides, message, tmp_path):
    """Bad input found once the ranks have joined: one line from rank 0, status 2 from every
    rank, and it is found before DeepSpeed starts (seconds, not minutes)."""
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    outputs = _assert_stopped_on_bad_input(
        _ranks(2, f"train.out_dir={tmp_path}/run", *overrides), message.format(tmp=tmp_path)
    )
    assert "DeepSpeed" not in outputs


@pytest.mark.slow
def test_batch_no_plan_fits_stops_every_rank(tmp_path):
    """The first batch's plan fails on the solving rank (rank 0) after DeepSpeed started; the
    other rank learns it through the plan broadcast and stops as quietly."""
    outputs = _assert_stopped_on_bad_input(
        _ranks(2, f"train.out_dir={tmp_path}/run", "planner.memory_gb=0.02", timeout=600),
        "error: sequence 0 (8192 tokens) needs",
    )
    assert "DeepSpeed" in outputs  # the banner the fast cases check is really printed


@pytest.mark.slow
def test_readme_demo_command_trains_and_loss_falls(tmp_path):
    """The README's main-job command as written (with a shorter run and its own folder): 12 of
    its 60 steps take the loss from about 5.2 (mean of the first 4) to about 3.6 (last 4)."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            "bash",
            "launch/demo_cpu.sh",
            "train.steps=12",
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
    assert len(losses) == 12
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.8, f"loss did not fall: first 4 steps {first:.3f}, last 4 {last:.3f}"
    assert (out / "checkpoints" / "step_00000012" / "manifest.json").is_file()
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
    # Rank 0 solves these plans in a spawned worker process (the resumed part: on a thread).
    _torchrun(2, "train.steps=4", *small, "planner.ahead_worker=process")
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000004"]
    meta = json.loads((out / "checkpoints" / "step_00000004" / "meta.json").read_text())
    assert meta["step"] == 4 and meta["config"]["train"]["zero_stage"] == 2

    # The resumed part divides by a configured peak: 0.5 TFLOP/s per rank, 1e12 for the run.
    proc = _torchrun(2, "train.steps=6", *small, "train.peak_tflops=0.5")
    assert "resumed from" in proc.stderr and "at step 4" in proc.stderr
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    model = load_config(ROOT / "configs/cpu-tiny.toml", small).model
    plans = {
        r["step"]: r["plan"]["lengths"]
        for r in map(json.loads, (out / "plans.jsonl").read_text().splitlines())
    }
    for r in records[4:]:
        expected = training_flops(model, plans[r["step"]]) / r["time/step_s"] / 1e12
        assert r["throughput/mfu"] == pytest.approx(expected, rel=1e-12), r["step"]
    for r in records:  # the namespaced keys benchmarks and plots read
        for key in METRIC_KEYS:
            assert key in r, f"step {r['step']}: no {key} in {sorted(r)}"
        for prefix in ("loss/", "memory/", "padding/"):
            assert any(k.startswith(prefix) for k in r), f"step {r['step']}: no {prefix} key"
        assert r["throughput/tokens_per_s"] > 0 and 0 < r["throughput/mfu"] < 1
        assert r["plan/solve_ms"] >= 0 and r["plan/imbalance"] >= 0 and r["comm/bytes"] >= 0
    pngs = plot_run(out)  # the plots of what a real run wrote
    assert [p.name for p in pngs] == [
        "loss.png",
        "throughput.png",
        "plan_step_1_predicted.png",
        "plan_step_1_measured.png",
        "plan_step_6_predicted.png",
        "plan_step_6_measured.png",
    ]
    assert all(p.stat().st_size > 0 for p in pngs)

    # A checkpoint of another [model] is refused before DeepSpeed starts, without a traceback.
    _assert_stopped_on_bad_input(
        _ranks(2, "train.steps=8", *small[1:], "model.dim=48"),
        f"error: {out}/checkpoints/step_00000006 was written with another [model] config",
    )

    # A finished run started again resumes at its last step and saves that step again.
    proc = _torchrun(2, "train.steps=6", *small)
    assert "resumed from" in proc.stderr and "at step 6" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000004",
        "step_00000006",
    ]
    assert ckpt_io.load_latest(out).step == 6


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
