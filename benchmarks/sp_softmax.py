"""Softmax-attention sequence parallelism: Ulysses vs all-gather K/V, side by side.

For P gloo processes on this machine and a group stream of N tokens (one causal document, the
case SP exists for), times one attention layer's forward + backward through each strategy
(local attention plus its collectives; the q/k/v/o projections are the same for both and left
out) and counts the bytes a rank sends and receives (the ``COMM`` counter, checked against the
formula the planner uses). Each strategy runs on the layout ``layout_kind_for`` gives it.

    python benchmarks/sp_softmax.py [--ranks 2 4 8] [--tokens 1024 2048 4096 8192] [--iters 3]

Prints a table with the ratios ulysses / allgather_kv and writes
``benchmarks/results/sp_softmax.json``. A step's time is the slowest rank's, the median over
``--iters`` timed repetitions after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from harness import spawn_gloo
from records import machine_record

from hetero_sp.core.traffic import allgather_kv_bytes, ulysses_bytes
from hetero_sp.model import PackedSeqs
from hetero_sp.parallel import SPContext, layout_kind_for, make_layout, softmax_strategy
from hetero_sp.parallel.traffic_counter import COMM

STRATEGIES = ("ulysses", "allgather_kv")
RESULTS = Path(__file__).resolve().parent / "results" / "sp_softmax.json"


def _one_call(strategy, sp, q, k, v, do):
    o = softmax_strategy(strategy)(q, k, v, PackedSeqs.for_rank(sp), backend="torch")
    o.backward(do)


def _rows(rank, P, group, args) -> list[dict]:
    H, G, E = args.heads, args.kv_heads, args.head_dim
    rows = []
    for N in args.tokens:
        row = {"ranks": P, "tokens": N, "tokens_per_rank": N // P}
        calls, times = {}, {s: [] for s in STRATEGIES}
        for strategy in STRATEGIES:
            layout = make_layout([N], P, layout_kind_for(strategy))
            sp = SPContext(group, rank, P, layout, softmax_strategy=strategy)
            T = layout.tokens_per_rank
            gen = torch.Generator().manual_seed(rank)
            q, k, v = (torch.randn(T, n, E, generator=gen).requires_grad_() for n in (H, G, G))
            calls[strategy] = (sp, q, k, v, torch.randn(T, H, E, generator=gen))
        # The strategies alternate call by call so that both see the same background load.
        for it in range(args.iters + 1):
            for strategy in STRATEGIES:
                sp, q, k, v, do = calls[strategy]
                q.grad = k.grad = v.grad = None
                COMM.reset()
                dist.barrier(group=group)
                start = time.perf_counter()
                _one_call(strategy, sp, q, k, v, do)
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
                if it > 0:  # the first call warms up allocators and gloo connections
                    times[strategy].append(elapsed.item())
                moved = torch.tensor([COMM.total()], dtype=torch.float64)
                dist.all_reduce(moved, op=dist.ReduceOp.MAX, group=group)
                row[f"{strategy}_bytes"] = int(moved.item())
        for strategy in STRATEGIES:
            T = calls[strategy][0].layout.tokens_per_rank
            if strategy == "ulysses":  # per rank: uneven GQA sharing moves different bytes
                formula = max(ulysses_bytes(T, P, H, G, E, 4, rank=r).total for r in range(P))
            else:
                formula = allgather_kv_bytes(T, P, G, E, 4).total
            row[f"{strategy}_ms"] = 1e3 * statistics.median(times[strategy])
            row[f"{strategy}_formula_bytes"] = formula  # the busiest rank's, like the counter
        rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    head = (
        f"{'P':>2} {'N':>6} {'N/P':>5} | {'ulysses ms':>10} {'allgather ms':>12} "
        f"{'ratio':>6} | {'ulysses MB':>10} {'allgather MB':>12} {'ratio':>6} | bytes=formula"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = all(r[f"{s}_bytes"] == r[f"{s}_formula_bytes"] for s in STRATEGIES)
        lines.append(
            f"{r['ranks']:>2} {r['tokens']:>6} {r['tokens_per_rank']:>5} | "
            f"{r['ulysses_ms']:>10.1f} {r['allgather_kv_ms']:>12.1f} "
            f"{r['ulysses_ms'] / r['allgather_kv_ms']:>6.2f} | "
            f"{r['ulysses_bytes'] / 1e6:>10.2f} {r['allgather_kv_bytes'] / 1e6:>12.2f} "
            f"{r['ulysses_bytes'] / r['allgather_kv_bytes']:>6.2f} | {'yes' if ok else 'NO'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    rows = []
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    for P in args.ranks:
        rows += spawn_gloo(_rows, P, args)
        print(f"P={P} done after {time.perf_counter() - start:.0f} s", flush=True)
    print(_table(rows))
    machine = machine_record(
        "gloo (CPU processes on one machine), softmax backend torch SDPA",
        load_average_1min_start=load_start,
        wall_s=time.perf_counter() - start,
    )
    config = {k: getattr(args, k) for k in ("heads", "kv_heads", "head_dim", "iters")}
    config["dtype"] = "float32"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "config": config, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
