"""``hetero-sp simulate`` as a process: a lengths file or a prepared dataset folder in, the
comparison table out (and JSON); bad input is one ``error:`` line and status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hetero_sp.data.prepare import prepare
from hetero_sp.data.sources import TextSource
from hetero_sp.data.tokenizer import load_tokenizer
from hetero_sp.planner.compare import HEADER

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--time-limit", "0.1", "--flexsp-time-limit", "0.2"]
SPLIT = "planner.split_search=false"  # one split per step: the command is under test here


def _simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hetero_sp.cli", "simulate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_simulate_a_lengths_file_prints_the_table_and_writes_json(tmp_path):
    rng = np.random.default_rng(0)
    lengths = np.clip(np.exp(rng.normal(7.5, 1.2, 300)), 16, 200_000).astype(int)
    corpus = tmp_path / "lengths.txt"
    corpus.write_text("\n".join(map(str, lengths)) + "\n\n")
    out = tmp_path / "sim.json"
    run = _simulate(
        str(corpus), SPLIT, "--gpus", "8", "--sequences-per-step", "24", *FAST, "--json", str(out)
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    row = lines[lines.index(HEADER) + 1].split()
    assert row[:4] == ["8", "lengths.txt", "24", "seqs"]
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert result["gpus"] == 8 and result["batch"] == "24 seqs" and summary["steps_run"] == 2
    assert summary["hetero_s"] >= summary["lower_bound_s"] > 0 and summary["speedup_vs_homog"] > 0
    assert summary["flexsp"]["ran"] and summary["flexsp"]["steps_ok"] == 2
    assert summary["megatron"]["ran"] or "not installed" in summary["megatron"]["reason"]
    assert all(s["max_len"] <= result["max_len"] for s in summary["steps"])


def test_simulate_a_dataset_folder_by_tokens_per_step(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, size in enumerate([300, 5_000, 40_000, 1_200]):
        (docs / f"{i}.txt").write_text("x" * size)
    prepare(
        [TextSource(p) for p in sorted(docs.iterdir())],
        tmp_path / "ds",
        load_tokenizer("byte"),
        progress=False,
    )
    run = _simulate(
        str(tmp_path / "ds"),
        SPLIT,
        "--gpus",
        "4",
        "--tokens-per-step",
        "60000",
        "--no-megatron",
        *FAST,
    )
    assert run.returncode == 0, run.stderr
    assert "4 documents" in run.stdout and HEADER in run.stdout
    assert "Megatron" not in run.stdout.split(HEADER)[1]  # left out: no note under the row


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, ["--gpus", "8", "--sequences-per-step", "4"], "does not exist"),
        ("100\n2x0\n", ["--gpus", "8", "--sequences-per-step", "4"], "line 2: '2x0'"),
        ("100\n-5\n", ["--gpus", "8", "--sequences-per-step", "4"], "line 2: '-5'"),
        ("", ["--gpus", "8", "--sequences-per-step", "4"], "holds no documents"),
        ("100\n", ["--gpus", "0", "--sequences-per-step", "4"], "--gpus must be at least 1"),
        ("100\n", ["--gpus", "8", "--tokens-per-step", "0"], "a positive number"),
        ("100\n", ["--gpus", "8", "--sequences-per-step", "4", "--steps", "0"], "--steps"),
        ("100\n", ["model.dim=3", "--gpus", "8", "--sequences-per-step", "4"], "overrides only"),
        ("100\n", ["planner.solver=x", "--gpus", "8", "--sequences-per-step", "4"], "solver"),
    ],
)
def test_bad_input_is_one_error_line_and_status_2(tmp_path, content, args, message):
    corpus = tmp_path / "lengths.txt"
    if content is not None:
        corpus.write_text(content)
    run = _simulate(str(corpus), *args)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
    assert message in run.stderr
