"""``python -m hetero_sp.train --dry-run``: the plans of the first steps and the memory estimate,
without DeepSpeed, a process group or any training.

It loads the config, the dataset and its sampler, builds the cost model and plan function the
trainer would build for the world it would run with (torchrun's, or ``--world-size N`` to plan
for a cluster this machine is not), plans the first ``steps`` batches and prints them. Under
torchrun only rank 0 does this; the other ranks return at once. A batch the planner cannot fit
fails with the planner's message and a non-zero exit code.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from hetero_sp.config import Config, ConfigError
from hetero_sp.core.errors import UserError
from hetero_sp.data.open_corpus import open_corpus
from hetero_sp.data.samplers import build_sampler
from hetero_sp.engine.plan_modes import build_cost_model, make_plan_fn
from hetero_sp.engine.topology_report import describe_topology, node_size_for, torchrun_nodes
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.memory import model_state_bytes
from hetero_sp.planner.plan import Plan, validate_plan

EXIT_CONFIG = 2
EXIT_PLAN = 1


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _seconds(t: float) -> str:
    return f"{t:.3f} s" if t >= 1 else f"{t * 1e3:.3g} ms"


def _ranks(ranks: tuple[int, ...]) -> str:
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"


def format_plan(step: int, plan: Plan, cost: CostModel) -> str:
    """The plan of one step: per micro-batch, every group with its ranks, sequences, tokens,
    strategies, predicted time and predicted peak memory per rank."""
    lengths = plan.lengths
    mbs = len(plan.micro_batches)
    lines = [
        f"step {step}: {len(lengths)} sequences, {sum(lengths)} tokens (longest {max(lengths)}, "
        f"shortest {min(lengths)}); {mbs} micro-batch{'es' if mbs > 1 else ''}; predicted step "
        f"{_seconds(plan.predicted_step_s)}; solved in {_seconds(plan.solve_s)}"
    ]
    for m, mb in enumerate(plan.micro_batches, start=1):
        lines.append(
            f"  micro-batch {m}/{mbs}: makespan {_seconds(mb.makespan_s)} (lower bound "
            f"{_seconds(mb.lower_bound_s)}; {mb.solver.solver} {mb.solver.status})"
        )
        lines.append(
            f"    {'ranks':<11} {'sequences':>9} {'tokens':>9}  {'softmax/linear':<20} "
            f"{'predicted':>10}  memory/rank"
        )
        for g in mb.groups:
            if not g.sequences:
                lines.append(f"    {_ranks(g.ranks):<11} idle")
                continue
            strategies = (
                f"{g.softmax_strategy}/{g.linear_strategy}" if g.size > 1 else "local (1 rank)"
            )
            memory = cost.groups[g.size].memory(g.tokens)
            lines.append(
                f"    {_ranks(g.ranks):<11} {len(g.sequences):>9} {g.tokens:>9}  "
                f"{strategies:<20} {_seconds(g.predicted_s):>10}  {_bytes(memory)}"
            )
    return "\n".join(lines)


def format_memory(cfg: Config, cost: CostModel, plans: list[Plan]) -> str:
    """Model states per rank at each ZeRO stage, and the plans' peak per rank against the limit."""
    world, precision = cost.topology.num_gpus, cost.profile.precision
    stages = " | ".join(
        f"ZeRO-{z} {_bytes(model_state_bytes(cost.num_params, z, world, precision))}"
        + (" (this run)" if z == cfg.train.zero_stage else "")
        for z in range(4)
    )
    topo = cost.topology
    lines = [
        f"memory per rank: limit {_bytes(cost.memory_limit_bytes)} "
        f"({topo.memory_fraction:.0%} of {_bytes(topo.gpu_memory_bytes)})",
        f"  model states ({cost.num_params / 1e6:.2f}M parameters; {precision} parameters, "
        f"gradients and Adam states over {world} rank{'s' if world > 1 else ''}): {stages}",
    ]
    if precision != cfg.train.precision:
        lines.append(
            f"  note: the profile is {precision}, train.precision is {cfg.train.precision}; the "
            "estimate uses the profile's"
        )
    worst = 0.0
    for step, plan in enumerate(plans, start=1):
        peak, where = 0.0, None
        for mb in plan.micro_batches:
            for g in mb.groups:
                memory = cost.groups[g.size].memory(g.tokens) if g.sequences else cost.state_bytes
                if memory > peak:
                    peak, where = memory, g
        worst = max(worst, peak)
        place = (
            "no group"
            if where is None
            else f"rank{'s' if where.size > 1 else ''} {_ranks(where.ranks)}"
        )
        lines.append(
            f"  step {step}: peak {_bytes(peak)} per rank = states {_bytes(cost.state_bytes)} + "
            f"activations {_bytes(peak - cost.state_bytes)} ({place}), "
            f"{peak / cost.memory_limit_bytes:.0%} of the limit"
        )
    lines.append(
        f"  largest peak of these steps: {_bytes(worst)} of {_bytes(cost.memory_limit_bytes)}"
    )
    return "\n".join(lines)


def _world(world_size: int | None, cfg: Config) -> tuple[int, int, int, int]:
    """(world size, node size, nodes, processes per node) the dry run plans for."""
    if world_size is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        nodes, per_node = torchrun_nodes(world)
        return world, node_size_for(cfg, world), nodes, per_node
    if world_size < 1:
        raise ConfigError(f"--world-size: must be >= 1, got {world_size}")
    node_size = min(cfg.parallel.node_size or world_size, world_size)
    if world_size % node_size:
        raise ConfigError(
            f"parallel.node_size: {node_size} does not divide --world-size {world_size}; give a "
            "node size that does (ranks per machine)"
        )
    return world_size, node_size, world_size // node_size, node_size


def _check_vocab(cfg: Config, corpus) -> None:
    vocab = corpus.vocab_size
    if vocab is not None and vocab > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the dataset's vocabulary "
            f"of {vocab} tokens; set model.vocab_size={vocab} or more"
        )


def dry_run(
    cfg: Config, world_size: int | None = None, steps: int = 3, out: TextIO | None = None
) -> int:
    """Print the topology, the plans of the first ``steps`` steps and the memory estimate;
    return the process exit code (0, or non-zero after printing the error)."""
    out = out or sys.stdout
    if world_size is None and int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun rank 0 speaks for the run
    try:
        world, node_size, nodes, per_node = _world(world_size, cfg)
        if steps < 1:
            raise ConfigError(f"--dry-run-steps: must be >= 1, got {steps}")
        topology = describe_topology(
            world,
            nodes=nodes,
            per_node=per_node,
            node_size=node_size,
            sp_mode=cfg.parallel.sp_mode,
            group_shapes=cfg.planner.group_shapes,
            max_groups=cfg.parallel.max_process_groups,
        )
        corpus = open_corpus(cfg.data)
        _check_vocab(cfg, corpus)
        sampler = build_sampler(cfg.data, corpus)
        cost = build_cost_model(cfg, world, node_size)
        plan_fn = make_plan_fn(cfg, cost)
    except UserError as err:  # ConfigError, DatasetError, the profile's and cluster's checks
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"dry run (no DeepSpeed, no training): planning for {world} ranks", file=out)
    print(f"topology: {topology}", file=out)
    print(f"cost profile: {cost.profile.label}", file=out)
    plans = []
    for step in range(min(steps, cfg.train.steps)):
        lengths = sampler.batch(step).lengths
        try:
            plan = plan_fn(lengths)
            validate_plan(plan, cost)
        except UserError as err:  # PlanError: a batch no plan fits
            print(f"error: step {step + 1} cannot be planned: {err}", file=sys.stderr)
            return EXIT_PLAN
        plans.append(plan)
        print(format_plan(step + 1, plan, cost), file=out)
    print(format_memory(cfg, cost, plans), file=out)
    return 0
