"""Host-side helpers shared by the Triton ops: interpreter detection, output allocation (with an
optional NaN poison so kernel tests catch unwritten elements), dot precision and autotune configs.
"""

from __future__ import annotations

import os

import torch
import triton

POISON_ENV = "HETERO_SP_POISON_OUTPUTS"
"""Set to 1 to fill every kernel output with NaN before the launch (tests only: costs a pass)."""


def is_interpreter() -> bool:
    """True when Triton runs kernels in its CPU interpreter (read at kernel-decoration time too)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for a kernel output; NaN-filled when ``HETERO_SP_POISON_OUTPUTS=1``."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if os.environ.get(POISON_ENV) == "1":
        out.fill_(float("nan"))
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: exact fp32 products for fp32 inputs (the default is
    TF32 on GPU, ~1e-3 relative); for 16-bit inputs the value is not used by Triton."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_kernel_device(*tensors: torch.Tensor | None) -> None:
    """Raise ValueError unless the tensors can run the Triton kernels here."""
    present = [t for t in tensors if t is not None]
    devices = {t.device for t in present}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if present[0].device.type == "cuda":
        return
    if not is_interpreter():
        raise ValueError(
            "the Triton kernels need CUDA tensors; on CPU set TRITON_INTERPRET=1 before the "
            "kernels are imported (tests only) or use the torch backend"
        )
    if any(t.dtype != torch.float32 for t in present if t.is_floating_point()):
        raise ValueError(
            "under TRITON_INTERPRET=1 the Triton kernels take only fp32 tensors (16-bit tl.dot is wrong "
            "in the interpreter, and the kernels accumulate in fp32); cast to float32 or run on "
            "CUDA"
        )


def tile_size(dim: int, cap: int | None = None) -> int:
    """The tile that covers ``dim``: its next power of two, at least 16 (the smallest ``tl.dot``
    operand), at most ``cap``."""
    size = max(16, triton.next_power_of_2(dim))
    return size if cap is None else min(cap, size)


def head_dim_configs(
    blocks: list[dict[str, int]], warps: tuple[int, ...], stages: tuple[int, ...]
) -> list[triton.Config]:
    """Autotune candidates; a single small config under the interpreter, where tuning would
    only multiply run time (16-wide tiles also make tiny test heads span several tiles)."""
    if is_interpreter():
        return [triton.Config({name: 16 for name in blocks[0]}, num_warps=1, num_stages=1)]
    return [
        triton.Config(dict(b), num_warps=w, num_stages=s)
        for b in blocks
        for w in warps
        for s in stages
    ]


def prune_wide_tiles(configs, named_args, **kwargs):
    """Clamp every candidate's BK/BV tile to the head dim rounded up to a power of two (>= 16,
    the smallest ``tl.dot`` operand) and drop the duplicates that leaves: wider tiles only
    compute masked zeros. fp32 inputs (exact ieee dots, the checking path) keep only the first
    candidate: tuning them would compile a dozen register-heavy variants for no use.
    Used as ``early_config_prune``."""
    args = {**named_args, **kwargs}
    first = args.get("q", args.get("k"))
    if getattr(first, "dtype", None) == torch.float32:
        configs = configs[:1]
    caps = {
        name: tile_size(args[dim])
        for name, dim in (("BK", "K"), ("BV", "V"))
        if args.get(dim) is not None
    }
    kept, seen = [], set()
    for c in configs:
        blocks = {n: min(b, caps[n]) if n in caps else b for n, b in c.kwargs.items()}
        key = (tuple(sorted(blocks.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            kept.append(triton.Config(blocks, num_warps=c.num_warps, num_stages=c.num_stages))
    return kept
