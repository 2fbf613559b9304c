"""Helpers for packed variable-length streams in the flash-attn ``cu_seqlens`` convention.

A packed stream holds N documents back to back; ``cu_seqlens`` is ``[0, len_0, len_0 + len_1,
..., T]`` (N + 1 entries). Document i owns tokens ``cu_seqlens[i]:cu_seqlens[i + 1]``.
"""

from __future__ import annotations

import torch


def as_list(cu_seqlens: torch.Tensor | list[int] | tuple[int, ...]) -> list[int]:
    if isinstance(cu_seqlens, torch.Tensor):
        return [int(x) for x in cu_seqlens.tolist()]
    return [int(x) for x in cu_seqlens]


def check_cu_seqlens(cu_seqlens: list[int], num_tokens: int) -> None:
    """Raise ValueError unless ``cu_seqlens`` is a valid non-decreasing cover of the stream."""
    if len(cu_seqlens) < 2 or cu_seqlens[0] != 0 or cu_seqlens[-1] != num_tokens:
        raise ValueError(
            f"cu_seqlens must start at 0 and end at the token count {num_tokens}, "
            f"got {cu_seqlens[:4]}...{cu_seqlens[-2:]}"
        )
    if any(b < a for a, b in zip(cu_seqlens, cu_seqlens[1:])):
        raise ValueError("cu_seqlens must be non-decreasing (document lengths >= 0)")


def segment_ids(cu_seqlens: list[int], device: torch.device | None = None) -> torch.Tensor:
    """Document index of every token, shape [T] (int64)."""
    lengths = torch.tensor([b - a for a, b in zip(cu_seqlens, cu_seqlens[1:])], device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)


def positions_in_segment(cu_seqlens: list[int], device: torch.device | None = None) -> torch.Tensor:
    """Position of every token inside its document, shape [T] (int64), restarting at 0."""
    ids = segment_ids(cu_seqlens, device)
    starts = torch.tensor(cu_seqlens[:-1], device=device)
    return torch.arange(cu_seqlens[-1], device=device) - starts[ids]
