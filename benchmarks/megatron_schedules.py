"""Megatron's hybrid context parallelism: its ``BalancedCPScheduler`` vs HeteroSP's scheduler.

Both schedules run the way megatron-core 0.16's ``hybrid_context_parallel_forward_backward``
runs them: rounds separated by a barrier; in a round every DP x CP rank is in one CP group (an
aligned block of 1, 2, 4, ... ranks Megatron builds a process group for), and a group runs its
sub-samples one forward and backward after the other. So a round takes its slowest group, and a
group the sum of its passes, each priced by the planner's cost model on the group's size with
the fastest strategy pair that holds the pass in memory (the same function for every column).
Megatron's rounds are ``BalancedCPScheduler.get_groups_and_subsamples`` as it is, with
``max_seqlen_per_dp_cp_rank`` = the tokens one GPU holds (``cost.groups[1].max_tokens``), one
pass per sequence. HeteroSP's are its plan mapped by
``hetero_sp.integrations.megatron_schedule.plan_phases`` (what ``HeteroSPCPScheduler`` hands
Megatron), run two ways: "per seq", one pass per sequence (Megatron's sub-sample format,
``use_hetero_sp_scheduler(pack_groups=False)``), and "packed", one pass per group and round
(``pack_group_streams``, the default), which is what the plan itself predicts.

Batches: the planner benchmark's long-tailed length distributions
(``hetero_sp.planner.simulate``), priced with the 8xH100 estimate profile (no H100 was
measured), documents cut to what every scheduler can hold.

    python benchmarks/megatron_schedules.py                 # ~2 minutes on 2 busy cores
    python benchmarks/megatron_schedules.py --cpu-steps 3   # plus a measured run on 4 gloo ranks

``--cpu-steps N`` also runs N steps (after one warm-up) of a tiny hybrid GPT through Megatron's
real schedule and data wrapper on 4 CPU gloo ranks with each scheduler and reports tokens/s: a
noisy number from a shared machine, not a GPU prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from harness import ROOT, spawn_gloo  # importing it puts the repository on sys.path
from records import machine_record

from hetero_sp.config import PlannerConfig
from hetero_sp.integrations.megatron_schedule import HeteroSPCPScheduler
from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.estimate import h100_estimate
from hetero_sp.planner.simulate import DISTRIBUTIONS, sample_lengths
from hetero_sp.planner.solve import Planner

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SEQS = {8: 64, 16: 128, 32: 256, 64: 512}


class _Size:
    """What ``BalancedCPScheduler`` asks of its ``dp_cp_group``: ``size()``."""

    def __init__(self, size: int) -> None:
        self._size = size

    def size(self) -> int:
        return self._size


def strategy_costs(cost: CostModel) -> list[CostModel]:
    """One cost model per allowed (softmax, linear) strategy pair."""
    return [
        CostModel(
            cost.profile,
            cost.topology,
            zero_stage=cost.zero_stage,
            softmax_strategies=(sm,),
            linear_strategies=(ln,),
            max_group_size=cost.sizes[-1],
            model=cost.model,
        )
        for sm in cost.softmax_strategies
        for ln in cost.linear_strategies
    ]


def round_groups(phase: list[list[int]]) -> tuple[list[tuple[tuple[int, ...], list[int]]], bool]:
    """A round's (ranks, sequences) groups from the per-rank lists, and whether every group is
    an aligned block Megatron has a process group for."""
    holders: dict[int, list[int]] = {}
    for rank, ids in enumerate(phase):
        for i in ids:
            holders.setdefault(int(i), []).append(rank)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ranks in holders.items():
        groups.setdefault(tuple(ranks), []).append(i)
    world = len(phase)
    aligned = all(
        list(r) == list(range(r[0], r[0] + len(r)))
        and (len(r) == world or (len(r) & (len(r) - 1) == 0 and r[0] % len(r) == 0))
        for r in groups
    )
    return sorted(groups.items()), aligned


def price(rounds, lengths: list[int], pairs: list[CostModel], packed: bool = False) -> dict:
    """Step time of rounds run as Megatron's schedule runs them (module docstring); with
    ``packed``, a group's sequences run as one packed pass (``pack_group_streams``)."""
    total, misaligned, group_sizes = 0.0, 0, []
    for phase in rounds:
        groups, aligned = round_groups(phase)
        misaligned += not aligned
        slowest = 0.0
        for ranks, seqs in groups:
            size = len(ranks)
            group_sizes.append(size)
            passes = [[lengths[i] for i in seqs]] if packed else [[lengths[i]] for i in seqs]
            options = [
                sum(p.groups[size].time(one) for one in passes)
                for p in pairs
                if size in p.groups and max(map(sum, passes)) <= p.groups[size].max_tokens
            ]
            if not options:
                return {"step_s": None, "reason": f"a pass on {size} GPUs exceeds memory"}
            slowest = max(slowest, min(options))
        total += slowest
    return {
        "step_s": total,
        "rounds": len(rounds),
        "misaligned_rounds": misaligned,
        "mean_group_size": float(np.mean(group_sizes)),
        "reason": "",
    }


def run_config(num_gpus: int, dist: str, args, profile, model) -> dict:
    cost = CostModel(profile, profile.topology(num_gpus), zero_stage=args.zero_stage, model=model)
    pairs = strategy_costs(cost)
    cap = cost.groups[1].max_tokens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.pipeline_parallel.hybrid_cp_schedule import BalancedCPScheduler
    megatron = BalancedCPScheduler(cap, _Size(num_gpus))
    planner = Planner(
        cost, PlannerConfig(time_limit_s=args.time_limit, split_search=args.split_search)
    )
    ours = HeteroSPCPScheduler(planner)
    # Megatron gives a sequence 2**ceil(log2(len / cap)) GPUs: cut documents so it fits.
    max_len = min(cost.groups[cost.sizes[-1]].max_tokens, num_gpus * cap)
    rng = np.random.default_rng([args.seed, num_gpus, list(DISTRIBUTIONS).index(dist)])
    num_seqs = args.seqs or DEFAULT_SEQS.get(num_gpus, 8 * num_gpus)
    rows = []
    for _ in range(args.batches):
        lengths = sample_lengths(DISTRIBUTIONS[dist], num_seqs, rng, max_len)
        pairs_in = list(enumerate(lengths))
        start = time.perf_counter()
        _, megatron_rounds = megatron.get_groups_and_subsamples(pairs_in, None)
        megatron_solve = time.perf_counter() - start
        start = time.perf_counter()
        _, hetero_rounds = ours.get_groups_and_subsamples(pairs_in, None)
        hetero_solve = time.perf_counter() - start
        rows.append(
            dict(
                tokens=sum(lengths),
                max_len=max(lengths),
                megatron=price(megatron_rounds, lengths, pairs),
                hetero=price(hetero_rounds, lengths, pairs),
                hetero_packed=price(hetero_rounds, lengths, pairs, packed=True),
                plan_s=ours.last_plan.predicted_step_s,
                megatron_solve_s=megatron_solve,
                hetero_solve_s=hetero_solve,
            )
        )
    ok = [r for r in rows if r["megatron"]["step_s"] and not r["megatron"]["misaligned_rounds"]]
    mega = sum(r["megatron"]["step_s"] for r in ok)
    hetero = sum(r["hetero"]["step_s"] for r in ok)
    packed = sum(r["hetero_packed"]["step_s"] for r in ok)
    return dict(
        gpus=num_gpus,
        dist=dist,
        layers=model.layers,
        seqs=num_seqs,
        batches=args.batches,
        priced_batches=len(ok),
        megatron_misaligned=sum(bool(r["megatron"]["misaligned_rounds"]) for r in rows),
        megatron_s=mega,
        hetero_s=hetero,
        hetero_packed_s=packed,
        speedup=mega / hetero if ok else None,
        speedup_packed=mega / packed if ok else None,
        plan_s=sum(r["plan_s"] for r in ok),
        megatron_rounds=float(np.mean([r["megatron"].get("rounds", 0) for r in ok] or [0])),
        hetero_rounds=float(np.mean([r["hetero"]["rounds"] for r in ok] or [0])),
        megatron_solve_p50_s=float(np.median([r["megatron_solve_s"] for r in rows])),
        hetero_solve_p50_s=float(np.median([r["hetero_solve_s"] for r in rows])),
        batches_detail=rows,
    )


CPU_WORLD = 4
CPU_PROFILE = ROOT / "configs" / "profiles" / "cpu-gloo.json"
"""Measured on CPU gloo ranks with this model (LLLS, dim 128): what HeteroSP's scheduler prices
the CPU run with."""
CPU_LENGTHS = [480, 200, 120, 96, 64, 40, 40, 24, 16, 16, 8, 8]
"""Training tokens of every measured CPU step: one long sequence, many short ones."""


def measure_cpu(
    rank: int, world: int, group, scheduler: str, steps: int, split_search: bool
) -> dict:
    """``steps`` timed steps (after one warm-up) of a tiny LLLS GPT through Megatron's hybrid-CP
    schedule and data wrapper, scheduled by ``scheduler``; rank 0's wall time."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.datasets.data_schedule import HybridCPDataLoaderWrapper
    from megatron.core.models.gpt import GPTModel
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.transformer_config import TransformerConfig

    from hetero_sp.integrations.megatron import cpu_compat, forward_step, hybrid_block_spec
    from hetero_sp.integrations.megatron_data import HybridCPSamples
    from hetero_sp.integrations.megatron_dynamic_cp import use_hetero_sp_scheduler

    pattern, vocab = "LLLS", 258  # the model of the measured CPU profile
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, vocab, n + 1) for n in CPU_LENGTHS]

    class Steps:  # every step the same sequences
        lengths = CPU_LENGTHS

        def batch(self, step):
            return self

        def materialize(self, indices):
            return [seqs[i] for i in indices]

    cfg = TransformerConfig(
        num_layers=4,
        hidden_size=128,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=384,
        normalization="RMSNorm",
        gated_linear_unit=True,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        hybrid_context_parallel=True,
        calculate_per_token_loss=True,
        max_seqlen_per_dp_cp_rank=128,  # Megatron's knob: the longest sequence / 4 ranks
    )
    with cpu_compat():
        parallel_state.initialize_model_parallel(hybrid_context_parallel=True)
        try:
            torch.manual_seed(0)
            spec = hybrid_block_spec(cfg, pattern, softmax_backend="torch", linear_backend="torch")
            model = GPTModel(
                config=cfg,
                transformer_layer_spec=spec,
                vocab_size=vocab,
                max_sequence_length=1024,
                position_embedding_type="rope",
            )
            data = HybridCPSamples(
                Steps(), bins_per_step=world, dp_cp_size=world, dp_rank=rank, dp_size=world
            )
            block = contextlib.nullcontext()
            if scheduler != "megatron":
                block = use_hetero_sp_scheduler(
                    cfg,
                    pattern=pattern,
                    vocab_size=vocab,
                    profile=CPU_PROFILE,
                    planner=PlannerConfig(split_search=split_search),
                    pack_groups=scheduler == "hetero_sp",
                )
            run = get_forward_backward_func()
            times = []
            with block:
                wrapper = HybridCPDataLoaderWrapper(data, cfg)
                for _ in range(steps + 1):
                    dist.barrier()
                    start = time.perf_counter()
                    run(
                        forward_step_func=forward_step,
                        data_iterator=wrapper,
                        model=model,
                        num_microbatches=1,
                        seq_length=0,
                        micro_batch_size=1,
                    )
                    dist.barrier()
                    times.append(time.perf_counter() - start)
                    model.zero_grad()
        finally:
            parallel_state.destroy_model_parallel()
    timed = times[1:]
    return {
        "steps": steps,
        "step_s": timed,
        "tokens_per_s": sum(CPU_LENGTHS) * steps / sum(timed),
        "lengths": CPU_LENGTHS,
    }


HEADER = (
    f"{'layers':<8} {'GPUs':>4} {'dist':<13} {'Megatron s':>11} {'per seq s':>10} "
    f"{'ratio':>6} {'packed s':>9} {'ratio':>6} {'rounds M/H':>11} {'solve M/H s':>13}"
)


def format_row(s: dict) -> str:
    if not s["priced_batches"]:
        return f"{s['layers'][:4]:<8} {s['gpus']:>4} {s['dist']:<13} no batch priced"
    return (
        f"{s['layers'][:4]:<8} {s['gpus']:>4} {s['dist']:<13} {s['megatron_s']:>11.3f} "
        f"{s['hetero_s']:>10.3f} {s['speedup']:>6.2f} {s['hetero_packed_s']:>9.3f} "
        f"{s['speedup_packed']:>6.2f} {s['megatron_rounds']:>5.1f}/{s['hetero_rounds']:<5.1f} "
        f"{s['megatron_solve_p50_s']:>6.2f}/{s['hetero_solve_p50_s']:<6.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", default="8,16,32", help="simulated DP x CP sizes")
    parser.add_argument("--dists", default=",".join(DISTRIBUTIONS))
    parser.add_argument("--layers", default="LLLS,SSSS", help="layer patterns (repeated to 32)")
    parser.add_argument("--batches", type=int, default=3, help="batches per configuration")
    parser.add_argument("--seqs", type=int, default=0, help="sequences per batch (0: by GPUs)")
    parser.add_argument("--time-limit", type=float, default=PlannerConfig().time_limit_s)
    parser.add_argument(
        "--split-search",
        action="store_true",
        help="let the planner search other micro-batch splits (planner.split_search; off: the "
        "token-balanced split, which bounds the solve by --time-limit)",
    )
    parser.add_argument("--zero-stage", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-steps", type=int, default=0, help="measured steps on 4 gloo ranks")
    parser.add_argument("--out", default=str(RESULTS / "megatron_schedules.json"))
    args = parser.parse_args()

    profile = h100_estimate()
    load_start = os.getloadavg()
    print(f"profile: {profile.label}; step times predicted by its cost model (seconds, summed)")
    print(HEADER)
    results = []
    start = time.perf_counter()
    for pattern in args.layers.split(","):
        layers = (pattern * len(profile.model.layers))[: len(profile.model.layers)]
        model = dataclasses.replace(profile.model, layers=layers)
        for num_gpus in map(int, args.gpus.split(",")):
            for dist in args.dists.split(","):
                s = run_config(num_gpus, dist, args, profile, model)
                results.append(s)
                print(format_row(s), flush=True)
    print(
        "ratio: Megatron's step time over HeteroSP's, both in Megatron's schedule; per seq: one "
        "pass per sequence, packed: one pass per group and round"
    )
    skipped = sum(s["megatron_misaligned"] for s in results)
    if skipped:
        print(f"{skipped} batches left out: Megatron's schedule put a group on unaligned ranks")
    print(f"comparison took {time.perf_counter() - start:.0f} s")
    cpu = None
    if args.cpu_steps:
        cpu = {
            name: spawn_gloo(measure_cpu, CPU_WORLD, name, args.cpu_steps, args.split_search)
            for name in ("megatron", "hetero_sp_per_sequence", "hetero_sp")
        }
        for name, m in cpu.items():
            print(
                f"CPU, 4 gloo ranks, tiny LLLS GPT ({name} scheduler): {m['tokens_per_s']:.0f} "
                f"tokens/s over {m['steps']} steps (noisy: shared 2-core machine)"
            )
    load_end = os.getloadavg()
    out = dict(
        machine=machine_record("one process (simulated steps); 4 gloo ranks for --cpu-steps"),
        load_average_1min=dict(start=load_start[0], end=load_end[0]),
        profile=profile.label,
        args=vars(args),
        configs=results,
        cpu_measured=cpu,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
