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

import torch

from hetero_sp.config import ModelConfig

LINEAR_CHUNK = 64

# Dense peak FLOP/s by device-name fragment and precision (vendor datasheets, no sparsity).
_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp32": 91.6},
}


def _per_token_linear_flops(cfg: ModelConfig) -> float:
    """Forward FLOPs per token that do not depend on the document length."""
    D, H, G, E, F, W = (
        cfg.dim,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.ffn_dim,
        cfg.vocab_size,
    )
    flops = 2.0 * D * W
    for kind in cfg.layers:
        flops += 6.0 * D * F
        if kind == "S":
            flops += 2.0 * D * E * (2 * H + 2 * G)
        else:
            flops += 2.0 * D * (4 * H * E + H)
            flops += 2.0 * H * (2 * E) * (LINEAR_CHUNK + 1) / 2 + 4.0 * H * E * E
    return flops


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
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in _PEAK_TFLOPS.items():
        if fragment in name:
            return peaks["bf16" if precision == "bf16" else "fp32"] * 1e12
    return None


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5
) -> float:
    """Achieved FLOP/s of an n x n x n matrix product: the practical peak where no datasheet value
    is known (CPUs). Takes well under a second on a CPU core at n = 1024."""
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
