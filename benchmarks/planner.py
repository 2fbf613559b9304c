"""Planner benchmark: simulated steps on 8-256 GPUs priced with the H100 estimate profile.

For the same batches and the same cost model it compares, in predicted step time
(``hetero_sp.planner.compare``, the code path of ``hetero-sp simulate``):
- static: the best single SP degree for the whole run (DeepSpeed-Ulysses style),
- homogeneous: the best single degree chosen per batch,
- FlexSP: the planner restricted to FlexSP's formulation (Ulysses, groups of 2, 4, 8, ...,
  10 s planning limit),
- Megatron: Megatron-core's ``BalancedCPScheduler`` (hybrid context parallelism), its CP groups
  priced by the cost model, each sequence its own forward and backward (at ZeRO 2/3 the
  groups' k-th passes in lockstep),
- HeteroSP: the planner's heterogeneous groups,
- lower bounds: total GPU-seconds / GPUs (or the slowest sequence), and the MILP's own bound;
plus planning times (p50/p95), the p95 over micro-batches of the bucket token error (tokens that
rounding every length up to its bucket's longest adds), and how long the training loop waits for
a plan solved one step ahead (``PlanAhead``, on a thread and on a process) and how much the solve
slows a fake step of fixed CPU work beside it.

Lengths: three synthetic long-tailed distributions and the embedded corpus (the standard
library's Python files, byte tokens: ``hetero_sp.data.embedded``). Batches: a number of
sequences per step (by GPU count), or a token budget (``--batching seqs,1M,4M``) filled by
drawing documents. Documents are cut to the longest one every method can schedule (``--cut
common``), so every method sees the same batches; ``--cut hetero`` keeps what HeteroSP's
biggest group holds, and a baseline that cannot hold a batch reports it as unplannable.

Writes benchmarks/results/planner.json and one Gantt chart, benchmarks/results/planner_gantt.png.

    python benchmarks/planner.py                     # default: 64 GPUs, a few minutes on 2 cores
    python benchmarks/planner.py --gpus 8,64,256 --batching seqs,1M,4M   # a bigger sweep
    python benchmarks/planner.py --layers SSSS       # a softmax-only model, same dims
    python benchmarks/planner.py planner.split_search=false  # planner options as config keys
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from records import machine_record  # noqa: E402

from hetero_sp.config import load_config  # noqa: E402
from hetero_sp.data.embedded import embedded_dataset  # noqa: E402
from hetero_sp.planner import CostModel, PlanAhead, Planner  # noqa: E402
from hetero_sp.planner.cluster import Link  # noqa: E402
from hetero_sp.planner.compare import (  # noqa: E402
    FLEXSP_TIME_LIMIT_S,
    HEADER,
    Comparison,
    StepBatch,
    corpus_source,
    distribution_source,
    draw_batch,
    format_notes,
    format_row,
)
from hetero_sp.planner.estimate import h100_estimate  # noqa: E402
from hetero_sp.planner.gantt import draw_gantt  # noqa: E402
from hetero_sp.planner.simulate import DISTRIBUTIONS, sample_lengths  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SEQS = {8: 64, 16: 128, 32: 256, 64: 512, 128: 1024, 256: 1024}
CORPUS = "stdlib"
"""The embedded corpus's name in ``--dists``."""


def parse_batching(text: str, num_gpus: int, seqs: int) -> StepBatch:
    """``seqs`` (sequences per step: --seqs, or by GPU count), or a token budget: 1M, 500K."""
    if text == "seqs":
        return StepBatch(sequences=seqs or DEFAULT_SEQS.get(num_gpus, 8 * num_gpus))
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:].upper(), 1)
    return StepBatch(tokens=int(float(text.rstrip("KkMm")) * scale))


def run_config(num_gpus, dist, batching, args, profile, model, corpus):
    overrides = {}
    if args.inter_node_gbps:
        inter = Link(
            latency_s=profile.inter_node.latency_s, bandwidth_Bps=args.inter_node_gbps * 1e9
        )
        overrides["inter_node"] = inter
    cost = CostModel(
        profile, profile.topology(num_gpus, **overrides), zero_stage=args.zero_stage, model=model
    )
    options = load_config(None, args.overrides).planner
    for key, value in (
        ("time_limit_s", args.time_limit),
        ("max_bucket_error", args.max_bucket_error),
    ):
        if value is not None:
            options = dataclasses.replace(options, **{key: value})
    comparison = Comparison(
        cost,
        options,
        flexsp_time_limit_s=args.flexsp_time_limit,
        flexsp=not args.no_flexsp,
        megatron=not args.no_megatron,
    )
    max_len = comparison.max_len
    if args.cut == "hetero":
        max_len = cost.capacity(cost.sizes[-1])
    names = [*DISTRIBUTIONS, CORPUS]
    rng = np.random.default_rng(
        [args.seed, num_gpus, names.index(dist), args.batching.split(",").index(batching)]
    )
    source = corpus_source(corpus) if dist == CORPUS else distribution_source(DISTRIBUTIONS[dist])
    batch = parse_batching(batching, num_gpus, args.seqs)
    batches = [draw_batch(source, batch, rng, max_len) for _ in range(args.batches)]
    summary, first_plan = comparison.run(batches)
    summary.update(gpus=num_gpus, dist=dist, batch=batch.label, max_len=max_len)
    return summary, first_plan, cost


def measure_run_ahead(cost, options, dist, num_seqs, steps, step_s, seed, work, worker):
    """Fake training steps (~step_s each) while the next plan solves on the worker thread.
    ``work``: "numpy" (256 x 256 matrix products, which release the interpreter lock) or
    "small-ops" (64 x 64 torch ops, mostly Python dispatch that holds the lock, like the host
    side of a GPU training step launching kernels)."""
    import torch

    rng = np.random.default_rng(seed)
    max_len = cost.groups[cost.sizes[-1]].max_tokens
    batches = [
        sample_lengths(DISTRIBUTIONS[dist], num_seqs, rng, max_len) for _ in range(steps + 1)
    ]
    planner = Planner(cost, options)
    a = np.random.default_rng(0).standard_normal((256, 256))
    x = torch.randn(64, 64)

    def one():
        if work == "numpy":
            a @ a  # noqa: B018 - CPU work
        else:
            (x @ x).relu_().sum()

    # A fixed amount of work (calibrated to take ~step_s alone), so that contention with the
    # solver shows as a longer step.
    count, end = 0, time.perf_counter() + step_s
    while time.perf_counter() < end:
        one()
        count += 1

    def fake_step():
        for _ in range(count):
            one()

    # Alone and beside the solver alternate step by step, so drifting load hits both alike.
    alone, step_times, waits, solves = [], [], [], []
    with PlanAhead(planner, worker=worker) as ahead:
        ahead.submit(0, batches[0])
        ahead.get(0)
        for step in range(steps):
            t = time.perf_counter()
            fake_step()
            alone.append(time.perf_counter() - t)
            t = time.perf_counter()
            ahead.submit(step + 1, batches[step + 1])
            fake_step()
            ahead.get(step + 1)
            step_times.append(time.perf_counter() - t)
            timing = ahead.timings[step + 1]
            waits.append(timing.wait_s)
            solves.append(timing.finished - timing.started)
    return dict(
        work=work,
        worker=worker,
        fake_step_s=step_s,
        step_alone_s=float(np.median(alone)),
        step_with_planner_s=float(np.median(step_times)),
        wait_p50_s=float(np.percentile(waits, 50)),
        wait_max_s=float(np.max(waits)),
        solve_p50_s=float(np.percentile(solves, 50)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", default="64", help="simulated GPU counts")
    parser.add_argument("--dists", default=",".join([*DISTRIBUTIONS, CORPUS]))
    parser.add_argument(
        "--batching", default="seqs,1M", help="seqs (by GPU count) and/or tokens per step: 4M"
    )
    parser.add_argument("--batches", type=int, default=2, help="batches per configuration")
    parser.add_argument("--seqs", type=int, default=0, help="sequences per batch (0: by GPUs)")
    parser.add_argument(
        "overrides", nargs="*", help="planner.key=value: planner options (HeteroSP and FlexSP)"
    )
    parser.add_argument("--time-limit", type=float, help="default: planner.time_limit_s")
    parser.add_argument("--flexsp-time-limit", type=float, default=FLEXSP_TIME_LIMIT_S)
    parser.add_argument("--no-flexsp", action="store_true", help="leave the FlexSP baseline out")
    parser.add_argument("--no-megatron", action="store_true", help="leave Megatron out")
    parser.add_argument(
        "--cut",
        choices=("common", "hetero"),
        default="common",
        help="cut documents to what every method holds, or to what HeteroSP holds",
    )
    parser.add_argument(
        "--max-bucket-error",
        type=float,
        help="token error the bucketing aims under (0: exactly 16 buckets; default: the config's)",
    )
    parser.add_argument("--zero-stage", type=int, default=3)
    parser.add_argument("--layers", default="", help="override the layer pattern (e.g. SSSS...)")
    parser.add_argument("--inter-node-gbps", type=float, default=0.0, help="override, GB/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ahead-steps", type=int, default=3, help="run-ahead steps per variant")
    parser.add_argument("--out", default=str(RESULTS / "planner.json"))
    parser.add_argument("--gantt", default=str(RESULTS / "planner_gantt.png"), help="'' for none")
    args = parser.parse_args()

    profile = h100_estimate()
    model = profile.model
    if args.layers:
        layers = (args.layers * len(model.layers))[: len(model.layers)]
        model = dataclasses.replace(model, layers=layers)
    corpus = embedded_dataset("byte").lengths() if CORPUS in args.dists.split(",") else None
    results, gantt_plan = [], None
    load_start = os.getloadavg()
    start = time.perf_counter()
    print(f"model {model.layers} (dim {model.dim}); profile: {profile.label}")
    print(f"machine: {os.cpu_count()} cores, load average {load_start[0]:.1f} at the start")
    if corpus is not None:
        print(
            f"{CORPUS}: {len(corpus)} standard-library files, byte tokens, median "
            f"{int(np.median(corpus))}, max {int(corpus.max())}"
        )
    print(HEADER)
    notes = []
    for num_gpus in map(int, args.gpus.split(",")):
        for dist in args.dists.split(","):
            for batching in args.batching.split(","):
                s, plan, cost = run_config(num_gpus, dist, batching, args, profile, model, corpus)
                results.append(s)
                if num_gpus == 64 and dist == "web" and batching == "seqs" or gantt_plan is None:
                    title = f"HeteroSP plan: {dist} batch ({s['batch']}) on {num_gpus} GPUs"
                    gantt_plan = (plan, cost, title)
                print(format_row(num_gpus, dist, s["batch"], s), flush=True)
                notes += [f"{num_gpus} {dist} {s['batch']}: {n}" for n in format_notes(s)]
    for line in notes:
        print(line)
    print(f"comparison took {time.perf_counter() - start:.0f} s")
    plan, cost, title = gantt_plan
    gantt = draw_gantt(plan, cost, args.gantt, title) if args.gantt else None
    ahead_cost = CostModel(profile, profile.topology(64), zero_stage=args.zero_stage, model=model)
    ahead_options = load_config(None, args.overrides).planner
    ahead = [
        measure_run_ahead(
            ahead_cost, ahead_options, "code", 512, args.ahead_steps, 2.0, args.seed, work, worker
        )
        for work in ("numpy", "small-ops")
        for worker in ("thread", "process")
    ]
    for a in ahead:
        print(
            f"run-ahead on a {a['worker']} (64 GPUs, 512 sequences, fake {a['work']} step): "
            f"step alone {a['step_alone_s']:.3f} s, with the next plan solving "
            f"{a['step_with_planner_s']:.3f} s; get() waited p50 {a['wait_p50_s'] * 1e3:.1f} ms, "
            f"max {a['wait_max_s'] * 1e3:.1f} ms; solve p50 {a['solve_p50_s']:.2f} s"
        )
    load_end = os.getloadavg()
    print(f"load average {load_end[0]:.1f} at the end (1-minute; the machine is shared)")
    out = dict(
        machine=machine_record("one process; load average at the end"),
        load_average_1min=dict(start=load_start[0], end=load_end[0]),
        profile=profile.label,
        model_layers=model.layers,
        args=vars(args),
        configs=results,
        run_ahead=ahead,
        gantt=str(gantt) if gantt else None,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}" + (f" and {gantt}" if gantt else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
