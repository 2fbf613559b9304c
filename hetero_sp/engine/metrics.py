"""Per-step metrics: a flat dict with namespaced keys (``loss/``, ``throughput/``, ``memory/``,
``plan/``, ``comm/``, ...), appended to ``metrics.jsonl`` and written to tensorboard; and each
step's plan with its measured group times, appended to ``plans.jsonl``.

Only rank 0 writes; other ranks get a writer that does nothing. Both files are repaired before
they are appended to when a crash cut their last line short (:mod:`hetero_sp.engine.records`).
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import torch
import torch.distributed as dist

from hetero_sp.config import TrainConfig
from hetero_sp.core.flops import configured_peak_flops, measure_matmul_flops
from hetero_sp.engine.records import read_records, repair_partial_line


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory on CUDA; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_peak_flops(train: TrainConfig, device: torch.device) -> float:
    """Peak FLOP/s of the whole run (collective), the denominator of ``throughput/mfu``: the sum
    over ranks of ``train.peak_tflops``, else of a known GPU's datasheet value, else of a matrix
    product in the training precision timed on every rank at once (CPU ranks share cores, so
    their sum is the machine's)."""
    peak = configured_peak_flops(device, train.precision, train.peak_tflops)
    if peak is None:
        dist.barrier()
        dtype = torch.bfloat16 if train.precision == "bf16" else torch.float32
        peak = measure_matmul_flops(device, dtype)
    total = torch.tensor([peak], dtype=torch.float64)
    dist.all_reduce(total)
    return total.item()


class MetricsWriter:
    def __init__(self, out_dir: str | Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        self._file = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_partial_line(self.path)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float | int]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def append_plan(out_dir: str | Path, step: int, plan, measured_group_s: list[list[float]]) -> None:
    """One line of ``plans.jsonl``: the step, its :class:`~hetero_sp.planner.Plan` as a dict and
    the measured seconds of every group of every micro-batch (``measured_group_s[m][g]``)."""
    record = {"step": step, "plan": plan.to_dict(), "measured_group_s": measured_group_s}
    path = Path(out_dir) / "plans.jsonl"
    repair_partial_line(path)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` by step (later records for a step replace earlier
    ones); :class:`~hetero_sp.engine.records.RunFileError` names a line that is not a record."""
    by_step = read_records(path)
    return [by_step[s] for s in sorted(by_step)]
