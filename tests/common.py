"""Shared fixtures for tests: tiny models, random documents, strict comparisons."""

from __future__ import annotations

import torch

from hetero_sp.config import ModelConfig
from hetero_sp.model import HybridLM


def tiny_config(layers: str = "LS", **overrides) -> ModelConfig:
    fields = dict(vocab_size=64, dim=32, layers=layers, num_heads=4, num_kv_heads=2, ffn_dim=48)
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_model(layers: str = "LS", seed: int = 0, dtype=torch.float32, **overrides) -> HybridLM:
    torch.manual_seed(seed)
    return HybridLM(
        tiny_config(layers, **overrides), linear_backend="torch", softmax_backend="torch"
    ).to(dtype)


def random_docs(lengths: list[int], vocab: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Documents of ``L + 1`` random token ids for each training length L."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n + 1,), generator=gen) for n in lengths]


def assert_rel_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str = ""
) -> None:
    """max |a - e| <= rtol * max |e| (relative to the tensor's scale, so near-zero entries of a
    large tensor do not make the check meaningless or flaky)."""
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * max(scale, 1e-30), (
        f"{name}: max abs err {err:.3e} > {rtol:g} * scale {scale:.3e}"
    )
