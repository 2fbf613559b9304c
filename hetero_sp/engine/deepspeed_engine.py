"""The DeepSpeed side of a run: its JSON config, generated from ours, the optimizer and the
learning-rate schedule.

The DeepSpeed config is never kept by hand: ``deepspeed_config`` derives it from ``Config``.
Gradient accumulation is handled by the trainer (a step's micro-batches vary), so DeepSpeed
sees one micro-batch per step and averages gradients over all ranks once per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from hetero_sp.config import Config, OptimConfig
from hetero_sp.engine import deepspeed_ops


def deepspeed_config(cfg: Config) -> dict:
    zero: dict = {"stage": cfg.train.zero_stage}
    if cfg.train.zero_stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if cfg.train.zero_stage == 3:
        # Keep every parameter partitioned: no parameter is kept whole "because it is small".
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=0)
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.train.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        # The trainer owns the accumulation boundary: backward() accumulates, step() reduces
        # and updates, however many micro-batches the step's plan has.
        "managed_gradient_accumulation": False,
        "wall_clock_breakdown": False,
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices (and embeddings) decay; norms, gains and biases do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        foreach=False,
    )


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def initialize(model: nn.Module, cfg: Config, say_build: Callable[[str], None] | None = None):
    """Wrap ``model`` in a DeepSpeed engine with ZeRO as configured; returns the engine.

    DeepSpeed compiles its op into this environment's own folder
    (:mod:`hetero_sp.engine.deepspeed_ops`) unless ``TORCH_EXTENSIONS_DIR`` is set;
    ``say_build`` is told when that compile is about to happen."""
    import deepspeed

    deepspeed_ops.use_environment_dir()
    if say_build is not None:
        deepspeed_ops.announce_build(say_build)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, cfg.optim), config=deepspeed_config(cfg)
    )
    return engine
