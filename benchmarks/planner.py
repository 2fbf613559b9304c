"""Planner benchmark: simulated steps on 8-256 GPUs priced with the H100 estimate profile.

For the same batches of long-tailed lengths it compares, in predicted step time:
- static: the best single SP degree for the whole run (DeepSpeed-Ulysses style),
- homogeneous: the best single degree chosen per batch,
- HeteroSP: the planner's heterogeneous groups,
- lower bounds: total GPU-seconds / GPUs (or the slowest sequence), and the MILP's own bound;
plus the planner's solve time (p50/p95), the p95 over micro-batches of the bucket token error
(tokens that rounding every length up to its bucket's longest adds), and how long the training
loop waits for a plan solved one step ahead (``PlanAhead``, on a thread and on a process) and how
much the solve slows a fake step of fixed CPU work beside it.

Writes benchmarks/results/planner.json and one Gantt chart, benchmarks/results/planner_gantt.png.

    python benchmarks/planner.py                         # default: ~2 minutes on 2 busy cores
    python benchmarks/planner.py --gpus 64 --batches 20  # a bigger sweep
    python benchmarks/planner.py --layers SSSS           # a softmax-only model, same dims
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

from hetero_sp.planner import CostModel, PlanAhead, Planner, PlannerConfig  # noqa: E402
from hetero_sp.planner.cluster import Link  # noqa: E402
from hetero_sp.planner.estimate import h100_estimate  # noqa: E402
from hetero_sp.planner.gantt import draw_gantt  # noqa: E402
from hetero_sp.planner.simulate import (  # noqa: E402
    DISTRIBUTIONS,
    homogeneous_times,
    milp_bound,
    sample_lengths,
    step_lower_bound,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SEQS = {8: 64, 16: 128, 32: 256, 64: 512, 128: 1024, 256: 1024}


def run_config(num_gpus, dist, args, profile, model):
    overrides = {}
    if args.inter_node_gbps:
        inter = Link(
            latency_s=profile.inter_node.latency_s, bandwidth_Bps=args.inter_node_gbps * 1e9
        )
        overrides["inter_node"] = inter
    cost = CostModel(
        profile, profile.topology(num_gpus, **overrides), zero_stage=args.zero_stage, model=model
    )
    options = PlannerConfig(time_limit_s=args.time_limit, max_bucket_error=args.max_bucket_error)
    planner = Planner(cost, options)
    rng = np.random.default_rng([args.seed, num_gpus, list(DISTRIBUTIONS).index(dist)])
    max_len = cost.groups[cost.sizes[-1]].max_tokens
    num_seqs = args.seqs or DEFAULT_SEQS.get(num_gpus, 8 * num_gpus)
    rows, first_plan = [], None
    for _ in range(args.batches):
        lengths = sample_lengths(DISTRIBUTIONS[dist], num_seqs, rng, max_len)
        start = time.perf_counter()
        plan = planner(lengths)
        solve_s = time.perf_counter() - start
        first_plan = first_plan or plan
        rows.append(
            dict(
                tokens=sum(lengths),
                max_len=max(lengths),
                micro_batches=len(plan.micro_batches),
                hetero_s=plan.predicted_step_s,
                homog_s={str(d): t for d, t in homogeneous_times(lengths, cost).items()},
                lower_bound_s=step_lower_bound(lengths, cost),
                split_bound_s=sum(mb.lower_bound_s for mb in plan.micro_batches),
                milp_bound_s=milp_bound(plan),
                solve_s=solve_s,
                max_gap=max((mb.solver.gap or 0.0) for mb in plan.micro_batches),
                token_errors=[mb.solver.token_error for mb in plan.micro_batches],
            )
        )
    static = {}
    for d in map(str, cost.sizes):
        if all(d in r["homog_s"] for r in rows):
            static[d] = sum(r["homog_s"][d] for r in rows)
    best_static = min(static, key=static.get)
    hetero = sum(r["hetero_s"] for r in rows)
    homog = sum(min(r["homog_s"].values()) for r in rows)
    solve = np.array([r["solve_s"] for r in rows])
    summary = dict(
        gpus=num_gpus,
        dist=dist,
        seqs=num_seqs,
        batches=args.batches,
        static_degree=int(best_static),
        static_s=static[best_static],
        homog_s=homog,
        hetero_s=hetero,
        lower_bound_s=sum(r["lower_bound_s"] for r in rows),
        split_bound_s=sum(r["split_bound_s"] for r in rows),
        milp_bound_s=sum(r["milp_bound_s"] for r in rows),
        speedup_vs_static=static[best_static] / hetero,
        speedup_vs_homog=homog / hetero,
        over_lower_bound=hetero / sum(r["lower_bound_s"] for r in rows),
        over_split_bound=hetero / sum(r["split_bound_s"] for r in rows),
        solve_p50_s=float(np.percentile(solve, 50)),
        solve_p95_s=float(np.percentile(solve, 95)),
        token_error_p95=float(np.percentile([e for r in rows for e in r["token_errors"]], 95)),
        micro_batches=float(np.mean([r["micro_batches"] for r in rows])),
        batches_detail=rows,
    )
    return summary, first_plan, cost


def measure_run_ahead(cost, dist, num_seqs, steps, step_s, seed, work, worker):
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
    planner = Planner(cost, PlannerConfig())
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
    parser.add_argument("--gpus", default="8,64,256", help="simulated GPU counts")
    parser.add_argument("--dists", default=",".join(DISTRIBUTIONS))
    parser.add_argument("--batches", type=int, default=12, help="batches per configuration")
    parser.add_argument("--seqs", type=int, default=0, help="sequences per batch (0: by GPUs)")
    parser.add_argument("--time-limit", type=float, default=PlannerConfig().time_limit_s)
    parser.add_argument(
        "--max-bucket-error",
        type=float,
        default=PlannerConfig().max_bucket_error,
        help="token error the bucketing aims under (0: exactly 16 buckets)",
    )
    parser.add_argument("--zero-stage", type=int, default=3)
    parser.add_argument("--layers", default="", help="override the layer pattern (e.g. SSSS...)")
    parser.add_argument("--inter-node-gbps", type=float, default=0.0, help="override, GB/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ahead-steps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "planner.json"))
    parser.add_argument("--gantt", default=str(RESULTS / "planner_gantt.png"), help="'' for none")
    args = parser.parse_args()

    profile = h100_estimate()
    model = profile.model
    if args.layers:
        layers = (args.layers * len(model.layers))[: len(model.layers)]
        model = dataclasses.replace(model, layers=layers)
    results, gantt_plan = [], None
    load_start = os.getloadavg()
    print(f"model {model.layers} (dim {model.dim}); profile: {profile.label}")
    print(f"machine: {os.cpu_count()} cores, load average {load_start[0]:.1f} at the start")
    header = (
        f"{'gpus':>4} {'dist':>12} {'seqs':>5} {'mb':>4} {'static':>9} {'d':>3} {'homog':>9} "
        f"{'hetero':>9} {'x static':>8} {'x homog':>7} {'/LB':>6} {'/splitLB':>8} {'/MILPb':>6} "
        f"{'p50 s':>6} {'p95 s':>6} {'err p95':>7}"
    )
    print(header)
    for num_gpus in map(int, args.gpus.split(",")):
        for dist in args.dists.split(","):
            s, plan, cost = run_config(num_gpus, dist, args, profile, model)
            results.append(s)
            if num_gpus == 64 and dist == "web" or gantt_plan is None:
                gantt_plan = (plan, cost, f"HeteroSP plan: {dist} batch on {num_gpus} GPUs")
            print(
                f"{num_gpus:>4} {dist:>12} {s['seqs']:>5} {s['micro_batches']:>4.1f} "
                f"{s['static_s']:>9.1f} {s['static_degree']:>3} {s['homog_s']:>9.1f} "
                f"{s['hetero_s']:>9.1f} {s['speedup_vs_static']:>8.2f} {s['speedup_vs_homog']:>7.2f} "
                f"{s['over_lower_bound']:>6.3f} {s['over_split_bound']:>8.3f} "
                f"{s['hetero_s'] / s['milp_bound_s']:>6.3f} {s['solve_p50_s']:>6.2f} "
                f"{s['solve_p95_s']:>6.2f} {s['token_error_p95']:>7.1%}",
                flush=True,
            )
    plan, cost, title = gantt_plan
    gantt = draw_gantt(plan, cost, args.gantt, title) if args.gantt else None
    ahead_cost = CostModel(profile, profile.topology(64), zero_stage=args.zero_stage, model=model)
    ahead = [
        measure_run_ahead(ahead_cost, "code", 512, args.ahead_steps, 2.0, args.seed, work, worker)
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
