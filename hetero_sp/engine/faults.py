"""Deliberate failures for testing crash recovery (off unless the environment asks for one).

``HETERO_SP_FAULT_STEP=N`` makes rank ``HETERO_SP_FAULT_RANK`` (default 1) exit abruptly, as a
crashed or preempted worker would, just before training step N (1-based, as in the metrics).
A marker file in the run folder makes it happen once per run, so the run that torchrun restarts
goes through. This is how the fault test kills a rank mid-training under torchrun.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MARKER = ".fault_injected"


def maybe_fail(step: int, rank: int, out_dir: Path) -> None:
    target = os.environ.get("HETERO_SP_FAULT_STEP")
    if target is None or step != int(target):
        return
    if rank != int(os.environ.get("HETERO_SP_FAULT_RANK", "1")):
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / MARKER
    if marker.exists():
        return
    marker.write_text(f"rank {rank} exited before step {step}\n")
    print(f"[fault injection] rank {rank} exits before step {step}", file=sys.stderr, flush=True)
    os._exit(17)
