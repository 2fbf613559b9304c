"""A run folder used again (issue 16), through the training CLI on 2 gloo ranks: a checkpoint
past ``train.steps`` is refused and one at it is "nothing to train"; a folder whose every
checkpoint is broken stops the run instead of starting it from step 0; ``train.resume=false``
moves the earlier run's files aside, and the checkpoint the new run names exists and is the
one the next start resumes from."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hetero_sp.engine import checkpoint as ckpt_io
from hetero_sp.engine.metrics import read_metrics
from tests.launch_common import free_port

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--config",
    "configs/cpu-tiny.toml",
    "model.dim=32",
    "model.ffn_dim=64",
    "data.tokens_per_step=1024",
    "data.max_seq_len=256",
    "parallel.sp_mode=dp",
    "train.ckpt_every=1",
    "train.progress=false",
]


def _ranks(out_dir: Path, *overrides: str, nproc: int = 2) -> list[tuple[int, str]]:
    """The ranks of ``hetero_sp.train`` started the way torchrun would (its environment), but
    without torchrun, whose own summary and status 1 would hide each rank's status. Returns each
    rank's (exit status, stdout + stderr)."""
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/hetero_sp/torch_extensions"))
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
    )
    cmd = [sys.executable, "-m", "hetero_sp.train", *SMALL, f"train.out_dir={out_dir}", *overrides]
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
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _finished(results) -> str:
    """Rank 0's output of a run every rank finished with status 0."""
    outputs = "\n".join(out for _, out in results)
    assert [rc for rc, _ in results] == [0] * len(results), outputs[-6000:]
    return results[0][1]


def _refused(results, message: str) -> str:
    """Every rank exits with status 2, rank 0 prints ``message`` once, without a traceback,
    before DeepSpeed starts (its engine logs a "DeepSpeed" banner when it does)."""
    outputs = "\n".join(out for _, out in results)
    assert [rc for rc, _ in results] == [2] * len(results), outputs[-6000:]
    assert message in results[0][1], outputs[-6000:]
    assert outputs.count("error: ") == 1, outputs[-6000:]
    assert "Traceback" not in outputs and "DeepSpeed" not in outputs, outputs[-6000:]
    return results[0][1]


def _named_checkpoint(out: str) -> Path:
    return Path(re.search(r"checkpoint: (\S+)", out).group(1))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_a_used_run_folder_never_loses_or_mixes_runs(tmp_path):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    _finished(_ranks(out, "train.steps=3"))
    assert _names(ckpts) == ["step_00000002", "step_00000003"]

    # train.steps below the checkpoint's step: refused, nothing written.
    _refused(
        _ranks(out, "train.steps=2"),
        f"error: train.steps: 2 is below step 3 of {ckpts}/step_00000003, the checkpoint this run "
        "resumes from; set train.steps above 3 to train on",
    )
    # At it: nothing to train, and the checkpoint named is the one that exists.
    rank0 = _finished(_ranks(out, "train.steps=3"))
    assert f"nothing to train: {ckpts}/step_00000003 is at step 3 = train.steps" in rank0
    assert _named_checkpoint(rank0) == ckpts / "step_00000003"
    assert _names(ckpts) == ["step_00000002", "step_00000003"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]

    # Every checkpoint broken: an error naming the folder and each problem, nothing rotated.
    (ckpts / "step_00000002" / "manifest.json").unlink()
    model = ckpts / "step_00000003" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    rank0 = _refused(
        _ranks(out, "train.steps=4"),
        f"error: no usable checkpoint in {ckpts}: {ckpts}/step_00000003",
    )
    assert "model.pt has 1000 bytes, expected" in rank0
    assert f"{ckpts}/step_00000002: no manifest.json" in rank0
    assert _names(ckpts) == ["step_00000002", "step_00000003"]

    # Starting over moves the earlier run aside; the new run's checkpoint is kept and named.
    rank0 = _finished(_ranks(out, "train.steps=1", "train.resume=false"))
    earlier = out / "earlier_run_1"
    assert (
        "train.resume=false: moved the earlier run's checkpoints, metrics.jsonl, plans.jsonl, "
        f"tensorboard, config.json into {earlier}"
    ) in rank0
    assert _named_checkpoint(rank0) == ckpts / "step_00000001"
    assert _names(ckpts) == ["step_00000001"]
    assert _names(earlier / "checkpoints") == ["step_00000002", "step_00000003"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert [r["step"] for r in read_metrics(earlier / "metrics.jsonl")] == [1, 2, 3]
    assert ckpt_io.load_latest(out).path == ckpts / "step_00000001"  # what the next start takes
