"""benchmarks/throughput_1m.py under torchrun on gloo ranks with the tiny model: what it
records per strategy pair, one pair on one rank, and the time budget that skips the contexts a
GPU session has no time left for. (What it measures is recorded in benchmarks/RESULTS.md, not
asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch_common import free_port

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [
    ("ulysses", "lasp2"),
    ("ulysses", "zeco"),
    ("allgather_kv", "lasp2"),
    ("allgather_kv", "zeco"),
]


def _run(nproc: int, port: int, out: Path, *args: str) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        "benchmarks/throughput_1m.py", "--model", "tiny", "--repeats", "1", "--out", str(out),
        *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert f"wrote {out}" in proc.stdout
    return result


def _check_timed(row: dict, world: int) -> None:
    assert "skipped" not in row, row
    assert row["step_s"] > 0
    assert row["tokens_per_s_per_device"] == pytest.approx(row["context"] / row["step_s"] / world)
    assert 0 < row["mfu"] < 1


@pytest.mark.slow
def test_two_ranks_time_every_strategy_pair(tmp_path):
    result = _run(2, free_port(), tmp_path / "two.json", "--contexts", "256,512")
    assert result["devices"] == 2 and result["model"] == "tiny"
    assert [(r["context"], r["softmax"], r["linear"]) for r in result["rows"]] == [
        (c, s, linear) for c in (256, 512) for s, linear in PAIRS
    ]
    for row in result["rows"]:
        _check_timed(row, 2)


@pytest.mark.slow
def test_one_rank_times_one_pair_and_the_budget_skips_what_it_cannot_afford(tmp_path):
    # A budget of a millisecond is spent before the first context: that one has no estimate yet
    # and runs; the next ones (estimated from it) are skipped, saying why.
    result = _run(
        1,
        free_port(),
        tmp_path / "one.json",
        "--contexts",
        "256,4096,65536",
        "--budget-s",
        "0.001",
    )
    rows = result["rows"]
    assert [(r["context"], r["softmax"], r["linear"]) for r in rows] == [
        (c, "ulysses", "lasp2") for c in (256, 4096, 65536)
    ]
    _check_timed(rows[0], 1)
    for row in rows[1:]:
        assert row["skipped"].startswith("estimated ") and "left of --budget-s" in row["skipped"]
    assert result["budget_s"] == 0.001
