"""Triton chunked linear attention on one GPU: correctness against the torch path and the naive
reference, then forward+backward time for 4K to 1M tokens against the torch path and fla.

    python benchmarks/gpu_kernels.py            # on a CUDA machine, < 5 minutes
    python benchmarks/gpu_kernels.py --dry-run  # on CPU: interpreter, tiny shapes, no JSON

Prints PASS/FAIL per check and a table; writes benchmarks/results/gpu_kernels.json. Exits 1 if
any check fails (timings are then skipped: numbers of a wrong kernel mean nothing).

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
sys.path.insert(0, str(ROOT))
CHUNK = 64


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


def make_inputs(lengths, H, K, V, dtype, device, seed=0, decay=True):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(seed)
    T = sum(lengths)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    q, k, v = rnd(T, H, K), rnd(T, H, K), rnd(T, H, V)
    # Normalised q, k as in the model keep the outputs O(1) however long the document.
    q, k = F.normalize(q.float(), dim=-1).to(dtype), F.normalize(k.float(), dim=-1).to(dtype)
    g = F.logsigmoid(rnd(T, H).float() + 3) if decay else None
    h0 = rnd(len(lengths), H, K, V) * 0.1
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return q, k, v, g, h0, cu


def run_op(fn, inputs, dtype, device, with_state=True, seed=1, keep=slice(None), do=None):
    """Forward + backward with random cotangents on o (or ``do``) and the final state; fp64
    results (the per-token ones restricted to the tokens ``keep``)."""
    import torch

    q, k, v, g, h0, cu = inputs
    # g stays fp32 with 16-bit q, k, v, as in the model.
    dtypes = {
        "q": dtype,
        "k": dtype,
        "v": dtype,
        "h0": dtype,
        "g": torch.promote_types(dtype, torch.float32),
    }
    named = {"q": q, "k": k, "v": v, "h0": h0 if with_state else None, "g": g}
    leaves = {
        n: t.detach().to(device, dtypes[n], copy=True).requires_grad_()
        for n, t in named.items()
        if t is not None
    }
    o, final = fn(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("g"), cu, None, leaves.get("h0"),
        with_state,
    )  # fmt: skip
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if do is None:
        do = torch.randn(o.shape, generator=gen)
    loss = (o * do.to(device, o.dtype)).sum()
    if with_state:
        loss = loss + (final * torch.randn(final.shape, generator=gen).to(device, o.dtype)).sum()
    loss.backward()
    out = {"o": o.detach()[keep]} | ({"final": final.detach()} if with_state else {})
    out |= {f"d{n}": t.grad[keep] for n, t in leaves.items() if n != "h0"}
    if with_state:
        out["dh0"] = leaves["h0"].grad
    return {n: t.double().cpu() for n, t in out.items()}


def compare(name, got, ref, metric, tol, checks):
    """max-rel: max|a-e| / max|e|; rms-rel: ||a-e|| / ||e||. One PASS/FAIL line per tensor."""
    worst, ok = {}, True
    for key, expected in ref.items():
        diff = got[key] - expected
        if metric == "max-rel":
            err = diff.abs().max().item() / max(expected.abs().max().item(), 1e-30)
        else:
            err = diff.norm().item() / max(expected.norm().item(), 1e-30)
        if not math.isfinite(err):
            err = float("inf")
        worst[key] = err
        ok &= err <= tol
    line = " ".join(f"{k}={e:.1e}" for k, e in worst.items())
    print(f"  {'PASS' if ok else 'FAIL'}  {name:<46} {metric} <= {tol:g}: {line}", flush=True)
    checks.append({"name": name, "metric": metric, "tol": tol, "errors": worst, "pass": ok})


def compile_count(kernel) -> int | None:
    """Compiled variants held by a (possibly autotuned) Triton kernel; None if unreadable."""
    fn = kernel if hasattr(kernel, "device_caches") else getattr(kernel, "fn", None)
    caches = getattr(fn, "device_caches", None)
    if caches is None:
        return None
    try:
        return sum(len(entry[0]) for entry in caches.values())
    except (TypeError, IndexError, KeyError):
        return None


def run_checks(device, dry_run: bool) -> list[dict]:
    import torch

    from kernels.common.cumsum import chunk_local_cumsum_fwd_kernel_scalar
    from kernels.linear_attn import chunk_bwd, chunk_bwd_dqkg, chunk_fwd
    from kernels.linear_attn.chunk import chunk_linear_attn
    from kernels.linear_attn.naive import naive_linear_attn
    from kernels.linear_attn.torch_chunk import torch_chunk_linear_attn

    torch.backends.cuda.matmul.allow_tf32 = False  # the torch reference in true fp32
    checks: list[dict] = []
    small = [1, 63, 64, 65, 0, 130, 200]
    # fp32: ieee dots; the only other rounding is fp32 accumulation and the GPU's exp (~2 ulp).
    heads, dk, dv = (2, 32, 16) if dry_run else (4, 64, 32)
    for decay in (True, False):
        inp = make_inputs(small, heads, dk, dv, torch.float64, "cpu", decay=decay)
        ref = run_op(naive_linear_attn, inp, torch.float64, "cpu")
        got = run_op(chunk_linear_attn, inp, torch.float32, device)
        compare(f"fp32 vs naive fp64, {small}, decay={decay}", got, ref, "max-rel", 1e-4, checks)
    lengths = [300, 37] if dry_run else [5000, 37, 1, 3000, 154]
    heads, dim = (2, 32) if dry_run else (4, 128)
    inp = make_inputs(lengths, heads, dim, dim, torch.float32, device)
    ref = run_op(torch_chunk_linear_attn, inp, torch.float32, device)
    got = run_op(chunk_linear_attn, inp, torch.float32, device)
    compare(f"fp32 vs torch fp32, {lengths}, K=V={dim}", got, ref, "max-rel", 1e-4, checks)
    if device != "cpu":
        # bf16: inputs, states and attention tiles are rounded to bf16 (eps 3.9e-3) before the
        # tensor-core products; the reference runs in fp32 on the same bf16-rounded inputs.
        inp16 = [t.bfloat16().float() if torch.is_tensor(t) and t.dim() > 2 else t for t in inp]
        ref = run_op(torch_chunk_linear_attn, inp16, torch.float32, device)
        got = run_op(chunk_linear_attn, inp16, torch.bfloat16, device)
        compare(f"bf16 vs torch fp32, {lengths}, K=V={dim}", got, ref, "rms-rel", 2e-2, checks)
        fla = load_fla()
        if fla is not None:
            try:
                got_fla = run_op(fla, inp16, torch.bfloat16, device)
            except Exception as exc:  # fla refuses some torch / triton versions at run time
                print(f"  SKIP  bf16 vs fla: fla failed: {type(exc).__name__}: {str(exc)[:160]}")
            else:
                name = "bf16 vs fla chunk_simple_gla bf16 (same inputs)"
                compare(name, got, got_fla, "rms-rel", 2e-2, checks)
    # Addresses beyond 2^31 elements: one document longer than 2^31 / (H K) tokens, decay
    # strong enough (g <= -1) that the last tokens forget everything 256 tokens back, so the
    # kernels' results there must equal a run on the tail alone (outputs and all gradients).
    T, H, D, tail, ctx = (700, 2, 32, 128, 256) if dry_run else (1_100_000, 16, 128, 4096, 256)
    dtype = torch.float32 if dry_run else torch.bfloat16
    q, k, v, _, _, _ = make_inputs([T], H, D, D, dtype, device, seed=3)
    g = torch.nn.functional.logsigmoid(torch.randn(T, H, device=device)) - 1.0
    # The tail starts on a chunk boundary of the full run, so both runs do the same arithmetic
    # on the last tokens once the carried-in state has underflowed to 0: expect bitwise equality.
    s = (T - tail - ctx) // CHUNK * CHUNK
    last = slice(-tail, None)
    do = torch.randn(v.shape, device=device)
    full = (q, k, v, g, None, [0, T])
    full = run_op(chunk_linear_attn, full, dtype, device, False, keep=last, do=do)
    part = (q[s:], k[s:], v[s:], g[s:], None, [0, T - s])
    part = run_op(chunk_linear_attn, part, dtype, device, False, keep=last, do=do[s:])
    name = f"T={T} H={H} K=V={D}: last {tail} tokens vs tail run"
    compare(name, full, part, "max-rel", 1e-6, checks)
    if device != "cpu":
        kernels = [
            chunk_local_cumsum_fwd_kernel_scalar,
            chunk_fwd.chunk_linear_attn_fwd_kernel_h,
            chunk_fwd.chunk_linear_attn_fwd_kernel_o,
            chunk_bwd.chunk_linear_attn_bwd_kernel_dh,
            chunk_bwd.chunk_linear_attn_bwd_kernel_dv,
            chunk_bwd_dqkg.chunk_linear_attn_bwd_kernel_dqkg,
        ]
        before = [compile_count(kn) for kn in kernels]
        run_op(
            chunk_linear_attn,
            make_inputs([777, 5], H, D, D, dtype, device),
            dtype,
            device,
            with_state=False,
        )
        after = [compile_count(kn) for kn in kernels]
        ok = before == after and None not in before
        print(
            f"  {'PASS' if ok else 'FAIL'}  no recompile for a new T: compiled variants {before} -> {after}"
        )
        checks.append(
            {"name": "no recompile for a new T", "before": before, "after": after, "pass": ok}
        )
    return checks


def load_fla():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as exc:  # not installed, or broken against this torch / triton
        print(f"  fla not usable: {type(exc).__name__}: {str(exc)[:200]}")
        return None
    import torch

    def fla_op(q, k, v, g, cu, scale, h0, output_final_state):
        cu_t = torch.tensor(cu, dtype=torch.long, device=q.device)
        o, ht = chunk_simple_gla(
            q[None], k[None], v[None], g=None if g is None else g[None], scale=scale,
            initial_state=h0, output_final_state=output_final_state, cu_seqlens=cu_t,
        )  # fmt: skip
        return o[0], ht

    return fla_op


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

    from kernels.linear_attn.chunk import chunk_linear_attn
    from kernels.linear_attn.torch_chunk import torch_chunk_linear_attn

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
    result = {"machine": machine, "torch": torch.__version__, "triton": triton.__version__,
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
