"""Triton chunked linear attention on one GPU: correctness against the torch path and the naive
reference, then forward+backward time for 4K to 1M tokens against the torch path and fla.

    python benchmarks/gpu_kernels.py            # on a CUDA machine, < 5 minutes
    python benchmarks/gpu_kernels.py --dry-run  # on CPU: interpreter, tiny shapes, no JSON

The checks live in ``gpu_kernels_checks.py``. Prints PASS/FAIL per check and a table; writes
benchmarks/results/gpu_kernels.json. Exits 1 if any check fails (timings are then skipped:
numbers of a wrong kernel mean nothing).

Shape legend: T tokens, H heads, K = V head dims, C = 64 chunk size, N documents.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the kernels, and the checks beside us
from gpu_kernels_checks import CHUNK, load_fla, make_inputs, run_checks  # noqa: E402
from records import machine_record  # noqa: E402


def flops_fwd_bwd(T: int, H: int, K: int, V: int) -> float:
    """Multiply-adds x 2 of the chunked algorithm, forward plus backward, full C x C tiles.

    Forward: states k^T v (2TKV), inter q h (2TKV), intra q k^T (2TCK) and A v (2TCV).
    Backward: state recompute (2TKV), dh (2TKV), dv = k dh + (k q^T) do (2TKV + 2TCK + 2TCV),
    dq, dk = do h^T, v dh^T, do v^T, ds k, ds^T q (4TKV + 2TCV + 4TCK).
    Total per head: 14 TKV + 8 TCK + 6 TCV."""
    return H * T * (14 * K * V + 8 * CHUNK * K + 6 * CHUNK * V)


def bytes_fwd_bwd(T: int, H: int, K: int, V: int, M: int, elt: int) -> float:
    """HBM bytes read + written by our kernels, forward plus backward, each tensor counted once
    per kernel that touches it (a lower bound: tiles re-read by several programs and caches are
    ignored). M chunks; q, k, v, o, states [M, H, K, V] in ``elt`` bytes; g, gc, dg in fp32."""
    qk, v, state, gate = T * H * K * elt, T * H * V * elt, M * H * K * V * elt, T * H * 4
    nk = math.ceil(K / 64)  # dg is written per 64-wide K tile, then summed
    fwd = (
        2 * gate  # cumsum: g -> gc
        + (qk + v + gate + state)  # states: k, v, gc -> h
        + (2 * qk + 2 * v + gate + state)  # output: q, k, v, gc, h -> o
    )
    bwd = (
        (qk + v + gate + state)  # states recomputed
        + (qk + v + gate + state)  # dh: q, do, gc -> dh
        + (2 * qk + 2 * v + gate + state)  # dv: q, k, do, gc, dh -> dv
        + (4 * qk + 2 * v + gate + 2 * state + gate * nk)  # q, k, v, do, gc, h, dh -> dq, dk, dg
        + (gate * nk + gate)  # sum of the dg tiles
    )
    return fwd + bwd


def layouts(T: int, seed: int) -> dict[str, list[int]]:
    """'4 docs': four equal documents; 'mixed': log-uniform lengths in [64, T/4], filled to T."""
    import random

    rng, mixed, left = random.Random(seed), [], T
    while left > 0:
        n = min(left, int(math.exp(rng.uniform(math.log(64), math.log(max(T // 4, 65))))))
        mixed.append(n)
        left -= n
    return {"4 docs": [T // 4] * 3 + [T - 3 * (T // 4)], "mixed": mixed}


def time_fwd_bwd(fn, inputs, reps: int) -> float:
    """Median ms of forward + backward (cotangent on o only), after one warm-up."""
    import torch

    q, k, v, g, _, cu = inputs
    sync = torch.cuda.synchronize if q.is_cuda else (lambda: None)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (q, k, v, g)]
    do = torch.randn_like(v)
    times = []
    for i in range(reps + 1):
        for t in leaves:
            if t is not None:
                t.grad = None
        sync()
        start = time.perf_counter()
        o, _ = fn(*leaves, cu, None, None, False)
        o.backward(do)
        sync()
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def run_timings(device, tokens: list[int], H: int, D: int, dtype, reps: int = 5) -> list[dict]:
    import torch

    from hetero_sp.ops.linear_attn.chunk import chunk_linear_attn
    from hetero_sp.ops.linear_attn.torch_chunk import torch_chunk_linear_attn

    impls = {"triton": chunk_linear_attn, "torch": torch_chunk_linear_attn}
    if (fla := load_fla()) is not None:
        impls["fla"] = fla
    rows, last_torch = [], None
    for T in tokens:
        for name, lengths in layouts(T, seed=T).items():
            inputs = make_inputs(lengths, H, D, D, dtype, device)
            M = sum(-(-n // CHUNK) for n in lengths)
            row = {"T": T, "layout": name, "num_docs": len(lengths), "H": H, "K": D, "V": D}
            for impl, fn in impls.items():
                n = reps if T <= 65536 else min(reps, 3)
                if impl == "torch" and last_torch is not None:
                    estimate = last_torch[1] * T / last_torch[0] * (n + 1) / 1e3
                    if estimate > 10:
                        row[impl] = {
                            "skipped": f"~{estimate:.0f} s estimated (Python scan over chunks)"
                        }
                        continue
                try:
                    ms = time_fwd_bwd(fn, inputs, n)
                except torch.cuda.OutOfMemoryError:
                    row[impl] = {"skipped": "out of memory"}
                    torch.cuda.empty_cache()
                    continue
                except Exception as exc:
                    if impl == "triton":
                        raise
                    row[impl] = {"skipped": f"error: {type(exc).__name__}: {str(exc)[:120]}"}
                    continue
                if impl == "torch":
                    last_torch = (T, ms)
                row[impl] = {
                    "ms": ms,
                    "tflops": flops_fwd_bwd(T, H, D, D) / ms / 1e9,
                    "gbps": bytes_fwd_bwd(T, H, D, D, M, dtype.itemsize) / ms / 1e6,
                }
            rows.append(row)
            print_row(row, impls)
            del inputs
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def print_row(row: dict, impls) -> None:
    cells = []
    for impl in impls:
        r = row.get(impl, {})
        if "ms" in r:
            cells.append(f"{impl} {r['ms']:9.2f} ms {r['tflops']:6.1f} TF/s {r['gbps']:6.0f} GB/s")
        else:
            cells.append(f"{impl} {r.get('skipped', '-')}")
    ratio = ""
    for other in ("torch", "fla"):
        if "ms" in row.get(other, {}) and "ms" in row.get("triton", {}):
            ratio += f"  {other}/triton {row[other]['ms'] / row['triton']['ms']:.2f}x"
    print(
        f"  T={row['T']:>8} {row['layout']:<7} N={row['num_docs']:<5} | "
        + " | ".join(cells)
        + ratio,
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU interpreter, tiny shapes, JSON only with --out"
    )
    parser.add_argument("--out", default=None, help="default benchmarks/results/gpu_kernels.json")
    args = parser.parse_args()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    import torch
    import triton

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on CPU")
        return 2
    machine = "CPU (Triton interpreter)" if args.dry_run else torch.cuda.get_device_name()
    print(f"machine: {machine}; torch {torch.__version__}, triton {triton.__version__}")
    start = time.perf_counter()
    print("correctness (fp64 results compared; tolerances per line):")
    checks = run_checks(device, args.dry_run)
    print(f"checks took {time.perf_counter() - start:.0f} s")
    failed = [c["name"] for c in checks if not c["pass"]]
    rows = []
    if failed:
        print(f"FAILED: {failed}; timings skipped")
    elif args.dry_run:
        print(
            "forward+backward, fp32, H=2, K=V=32, interpreter (exercises the code, not a timing):"
        )
        rows = run_timings(device, [256], 2, 32, torch.float32, reps=1)
    else:
        print("forward+backward, bf16, H=16, K=V=128 (TFLOP/s and GB/s from the formulas above):")
        tokens = [4096, 16384, 65536, 262144, 1048576]
        rows = run_timings(device, tokens, 16, 128, torch.bfloat16)
    record = machine_record("Triton interpreter (dry run)" if args.dry_run else "one GPU")
    result = {"machine": record,
              "checks": checks, "timings": rows, "seconds": time.perf_counter() - start}  # fmt: skip
    out = args.out or (None if args.dry_run else ROOT / "benchmarks/results/gpu_kernels.json")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
    print(f"total {result['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
