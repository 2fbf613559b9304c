"""One training step of a plan on this rank: every micro-batch's forward and backward on this
rank's share of its group, then one DeepSpeed optimizer step.

Gradient accumulation is explicit: DeepSpeed runs with ``managed_gradient_accumulation`` off,
so each ``backward`` only accumulates (ZeRO-2/3 reduce-scatter as they go) and ``step`` is the
one accumulation boundary, however many micro-batches this step's plan has.

A group may run its share of a micro-batch as several passes (``GroupPlan.pass_list``), each a
forward and backward of its own stream. With ZeRO 0 and 1 a backward does not communicate, so
every group runs just its own passes. With ZeRO 2 and 3 every backward reduces (and every
forward of ZeRO 3 gathers) over all ranks, so each rank of a micro-batch runs as many passes as
the group with the most, the extra ones on one padding token (``pad_passes``). Every rank scales
its loss sum by ``world_size / global_tokens``: DeepSpeed's average over ranks then equals the
gradient of the step's mean token loss, whatever the plan's groups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hetero_sp.data.batch import GlobalBatch
from hetero_sp.engine.loss import backward_scale
from hetero_sp.engine.rank_batch import GroupWork, rank_microbatch
from hetero_sp.parallel import GroupLayout, SPContext
from hetero_sp.planner.plan import Plan


@dataclass
class StepOutcome:
    """What this rank saw in one step (local numbers; the trainer reduces them over ranks)."""

    loss_sum: float = 0.0
    labels: int = 0
    padding_tokens: int = 0
    """Padding of the groups this rank leads (each group counted once)."""
    micro_batch_s: list[float] = field(default_factory=list)
    """Forward + backward seconds of each micro-batch on this rank."""


def run_step(
    engine,
    batch: GlobalBatch,
    plan: Plan,
    rank: int,
    world_size: int,
    context_for: Callable[[GroupWork, GroupLayout], SPContext],
    layers: str,
    device: torch.device,
    pad_passes: bool = True,
) -> StepOutcome:
    """Forward and backward of every pass of every micro-batch of ``plan``; the optimizer step
    is the caller's (it sets the learning rate first). ``pad_passes``: every rank runs as many
    passes per micro-batch as its busiest group (needed with ZeRO 2 and 3)."""
    if plan.world_size != world_size:
        raise ValueError(f"the plan is for {plan.world_size} ranks, this run has {world_size}")
    if list(plan.lengths) != batch.lengths:
        raise ValueError(f"the plan of step {batch.step} was made for another batch")
    scale = backward_scale(batch.num_tokens, world_size)
    out = StepOutcome()
    for mb in plan.micro_batches:
        group = mb.group_of(rank)
        passes = list(group.pass_list)
        most = max(len(g.pass_list) for g in mb.groups) if pad_passes else 0
        passes += [()] * (max(most, 1) - len(passes))  # an idle group still runs one pass
        seconds = 0.0
        for sequences in passes:
            one = GroupWork(group.ranks, sequences, group.softmax_strategy, group.linear_strategy)
            work = rank_microbatch(batch, one, rank, context_for, layers, device)
            begin = time.perf_counter()
            loss_sum = engine(work.inputs_T, work.seqs, work.labels_T)
            engine.backward(loss_sum * scale)
            seconds += time.perf_counter() - begin
            out.loss_sum += loss_sum.item()
            out.labels += work.num_labels
            if work.layout is not None and rank == group.ranks[0]:
                out.padding_tokens += work.layout.num_pad
        out.micro_batch_s.append(seconds)
    return out


def group_times(plan: Plan, per_rank_s: torch.Tensor) -> list[list[float]]:
    """Measured seconds of every group of every micro-batch: its slowest rank.

    ``per_rank_s`` is [world_size, num_micro_batches] (all ranks' ``micro_batch_s``).
    """
    return [
        [max(float(per_rank_s[r, m]) for r in group.ranks) for group in mb.groups]
        for m, mb in enumerate(plan.micro_batches)
    ]


def imbalance(plan: Plan, times: list[list[float]]) -> float:
    """Largest, over micro-batches, of (slowest busy group / mean busy group) - 1."""
    worst = 0.0
    for mb, row in zip(plan.micro_batches, times):
        busy = [t for g, t in zip(mb.groups, row) if g.sequences]
        if len(busy) > 1:
            worst = max(worst, max(busy) / (sum(busy) / len(busy)) - 1.0)
    return worst
