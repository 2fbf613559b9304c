"""Checkpoint folders on disk: synced writes, the manifest, atomic publishing, which folders
count as checkpoints, pruning and verification. No tensors' meaning and no DeepSpeed here (see
:mod:`hetero_sp.engine.checkpoint`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from hetero_sp.core.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, truncated, corrupt or from another run)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def torch_save_synced(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir(out_dir, step: int) -> Path:
    return checkpoint_root(out_dir) / f"step_{step:08d}"


_STEP_NAME = re.compile(r"step_(\d+)(?:\.old|\.partial)?")


def step_of(path: Path) -> int | None:
    """The step of a checkpoint folder (``step_00000050``, ``.old`` and ``.partial`` too), or
    None for a name that is not a checkpoint's."""
    found = _STEP_NAME.fullmatch(path.name)
    return int(found.group(1)) if found else None


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable, where the platform can sync a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse to sync a directory; the rename is still atomic
    finally:
        os.close(fd)


def publish(partial: Path, final: Path) -> None:
    """Write the manifest of ``partial`` and rename it to ``final``.

    A checkpoint of the same step already there (a re-save) is first renamed to ``.old`` and
    deleted only after the new one is in place, so a crash at any point leaves a complete
    checkpoint of the step: ``final``, or ``.old`` (which :func:`completed` lists then)."""
    files = sorted(p for p in partial.iterdir() if p.name != "manifest.json")
    manifest = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
    write_bytes_synced(partial / "manifest.json", json.dumps(manifest, indent=1).encode())
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():  # left by a crash after an earlier re-save had published
            shutil.rmtree(old)
        os.replace(final, old)
        fsync_dir(final.parent)
    os.replace(partial, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def completed(out_dir) -> list[Path]:
    """Published checkpoints, oldest first: ``step_N``, or ``step_N.old`` where a re-save of
    step N crashed between its two renames."""
    by_step: dict[int, Path] = {}
    for p in checkpoint_root(out_dir).glob("step_*"):
        step = step_of(p)
        if step is not None and (p.suffix == "" or (p.suffix == ".old" and step not in by_step)):
            by_step[step] = p
    return [by_step[step] for step in sorted(by_step)]


def prune(out_dir, keep: int, written: Path | None = None) -> None:
    """Keep the newest ``keep`` checkpoints; delete the older ones and any ``.old`` folder
    whose step has a published checkpoint again.

    ``written``, the checkpoint a run has just saved, is always kept, with the ``keep - 1``
    newest before it; checkpoints of later steps are left alone: a resumed run has skipped them
    as damaged, and saving their step again replaces them."""
    last = None if written is None else step_of(written)
    done = [p for p in completed(out_dir) if last is None or step_of(p) <= last]
    kept = set(done[-keep:])
    for path in checkpoint_root(out_dir).glob("step_*"):
        step = step_of(path)
        if path.suffix == ".partial" or path in kept or step is None:
            continue
        if last is None or step <= last:
            shutil.rmtree(path, ignore_errors=True)


def verify(path: Path) -> dict:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no manifest.json (the checkpoint was never completed)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: manifest.json is corrupt ({err})") from err
    for name, entry in manifest.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != entry["bytes"]:
            raise CheckpointError(
                f"{path}: {name} has {f.stat().st_size} bytes, expected {entry['bytes']}"
            )
        if sha256_file(f) != entry["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its checksum")
    return manifest
