"""Measure a profile: time the real model blocks on one rank, and the collectives over every
aligned group size when several ranks run, then fit the cost coefficients by least squares.

Compute: one ``Block`` of each layer kind of ``hetero_sp.model.HybridLM`` (and the embedding,
final norm, output head and loss), forward + backward over a single document of ``s`` tokens,
fitted as ``a2 s^2 + a1 s + fixed`` (``a2`` only for softmax blocks). Collectives, over the
ranks ``[0, d)`` for each group size d: all-to-all and all-gather (per-rank bytes sent, the
convention of ``hetero_sp.core.traffic``), and a point-to-point message between ranks 0 and
d - 1 (half a round trip), fitted as ``latency + bytes / bandwidth``. Coefficients are kept
non-negative (a term whose best fit is negative is dropped). Each fit reports its largest
relative error over the samples.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from hetero_sp.config import ModelConfig
from hetero_sp.planner.cluster import Link, is_power_of_two
from hetero_sp.planner.profile import ComputeFit, Profile

# torch >= 2.10 renamed all_gather_into_tensor (the old name warns); older torch has only that.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def nonneg_lstsq(columns: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: drop the most negative term and refit."""
    active = list(range(columns.shape[1]))
    while True:
        coef = np.zeros(columns.shape[1])
        if active:
            sol, *_ = np.linalg.lstsq(columns[:, active], y, rcond=None)
            coef[active] = sol
        if not active or coef.min() >= 0:
            return coef
        active.remove(int(np.argmin(coef)))


def _max_rel_err(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.max(np.abs(pred - y) / np.maximum(np.abs(y), 1e-30)))


def fit_compute(samples: Sequence[tuple[int, float]], quadratic: bool) -> ComputeFit:
    """Fit ``a2 s^2 + a1 s + fixed`` (``a2 = 0`` unless ``quadratic``) to (tokens, seconds)."""
    if len(samples) < (3 if quadratic else 2):
        raise ValueError(
            f"need at least {3 if quadratic else 2} lengths to fit, got {len(samples)}"
        )
    s = np.array([x for x, _ in samples], dtype=float)
    y = np.array([t for _, t in samples], dtype=float)
    columns = np.stack([s * s if quadratic else np.zeros_like(s), s, np.ones_like(s)], axis=1)
    # Relative residuals matter (short and long samples alike): weight rows by 1 / time.
    w = 1.0 / np.maximum(y, 1e-30)
    a2, a1, fixed = nonneg_lstsq(columns * w[:, None], y * w)
    pred = columns @ np.array([a2, a1, fixed])
    return ComputeFit(
        a2=float(a2),
        a1=float(a1),
        fixed=float(fixed),
        max_rel_err=_max_rel_err(pred, y),
        samples=tuple((int(a), float(b)) for a, b in samples),
    )


def fit_link(samples: Sequence[tuple[float, float]]) -> tuple[Link, float]:
    """Fit ``latency + bytes / bandwidth`` to (bytes, seconds); returns the link and its error."""
    if len(samples) < 2:
        raise ValueError(f"need at least 2 message sizes to fit a link, got {len(samples)}")
    b = np.array([x for x, _ in samples], dtype=float)
    y = np.array([t for _, t in samples], dtype=float)
    w = 1.0 / np.maximum(y, 1e-30)
    latency, per_byte = nonneg_lstsq(np.stack([np.ones_like(b), b], axis=1) * w[:, None], y * w)
    per_byte = max(per_byte, 1e-15)  # flat timings: bandwidth beyond what was measurable
    pred = latency + per_byte * b
    return Link(latency_s=float(latency), bandwidth_Bps=float(1.0 / per_byte)), _max_rel_err(
        pred, y
    )


MAX_FIT_ERR = 0.25
"""A fit whose largest relative error over its samples is above this prices plans that far off
the measurements: :func:`fit_warnings` says so."""

MAX_PLAUSIBLE_BANDWIDTH_BPS = 1e13
"""10 TB/s per rank, beyond any interconnect (NVLink 5 moves 1.8 TB/s per GPU): a fitted
bandwidth above it means the timings did not grow with the message size."""


def fit_warnings(profile: Profile) -> list[str]:
    """What is wrong with the profile's fits, a sentence each, then what to do about it."""
    problems, hints = [], ["more --repeats"]
    for kind, fit in profile.compute.items():
        if fit.a2 == 0 and fit.a1 == 0:
            problems.append(
                f"compute {kind}: the fitted time does not grow with the length (a fixed "
                f"{fit.fixed:.3e} s only)"
            )
            hints.append("longer --lengths")
        if fit.max_rel_err > MAX_FIT_ERR:
            problems.append(
                f"compute {kind}: the fit misses a measured time by {fit.max_rel_err:.0%} "
                f"(more than {MAX_FIT_ERR:.0%})"
            )
    for kind, by_size in profile.collectives.items():
        for d, link in sorted(by_size.items()):
            if link.bandwidth_Bps > MAX_PLAUSIBLE_BANDWIDTH_BPS:
                problems.append(
                    f"{kind} d={d}: a fitted bandwidth of {link.bandwidth_Bps / 1e9:.3g} GB/s is "
                    f"not plausible (more than {MAX_PLAUSIBLE_BANDWIDTH_BPS / 1e9:.0f} GB/s): "
                    "the timings did not grow with the message size"
                )
                hints.append("larger --message-bytes")
            err = profile.collective_fit_err.get(kind, {}).get(d, 0.0)
            if err > MAX_FIT_ERR:
                problems.append(
                    f"{kind} d={d}: the fit misses a measured time by {err:.0%} (more than "
                    f"{MAX_FIT_ERR:.0%})"
                )
    if not problems:
        return []
    hints = list(dict.fromkeys(hints))
    return problems + [
        "plans priced with these fits inherit their errors: re-run `hetero-sp profile` with "
        f"{' and '.join(hints)}, on a machine nothing else is using"
    ]


def _median_time(
    fn: Callable[[], None], repeats: int, warmup: int, sync: Callable[[], None]
) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_compute(
    cfg: ModelConfig,
    lengths: Sequence[int],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, list[tuple[int, float]]]:
    """(tokens, seconds) of forward + backward of one block per layer kind, and of the head."""
    from hetero_sp.model import HybridLM, PackedSeqs
    from hetero_sp.model.layers import rope_cos_sin
    from hetero_sp.model.loss import token_loss_sum

    device = torch.device(device)
    model = HybridLM(cfg, linear_backend="auto", softmax_backend="auto").to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out: dict[str, list[tuple[int, float]]] = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for s in lengths:
        seqs = PackedSeqs.from_lengths([s], device=device)
        rope = rope_cos_sin(seqs.positions, cfg.head_dim, cfg.rope_theta, dtype)
        x = torch.randn(s, cfg.dim, generator=gen).to(device, dtype).requires_grad_(True)
        grad = torch.randn(s, cfg.dim, generator=gen).to(device, dtype)
        for kind in sorted(set(cfg.layers)):
            block = model.blocks[cfg.layers.index(kind)]

            def step(block=block, seqs=seqs, rope=rope, x=x, grad=grad):
                block(x, seqs, rope).backward(grad)

            out.setdefault(kind, []).append((s, _median_time(step, repeats, warmup, sync)))
        tokens = torch.randint(0, cfg.vocab_size, (s,), generator=gen).to(device)
        labels = torch.randint(0, cfg.vocab_size, (s,), generator=gen).to(device)

        def head(tokens=tokens, labels=labels):
            h = model.embed(tokens)
            token_loss_sum(model.head(model.norm(h)), labels).backward()

        out.setdefault("head", []).append((s, _median_time(head, repeats, warmup, sync)))
    return out


def group_sizes(world_size: int) -> list[int]:
    """Aligned group sizes over more than one rank: 2, 4, ... and the world when not a power of 2."""
    sizes, d = [], 2
    while d <= world_size:
        sizes.append(d)
        d *= 2
    if world_size > 1 and not is_power_of_two(world_size):
        sizes.append(world_size)
    return sizes


def time_collectives(
    rank: int,
    world_size: int,
    message_bytes: Sequence[int],
    *,
    repeats: int = 5,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """Per collective kind and group size, (bytes one rank sends, seconds) as seen by rank 0.

    Every rank of the default process group must call this with the same arguments; groups
    are created here, in the same order everywhere (``new_group`` is collective)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sizes = group_sizes(world_size)
    groups = {d: dist.new_group(list(range(d))) for d in sizes}
    out: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for d in sizes:
        group = groups[d]
        inside = rank < d
        for nbytes in message_bytes:
            numel = max(d, nbytes // 4 // d * d)  # fp32 elements, divisible by d
            if inside:
                send = torch.ones(numel, device=device)
                recv = torch.empty(numel, device=device)
                gathered = torch.empty(numel * d, device=device)

                def a2a(send=send, recv=recv, group=group):
                    dist.all_to_all_single(recv, send, group=group)

                def gather(send=send, gathered=gathered, group=group):
                    _all_gather(gathered, send, group=group)

                def ping(send=send, recv=recv, d=d):
                    if rank == 0:
                        dist.send(send, dst=d - 1)
                        dist.recv(recv, src=d - 1)
                    elif rank == d - 1:
                        dist.recv(recv, src=0)
                        dist.send(send, dst=0)

                for kind, fn, moved in (
                    ("all_to_all", a2a, numel * 4 * (d - 1) / d),
                    ("all_gather", gather, numel * 4 * (d - 1)),
                    ("send_recv", ping, numel * 4),
                ):
                    dist.barrier(group=group)
                    seconds = _median_time(fn, repeats, warmup, sync)
                    if kind == "send_recv":
                        seconds /= 2  # one way of a round trip
                    out.setdefault(kind, {}).setdefault(d, []).append((moved, seconds))
        dist.barrier()
    return out
