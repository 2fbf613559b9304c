"""Crash-safe checkpoints of a DeepSpeed run, readable without trusting their contents.

Layout of ``<out_dir>/checkpoints/step_00000050/``:

- ``model.pt``: full fp32 parameters by name (gathered from every ZeRO stage);
- ``optim.pt``: full AdamW moments ``<name>/exp_avg`` and ``<name>/exp_avg_sq``;
- ``rng_<rank>.pt``: each rank's torch RNG states;
- ``meta.json``: step, sampler state, what the run needs to continue;
- ``manifest.json``: size and sha256 of every other file, written last.

A checkpoint is written into ``step_XXXXXXXX.partial`` and renamed into place only once every
rank's files and the manifest are on disk, so a crash leaves either the old or the new one (also
when the same step is saved again: see :func:`~hetero_sp.engine.checkpoint_files.publish`).
Loading checks the manifest, loads tensors with ``weights_only=True`` and, when a checkpoint is
truncated or corrupt, warns and falls back to the previous one; when every checkpoint is
broken, it is an error that lists what was wrong with each.

Model weights are loaded into the plain module *before* ``deepspeed.initialize`` (DeepSpeed
builds its fp32 master copies from the module), optimizer moments after it.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from hetero_sp.engine import checkpoint_files as files
from hetero_sp.engine.checkpoint_files import CheckpointError
from hetero_sp.log import get_logger

logger = get_logger(__name__)

MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    step: int
    meta: dict
    model: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    rng: dict | None


def _full_param(engine, p: torch.nn.Parameter) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(p)
    return (full if full is not None else p.detach()).float().cpu().clone()


def _inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch AdamW under DeepSpeed's ZeRO wrappers (which hold it as ``.optimizer``)."""
    opt = engine.optimizer
    while type(opt).__module__.startswith("deepspeed") and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def _zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def _flat_partitions(engine) -> list[torch.Tensor]:
    """The fp32 flat partitions the ZeRO optimizer steps (one per parameter group)."""
    opt = engine.optimizer
    if _zero_stage(engine) == 3:
        return list(opt.fp32_partitioned_groups_flat)
    return list(opt.single_partition_of_fp32_groups)


def _link_moments(engine) -> None:
    """Make sure every ZeRO partition has AdamW moments and every parameter is linked to them.

    torch's AdamW creates its state at the first step, and DeepSpeed (0.19) links parameter
    fragments to optimizer state once, right after stepping the *first* parameter group, so the
    fragments of later groups stay unlinked. Creating missing state (zeros, as AdamW would) and
    linking all groups here makes the full-state getters and setters work at any time.
    """
    from deepspeed.utils import lazy_init_hp_params_optimizer_state

    stage = _zero_stage(engine)
    if stage == 0:
        return
    inner = _inner_optimizer(engine)
    for i, flat in enumerate(_flat_partitions(engine)):
        state = inner.state[flat]
        state.setdefault("step", torch.tensor(0.0))
        for key in MOMENTS:
            state.setdefault(key, torch.zeros_like(flat))
        if stage in (1, 2):
            lazy_init_hp_params_optimizer_state(engine.optimizer.bit16_groups[i], flat, inner.state)
    if stage in (1, 2):
        engine.optimizer._hp_optimizer_states_linked = True


def _full_moment(engine, p: torch.nn.Parameter, key: str) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_optimizer_state

    if _zero_stage(engine) == 0:
        state = _inner_optimizer(engine).state.get(p, {})
        value = state.get(key)
        return (value if value is not None else torch.zeros_like(p)).float().cpu().clone()
    value = safe_get_full_optimizer_state(p, key)
    if value is None:
        raise RuntimeError(f"DeepSpeed returned no optimizer state {key!r} for a parameter")
    return value.float().cpu().clone()


def gather_state(engine) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Full parameters and AdamW moments by name. Collective: every rank must call it."""
    _link_moments(engine)
    model, optim = {}, {}
    for name, p in engine.module.named_parameters():
        model[name] = _full_param(engine, p)
        for key in MOMENTS:
            optim[f"{name}/{key}"] = _full_moment(engine, p, key)
    return model, optim


def save_checkpoint(engine, out_dir: str | Path, step: int, meta: dict, keep: int = 2) -> Path:
    """Write the checkpoint of ``step`` (collective) and keep the newest ``keep`` ones."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = files.step_dir(out_dir, step)
    partial = final.with_name(final.name + ".partial")
    model, optim = gather_state(engine)
    if rank == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        files.torch_save_synced(model, partial / "model.pt")
        files.torch_save_synced(optim, partial / "optim.pt")
        files.write_bytes_synced(
            partial / "meta.json", json.dumps({"step": step, **meta}, indent=1).encode()
        )
    if dist.is_initialized():
        dist.barrier()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    files.torch_save_synced(rng, partial / f"rng_{rank}.pt")
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        files.publish(partial, final)
        files.prune(out_dir, keep, written=final)
    if dist.is_initialized():
        dist.barrier()
    return final


def load_checkpoint(path: Path, rank: int = 0) -> LoadedCheckpoint:
    """Load one checkpoint folder after checking its manifest; raises CheckpointError if broken."""
    try:
        return _load_one(path, rank)
    except CheckpointError:
        raise
    # What torch.load (weights_only=True) and json raise on a file that passed its manifest
    # yet does not decode (written by another program or another torch).
    except (
        RuntimeError,
        OSError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        pickle.UnpicklingError,
    ) as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from err


def _load_one(path: Path, rank: int) -> LoadedCheckpoint:
    files.verify(path)
    meta = json.loads((path / "meta.json").read_text())
    model = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    rng_path = path / f"rng_{rank}.pt"
    rng = (
        torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.is_file() else None
    )
    return LoadedCheckpoint(
        path=path, step=int(meta["step"]), meta=meta, model=model, optim=optim, rng=rng
    )


def load_latest(out_dir: str | Path, rank: int = 0) -> LoadedCheckpoint | None:
    """The newest checkpoint that passes its checks, or None when there is none at all; broken
    ones are skipped with a warning, and when every one is broken, CheckpointError says why."""
    candidates = list(reversed(files.completed(out_dir)))
    problems = []
    for i, path in enumerate(candidates):
        try:
            return load_checkpoint(path, rank)
        except CheckpointError as err:
            older = "; trying an older one" if i + 1 < len(candidates) else ""
            logger.warning("skipping checkpoint %s: %s%s", path, err, older)
            problems.append(" ".join(str(err).split()))  # one line, whatever torch said
    if not candidates:
        return None
    raise CheckpointError(
        f"no usable checkpoint in {files.checkpoint_root(out_dir)}: {'; '.join(problems)}. "
        "Restore a good copy of one, or start over with train.resume=false (the earlier "
        "run's files are then moved into an earlier_run_N folder, nothing is deleted) or in "
        "a new train.out_dir"
    )


def load_model_weights(module: nn.Module, ckpt: LoadedCheckpoint) -> None:
    """Put the checkpoint's parameters into a plain module (call before deepspeed.initialize)."""
    names = {n for n, _ in module.named_parameters()}
    if set(ckpt.model) != names:
        missing, extra = sorted(names - set(ckpt.model)), sorted(set(ckpt.model) - names)
        raise CheckpointError(
            f"{ckpt.path}: parameters do not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was it written with another [model] config?"
        )
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.shape != ckpt.model[name].shape:
                raise CheckpointError(
                    f"{ckpt.path}: {name} has shape {tuple(ckpt.model[name].shape)}, model {tuple(p.shape)}"
                )
            p.copy_(ckpt.model[name])


def load_optimizer_state(engine, ckpt: LoadedCheckpoint) -> None:
    """Put the AdamW moments and step count into the (possibly partitioned) optimizer."""
    from deepspeed.utils import safe_set_full_optimizer_state

    _link_moments(engine)
    inner = _inner_optimizer(engine)
    step_t = torch.tensor(float(ckpt.step))
    for name, p in engine.module.named_parameters():
        if _zero_stage(engine) == 0:
            inner.state[p] = {
                "step": step_t.clone(),
                **{k: ckpt.optim[f"{name}/{k}"].to(p.device, p.dtype).clone() for k in MOMENTS},
            }
            continue
        for key in MOMENTS:
            safe_set_full_optimizer_state(p, ckpt.optim[f"{name}/{key}"].to(p.device), key)
    if _zero_stage(engine) > 0:
        for state in inner.state.values():
            state["step"] = step_t.clone()


def restore_rng(ckpt: LoadedCheckpoint) -> None:
    if ckpt.rng is None:
        return
    torch.set_rng_state(ckpt.rng["cpu"])
    if "cuda" in ckpt.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt.rng["cuda"])
