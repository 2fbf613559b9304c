"""Long-context throughput: tokens/s per device and MFU of a hybrid model at 32K-1M tokens, for
every SP strategy pair, in one run over however many ranks torchrun gives it.

One sequence of each context length is sharded over all ranks (one SP group of the world
size); each (softmax, linear) strategy pair runs forward + backward a few times and the median
is kept. A context or pair that does not fit (out of memory) or is not allowed (Ulysses needs
the query heads divisible by the group size) is reported as skipped with the reason.

    # GPU node: the ~1B Linear-Llama-style hybrid in bf16
    torchrun --nproc_per_node 8 benchmarks/throughput_1m.py --model 1b
    # CPU: a tiny model at short contexts, gloo ranks
    torchrun --nproc_per_node 4 benchmarks/throughput_1m.py --model tiny

On one rank nothing is communicated, so one strategy pair is timed. ``--budget-s`` bounds the
whole run: a pair whose estimated time (its last timed context scaled by training FLOPs) exceeds
what is left is reported as skipped, so a GPU session with minutes to spare still gets every
context that fits them (``benchmarks/gpu_session.sh``).

Prints a markdown table and writes benchmarks/results/throughput_1m_<model>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # records.py, when started by path or -m

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from records import machine_record  # noqa: E402

from hetero_sp.config import ModelConfig  # noqa: E402
from hetero_sp.core.flops import device_peak_flops, measure_matmul_flops, training_flops  # noqa: E402
from hetero_sp.distributed import init_distributed, shutdown_distributed  # noqa: E402
from hetero_sp.model import HybridLM, PackedSeqs  # noqa: E402
from hetero_sp.model.loss import IGNORE_INDEX  # noqa: E402
from hetero_sp.parallel import SPContext, layout_kind_for, make_layout, ulysses_supported  # noqa: E402

MODELS = {
    # ~1.3B parameters: 24 layers (LLLS x 6), dim 2048, 16 query / 4 KV heads of 128.
    "1b": (
        ModelConfig(
            vocab_size=32000,
            dim=2048,
            layers="LLLS" * 6,
            num_heads=16,
            num_kv_heads=4,
            ffn_dim=5632,
        ),
        (32768, 131072, 524288, 1048576),
    ),
    "tiny": (
        ModelConfig(
            vocab_size=258, dim=64, layers="LLLS", num_heads=4, num_kv_heads=2, ffn_dim=128
        ),
        (4096, 8192, 16384),
    ),
}
PAIRS = (
    ("ulysses", "lasp2"),
    ("ulysses", "zeco"),
    ("allgather_kv", "lasp2"),
    ("allgather_kv", "zeco"),
)


def time_pair(model, cfg, context, softmax, linear, rank, world, device, repeats):
    layout = make_layout([context], world, layout_kind_for(softmax))
    sp = SPContext(
        group=dist.group.WORLD if world > 1 else None, rank=rank, size=world, layout=layout,
        softmax_strategy=softmax, linear_strategy=linear,
    )  # fmt: skip
    seqs = PackedSeqs.for_rank(sp, device)
    gen = torch.Generator().manual_seed(context)
    tokens = torch.randint(0, cfg.vocab_size, (context + layout.num_pad,), generator=gen)
    local = layout.local_index(rank)
    inputs = tokens[local].to(device)
    following = (local + 1).clamp(max=tokens.numel() - 1)
    labels = torch.where(local + 1 < context, tokens[following], IGNORE_INDEX).to(device)
    times = []
    for i in range(repeats + 1):  # the first call warms up (kernel compilation, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        begin = time.perf_counter()
        model(inputs, seqs, labels).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = torch.tensor([time.perf_counter() - begin], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        model.zero_grad(set_to_none=True)
        if i:
            times.append(elapsed.item())
    return statistics.median(times)


def _pairs(world: int) -> tuple[tuple[str, str], ...]:
    """The strategy pairs worth timing: on one rank nothing is communicated and every pair runs
    the same computation, so one is timed."""
    return PAIRS[:1] if world == 1 else PAIRS


def _skip_reason(cfg, softmax, world, estimate_s, left_s) -> str | None:
    if (
        "S" in cfg.layers
        and softmax == "ulysses"
        and not ulysses_supported(cfg.num_heads, cfg.num_kv_heads, world)
    ):
        return f"Ulysses needs {cfg.num_heads} query heads divisible by {world}"
    if estimate_s is not None and left_s is not None and estimate_s > left_s:
        return f"estimated {estimate_s:.0f} s, {max(left_s, 0):.0f} s left of --budget-s"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--contexts", default=None, help="comma-separated context lengths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock seconds for the whole run: a pair whose estimated time (the last timed "
        "call scaled by training FLOPs, times repeats + 1) exceeds what is left is skipped",
    )
    parser.add_argument(
        "--out", default=None, help="default benchmarks/results/throughput_1m_<model>.json"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    info = init_distributed()
    cfg, contexts = MODELS[args.model]
    if args.contexts:
        contexts = tuple(int(c) for c in args.contexts.split(","))
    dtype = torch.bfloat16 if info.device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = HybridLM(cfg, checkpoint_blocks=True).to(info.device, dtype)
    peak = device_peak_flops(info.device, "bf16" if dtype == torch.bfloat16 else "fp32")
    if peak is None:
        peak = measure_matmul_flops(info.device)
    name = (
        torch.cuda.get_device_name(info.device)
        if info.device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores)"
    )
    rows = []
    seconds_per_flop = {}  # per pair: the last timed call's seconds / its training FLOPs
    for context in contexts:
        flops = training_flops(cfg, [context])
        for softmax, linear in _pairs(info.world_size):
            row = {"context": context, "softmax": softmax, "linear": linear}
            rate = seconds_per_flop.get((softmax, linear))
            estimate = None if rate is None else rate * flops * (args.repeats + 1)
            left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - start)
            # Every rank decides on rank 0's clock, so they skip the same pairs.
            left = _broadcast_float(left, info.device)
            reason = _skip_reason(cfg, softmax, info.world_size, estimate, left)
            if reason is not None:
                row["skipped"] = reason
            else:
                try:
                    seconds = time_pair(
                        model, cfg, context, softmax, linear, info.rank, info.world_size,
                        info.device, args.repeats,
                    )  # fmt: skip
                    seconds_per_flop[softmax, linear] = seconds / flops
                    row.update(
                        step_s=seconds,
                        tokens_per_s_per_device=context / seconds / info.world_size,
                        mfu=flops / seconds / (peak * info.world_size),
                    )
                except torch.OutOfMemoryError:
                    row["skipped"] = "out of memory"
                    model.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
            rows.append(row)
            if info.rank == 0:
                print(json.dumps(row), flush=True)
    if info.rank == 0:
        note = ""
        if info.world_size == 1:
            note = "; one rank: no communication, so one strategy pair stands for all"
        print(
            f"\n{args.model} model, {info.world_size} x {name}, {dtype}, "
            f"activation checkpointing on{note}\n"
        )
        print("| context | softmax | linear | step s | tokens/s/device | MFU |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            if "skipped" in r:
                print(
                    f"| {r['context']} | {r['softmax']} | {r['linear']} | skipped: {r['skipped']} | | |"
                )
            else:
                print(
                    f"| {r['context']} | {r['softmax']} | {r['linear']} | {r['step_s']:.3f} | {r['tokens_per_s_per_device']:.0f} | {100 * r['mfu']:.1f}% |"
                )
        out = {
            "machine": machine_record(f"{info.world_size} ranks, {dtype}"),
            "model": args.model,
            "devices": info.world_size,
            "device": name,
            "dtype": str(dtype),
            "torch": torch.__version__,
            "peak_flops_per_device": peak,
            "repeats": args.repeats,
            "budget_s": args.budget_s,
            "rows": rows,
        }
        path = (
            Path(args.out)
            if args.out
            else ROOT / "benchmarks" / "results" / f"throughput_1m_{args.model}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}")
    shutdown_distributed()


def _broadcast_float(value: float | None, device: torch.device) -> float | None:
    """Rank 0's ``value`` on every rank (None stays None: it is the same on all ranks)."""
    if value is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.item()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
