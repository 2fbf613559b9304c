"""Correctness checks of ``gpu_kernels.py``: the Triton kernels against the naive reference and
the torch path, long-offset and recompilation checks, each printed as PASS/FAIL.

Shape legend: T tokens, H heads, K / V head dims, N documents.
"""

from __future__ import annotations

import math

CHUNK = 64


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

    from hetero_sp.ops.common.cumsum import chunk_local_cumsum_fwd_kernel_scalar
    from hetero_sp.ops.linear_attn import chunk_bwd, chunk_bwd_dqkg, chunk_fwd
    from hetero_sp.ops.linear_attn.chunk import chunk_linear_attn
    from hetero_sp.ops.linear_attn.naive import naive_linear_attn
    from hetero_sp.ops.linear_attn.torch_chunk import torch_chunk_linear_attn

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
    run_merge_checks(device, dry_run, checks)
    return checks


def run_merge_checks(device, dry_run: bool, checks: list[dict]) -> None:
    """The SP merge kernels (decayed scan over pieces, correction from an incoming state) in
    fp32 against their torch reference on the same device."""
    import torch
    import torch.nn.functional as F

    from hetero_sp.ops.linear_attn_sp import (
        MAX_TRITON_HEAD_K,
        correction_bwd,
        correction_fwd,
        state_scan,
    )

    gen = torch.Generator(device="cpu").manual_seed(7)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    heads, num, length = (2, 5, 70) if dry_run else (8, 16, 5000)
    for dk, dv in ((32, 16),) if dry_run else ((128, 128), (MAX_TRITON_HEAD_K, 64)):
        u, b = rnd(num, heads, dk, dv), torch.rand(num, heads, generator=gen).to(device)
        for reverse in (False, True):
            got, ref = (
                {"x": state_scan(u, b, reverse, backend=be).double().cpu()}
                for be in ("triton", "torch")
            )
            compare(
                f"state_scan K={dk} V={dv} reverse={reverse}", got, ref, "max-rel", 1e-5, checks
            )
        q, state, do = rnd(length, heads, dk), rnd(heads, dk, dv), rnd(length, heads, dv)
        gc = F.logsigmoid(rnd(length, heads) + 4).cumsum(0)
        for g in (gc, None):
            got, ref = (
                {
                    "o": correction_fwd(q, g, state, 0.3, backend=be),
                    **dict(
                        zip(("dq", "dgc", "dS"), correction_bwd(q, g, state, do, 0.3, backend=be))
                    ),
                }
                for be in ("triton", "torch")
            )
            got, ref = (
                {k: t.double().cpu() for k, t in d.items() if t is not None} for d in (got, ref)
            )
            name = f"correction L={length} K={dk} V={dv} decay={g is not None}"
            compare(name, got, ref, "max-rel", 1e-4, checks)


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
