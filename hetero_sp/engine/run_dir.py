"""A run folder started over: ``train.resume=false`` in a folder an earlier run wrote moves that
run's files into ``<out_dir>/earlier_run_<N>/`` (N = 1, 2, ... the first free number), so the
new run never mixes its checkpoints or metrics with the earlier run's and nothing is deleted.
An ``earlier_run_<N>`` folder is itself a run folder (``hetero-sp plot`` draws it)."""

from __future__ import annotations

import os
from pathlib import Path

from hetero_sp.engine.checkpoint_files import fsync_dir

RUN_FILES = ("checkpoints", "metrics.jsonl", "plans.jsonl", "tensorboard", "config.json")
"""What a training run writes into its out_dir."""
EARLIER_PREFIX = "earlier_run_"


def _free_folder(out_dir: Path) -> Path:
    taken = [
        int(p.name.removeprefix(EARLIER_PREFIX))
        for p in out_dir.glob(f"{EARLIER_PREFIX}*")
        if p.name.removeprefix(EARLIER_PREFIX).isdigit()
    ]
    return out_dir / f"{EARLIER_PREFIX}{max(taken, default=0) + 1}"


def set_aside_earlier_run(out_dir: str | Path) -> tuple[Path, list[str]] | None:
    """Move the :data:`RUN_FILES` an earlier run left in ``out_dir`` into a new
    ``earlier_run_<N>`` folder; returns that folder and the names moved, or None when there was
    nothing to move. Renames only, within one folder (no copy, so no size limit)."""
    out_dir = Path(out_dir)
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not found:
        return None
    aside = _free_folder(out_dir)
    aside.mkdir()
    for name in found:
        os.replace(out_dir / name, aside / name)
    fsync_dir(out_dir)
    return aside, found
