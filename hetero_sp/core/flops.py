"""Model FLOPs of a training step, and the peak FLOP/s they are compared with (MFU).

Counts are *model* FLOPs: the multiply-adds the model needs (2 FLOPs each), not what an
implementation may add (recomputation, padding, masked halves of blocks). Training costs three
forwards (forward, and backward = 2x forward).

Per token of a document of length s, with D model dim, H heads, G KV heads, E head dim,
F FFN dim, W vocabulary, C the linear-attention chunk:

- projections: S layer 2 D E (2H + 2G), L layer 2 D (4 H E + H); SwiGLU 6 D F; head 2 D W.
- softmax core (causal): query i sees i + 1 keys; QK^T and PV give 4 H E (i + 1), i.e.
  2 H E s (s + 1) for the document.
- linear-attention core (chunked form): the intra-chunk scores and values over on average
  (C + 1) / 2 earlier tokens, 2 H (E + E) (C + 1) / 2, plus the state update and read-out,
  4 H E E (value dim = key dim = E).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hetero_sp.config import ModelConfig

if TYPE_CHECKING:
    import torch

LINEAR_CHUNK = 64

# Dense peak FLOP/s by device-name fragment and precision (vendor datasheets, no sparsity).
_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp32": 91.6},
}


def block_flops_per_token(cfg: ModelConfig, kind: str) -> float:
    """Forward FLOPs per token of one block (``S``, ``L``) or of the output head (``head``) that
    do not depend on the document length."""
    D, H, G, E = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    if kind == "head":
        return 2.0 * D * cfg.vocab_size
    if kind == "S":
        return 6.0 * D * cfg.ffn_dim + 2.0 * D * E * (2 * H + 2 * G)
    if kind == "L":
        core = 2.0 * H * (2 * E) * (LINEAR_CHUNK + 1) / 2 + 4.0 * H * E * E
        return 6.0 * D * cfg.ffn_dim + 2.0 * D * (4 * H * E + H) + core
    raise ValueError(f"block kind must be S, L or head, got {kind!r}")


def softmax_flops_per_token_pair(cfg: ModelConfig) -> float:
    """Forward FLOPs of one S layer's attention core per (query, visible key) pair."""
    return 4.0 * cfg.num_heads * cfg.head_dim


def _per_token_linear_flops(cfg: ModelConfig) -> float:
    """Forward FLOPs per token that do not depend on the document length."""
    return block_flops_per_token(cfg, "head") + sum(
        block_flops_per_token(cfg, k) for k in cfg.layers
    )


def forward_flops(cfg: ModelConfig, doc_lengths: list[int]) -> float:
    """Forward model FLOPs of a batch of documents (each attends only to itself)."""
    num_softmax = cfg.layers.count("S")
    tokens = sum(doc_lengths)
    quadratic = sum(s * (s + 1) for s in doc_lengths)
    return (
        tokens * _per_token_linear_flops(cfg)
        + num_softmax * 2.0 * cfg.num_heads * cfg.head_dim * quadratic
    )


def training_flops(cfg: ModelConfig, doc_lengths: list[int]) -> float:
    """Forward + backward model FLOPs of a batch."""
    return 3.0 * forward_flops(cfg, doc_lengths)


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Datasheet dense peak of a known CUDA device for ``precision`` (bf16 or fp32), else None."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in _PEAK_TFLOPS.items():
        if fragment in name:
            return peaks["bf16" if precision == "bf16" else "fp32"] * 1e12
    return None


def configured_peak_flops(device: torch.device, precision: str, peak_tflops: float) -> float | None:
    """One rank's peak FLOP/s known without measuring: ``peak_tflops`` (``train.peak_tflops``)
    when positive, else :func:`device_peak_flops`; None when it has to be measured."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    return device_peak_flops(device, precision)


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype | None = None, n: int = 1024, repeats: int = 5
) -> float:
    """Achieved FLOP/s of an n x n x n matrix product: the practical peak where no datasheet value
    is known (CPUs). Takes well under a second on a CPU core at n = 1024."""
    import torch

    dtype = dtype if dtype is not None else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2.0 * n**3 * repeats / (time.perf_counter() - t0)
