"""Linear-attention sequence parallelism: LASP-2 vs ZeCO All-Scan, side by side.

For P gloo processes on this machine, each holding ``tokens_per_rank`` tokens of one causal
document that runs over every rank (every incoming state matters, and ZeCO's chain is as long
as it gets), measures per strategy:

- bytes: what a rank sends plus receives for one layer call, forward + backward (the ``COMM``
  counter, the busiest rank; checked against the planner's formula);
- comm: the exchange alone (LASP-2's two all-gathers, ZeCO's forward and backward scans) on
  states of the layer's shape, the slowest rank's time;
- layer: one linear-attention call forward + backward through the strategy (local attention,
  summaries, exchange, combine, corrections; the q/k/v/o projections are the same for both
  and left out), the slowest rank's time; ``local`` is the same shard run alone (no SP).

    python benchmarks/sp_linear.py [--ranks 2 4 8] [--tokens-per-rank 512 2048 8192] [--iters 3]

Prints a table with the ratios zeco / lasp2 and writes ``benchmarks/results/sp_linear.json``.
Times are medians over ``--iters`` timed repetitions after one warm-up; the strategies
alternate call by call so both see the same background load.
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
import torch.nn.functional as F
from harness import spawn_gloo
from records import machine_record

from hetero_sp.core.traffic import lasp2_bytes, zeco_link_bytes
from hetero_sp.model import PackedSeqs
from hetero_sp.ops.backends import local_linear_attention
from hetero_sp.parallel import SPContext, linear_strategy, make_layout
from hetero_sp.parallel.lasp2 import gather_summaries
from hetero_sp.parallel.linear_pieces import piece_table, zeco_links
from hetero_sp.parallel.traffic_counter import COMM
from hetero_sp.parallel.zeco import NUM_BLOCKS, start_scan

STRATEGIES = ("lasp2", "zeco")
RESULTS = Path(__file__).resolve().parent / "results" / "sp_linear.json"


def _slowest(seconds: float, group) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.item()


def _timed(fn, group) -> float:
    dist.barrier(group=group)
    start = time.perf_counter()
    fn()
    return _slowest(time.perf_counter() - start, group)


def _exchange(strategy, table, H, K, V, group):
    """The strategy's communication alone, forward and backward, on states of the layer's shape."""
    pieces = table.num_pieces
    u = torch.randn(pieces, H, K, V)
    b = torch.full((pieces, H), 0.5)
    if strategy == "lasp2":
        gather_summaries(torch.cat([u.flatten(1), b], 1), table, group, "fwd")
        gather_summaries(u, table, group, "bwd")
    else:
        job, _ = start_scan(table, u, b, group, NUM_BLOCKS, backward=False)
        job.result()
        job, _ = start_scan(table, u, b, group, NUM_BLOCKS, backward=True)
        job.result()


def _measure(rank, P, T, args, group) -> dict:
    """One row: both strategies and the local baseline at T tokens per rank."""
    H, K, V = args.heads, args.head_dim, args.head_dim
    layout = make_layout([T * P], P, args.layout)
    table = piece_table(layout, rank)
    gen = torch.Generator().manual_seed(rank)
    q = F.normalize(torch.randn(T, H, K, generator=gen), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(T, H, K, generator=gen), dim=-1).requires_grad_()
    v = torch.randn(T, H, V, generator=gen).requires_grad_()
    g = (F.logsigmoid(torch.randn(T, H, generator=gen) + 4.0)).requires_grad_()
    do = torch.randn(T, H, V, generator=gen)
    seqs = {
        s: PackedSeqs.for_rank(SPContext(group, rank, P, layout, linear_strategy=s))
        for s in STRATEGIES
    }

    def layer(strategy):
        o = linear_strategy(strategy)(q, k, v, g, seqs[strategy], backend="torch")
        o.backward(do)

    def alone():
        cu = seqs["lasp2"].cu_seqlens_list
        o, _ = local_linear_attention(q, k, v, g, cu, scale=K**-0.5, backend="torch")
        o.backward(do)

    row = {"ranks": P, "tokens_per_rank": T, "tokens": T * P}
    times = {f"{s}_{part}": [] for s in STRATEGIES for part in ("layer", "comm")}
    times["local"] = []
    for it in range(args.iters + 1):
        for s in STRATEGIES:
            COMM.reset()
            layer_s = _timed(lambda s=s: layer(s), group)
            moved = _slowest(float(COMM.total()), group)
            comm_s = _timed(lambda s=s: _exchange(s, table, H, K, V, group), group)
            if it > 0:  # the first call warms up allocators and gloo connections
                times[f"{s}_layer"].append(layer_s)
                times[f"{s}_comm"].append(comm_s)
            row[f"{s}_bytes"] = int(moved)
        local_s = _timed(alone, group)
        if it > 0:
            times["local"].append(local_s)
    row["lasp2_formula_bytes"] = lasp2_bytes(P, H, K, V, 4, table.stride).total
    row["zeco_formula_bytes"] = max(
        zeco_link_bytes(*zeco_links(piece_table(layout, r)), H, K, V, 4).total for r in range(P)
    )
    for name, values in times.items():
        row[f"{name}_ms"] = 1e3 * statistics.median(values)
    return row


def _rows(rank, P, group, args) -> list[dict]:
    return [_measure(rank, P, T, args, group) for T in args.tokens_per_rank]


def _table(rows: list[dict]) -> str:
    head = (
        f"{'P':>2} {'T/P':>5} | {'lasp2 KB':>8} {'zeco KB':>7} {'ratio':>5} | "
        f"{'lasp2 comm':>10} {'zeco comm':>9} {'ratio':>5} | "
        f"{'lasp2 layer':>11} {'zeco layer':>10} {'ratio':>5} | {'local':>6} | bytes=formula"
    )
    lines = [
        head,
        f"{'':>8} | {'(fwd+bwd, send+recv)':^22} | {'(ms)':^26} | {'(ms)':^28} | {'(ms)':>6} |",
    ]
    lines.append("-" * len(head))
    for r in rows:
        ok = all(r[f"{s}_bytes"] == r[f"{s}_formula_bytes"] for s in STRATEGIES)
        lines.append(
            f"{r['ranks']:>2} {r['tokens_per_rank']:>5} | "
            f"{r['lasp2_bytes'] / 1e3:>8.0f} {r['zeco_bytes'] / 1e3:>7.0f} "
            f"{r['zeco_bytes'] / r['lasp2_bytes']:>5.2f} | "
            f"{r['lasp2_comm_ms']:>10.2f} {r['zeco_comm_ms']:>9.2f} "
            f"{r['zeco_comm_ms'] / r['lasp2_comm_ms']:>5.2f} | "
            f"{r['lasp2_layer_ms']:>11.1f} {r['zeco_layer_ms']:>10.1f} "
            f"{r['zeco_layer_ms'] / r['lasp2_layer_ms']:>5.2f} | {r['local_ms']:>6.1f} | "
            f"{'yes' if ok else 'NO'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--tokens-per-rank", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layout", choices=("contiguous", "zigzag"), default="contiguous")
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
        "gloo (CPU processes on one machine), linear-attention backend torch",
        load_average_1min_start=load_start,
        wall_s=time.perf_counter() - start,
    )
    config = {k: getattr(args, k) for k in ("heads", "head_dim", "layout", "iters")}
    config.update(
        dtype="float32", decay=True, zeco_blocks=NUM_BLOCKS, documents="one over all ranks"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "config": config, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
