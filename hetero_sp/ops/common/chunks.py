"""Chunk layout of a packed variable-length stream for the chunked Triton kernels.

Shape legend: T tokens, N documents, M chunks. Every document is cut into chunks of at most
``chunk_size`` tokens; a chunk never crosses a document boundary, and empty documents own no
chunk. Chunks are numbered document by document, so document n owns the global chunks
``chunk_offsets[n]:chunk_offsets[n + 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetero_sp.ops.common.varlen import as_list, check_cu_seqlens

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class ChunkIndex:
    """Built once per op call on the host; the kernels read the device tensors."""

    cu_seqlens: torch.Tensor
    """int32 [N + 1] on the device."""
    chunk_indices: torch.Tensor
    """int32 [M, 2] on the device: (document, chunk number inside the document)."""
    chunk_offsets: torch.Tensor
    """int32 [N + 1] on the device: first global chunk of each document."""
    cu_seqlens_list: tuple[int, ...]
    chunk_size: int

    @property
    def num_docs(self) -> int:
        return len(self.cu_seqlens_list) - 1

    @property
    def num_tokens(self) -> int:
        return self.cu_seqlens_list[-1]

    @property
    def num_chunks(self) -> int:
        return self.chunk_indices.shape[0]


def prepare_chunk_index(
    cu_seqlens: torch.Tensor | list[int], num_tokens: int, chunk_size: int, device: torch.device
) -> ChunkIndex:
    """Validate ``cu_seqlens`` against the stream length and lay out its chunks."""
    cu = as_list(cu_seqlens)
    check_cu_seqlens(cu, num_tokens)
    if num_tokens > _INT32_MAX:
        raise ValueError(
            f"at most {_INT32_MAX} tokens per call (int32 cu_seqlens), got {num_tokens}"
        )
    cu_N1 = torch.tensor(cu, dtype=torch.int64)
    chunks_N = (cu_N1[1:] - cu_N1[:-1] + chunk_size - 1) // chunk_size
    offsets_N1 = torch.cat([chunks_N.new_zeros(1), chunks_N.cumsum(0)])
    num_chunks = int(offsets_N1[-1])
    doc_M = torch.repeat_interleave(torch.arange(len(cu) - 1), chunks_N)
    within_M = torch.arange(num_chunks) - offsets_N1[doc_M]
    indices_M2 = torch.stack([doc_M, within_M], dim=1)
    return ChunkIndex(
        cu_seqlens=cu_N1.to(device=device, dtype=torch.int32),
        chunk_indices=indices_M2.to(device=device, dtype=torch.int32).contiguous(),
        chunk_offsets=offsets_N1.to(device=device, dtype=torch.int32),
        cu_seqlens_list=tuple(cu),
        chunk_size=chunk_size,
    )
