"""The metadata a rank's packed token stream carries through the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetero_sp.ops.common.varlen import check_cu_seqlens, positions_in_segment
from hetero_sp.parallel.context import SPContext


@dataclass(frozen=True)
class PackedSeqs:
    """Rank-local documents of a packed stream ``[T]`` (flash-attn varlen convention).

    ``cu_seqlens`` delimits the rank-local segments; ``positions`` restart at 0 at every
    document start (a segment that continues a document from another rank starts at its true
    position). ``sp`` is None when the rank runs whole documents alone.
    """

    cu_seqlens: torch.Tensor
    """int32 [N + 1] on the model's device (what flash-attn takes)."""
    cu_seqlens_list: tuple[int, ...]
    """The same on the host, for loops and shape arithmetic."""
    max_seqlen: int
    positions: torch.Tensor
    """int64 [T]: position of each token inside its document."""
    sp: SPContext | None = None

    @property
    def num_tokens(self) -> int:
        return self.cu_seqlens_list[-1]

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device | str = "cpu") -> PackedSeqs:
        """Whole documents of the given lengths, back to back, on one rank."""
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + int(n))
        check_cu_seqlens(cu, cu[-1])
        return cls(
            cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
            cu_seqlens_list=tuple(cu),
            max_seqlen=max((b - a for a, b in zip(cu, cu[1:])), default=0),
            positions=positions_in_segment(cu, torch.device(device)),
        )

    @classmethod
    def for_rank(cls, sp: SPContext, device: torch.device | str = "cpu") -> PackedSeqs:
        """This rank's shard of its group's stream, as described by ``sp.layout``."""
        cu = sp.layout.local_cu_seqlens(sp.rank)
        return cls(
            cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
            cu_seqlens_list=tuple(cu),
            max_seqlen=max((b - a for a, b in zip(cu, cu[1:])), default=0),
            positions=sp.layout.local_positions(sp.rank, torch.device(device)),
            sp=sp,
        )
