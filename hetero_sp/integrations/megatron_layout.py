"""Megatron-core's context-parallel sharding, described as a HeteroSP group layout.

Megatron splits a sequence over its context-parallel (CP) group head-tail: the sequence is cut
into 2 CP equal chunks and CP rank r holds chunks r and 2 CP - 1 - r, in that order
(``megatron.core.utils.get_batch_on_this_cp_rank`` for ``[b, s]`` batches). Packed THD batches
are split the same way document by document (Transformer Engine's
``thd_get_partitioned_indices``): every document is padded to a multiple of 2 CP
(``PackedSeqParams.cu_seqlens_q_padded``) and a rank holds its two chunks of each document,
documents in stream order. A ``[b, s]`` batch is the stream of its b rows, each a document of
length s (rows never attend to each other).

For one document this is exactly ``make_layout(..., "zigzag")``; for several it is the layout
of kind ``zigzag_docs`` built here, with 2 pieces per document on every rank. A rank's pieces
are in stream order, which is all the SP strategies need of a layout. A document's padding sits
at its end, so real tokens never attend to it and their outputs are exact; padding tokens carry
no loss.

Everything here is host arithmetic that every rank computes identically; no megatron import.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.distributed as dist

from hetero_sp.core.errors import UserError
from hetero_sp.parallel import GroupLayout, SPContext, make_layout
from hetero_sp.parallel.packed import PackedSeqs

ZIGZAG_DOCS = "zigzag_docs"
"""Layout kind of several documents each split head-tail over the ranks (Megatron's THD CP)."""


def padded_length(num_tokens: int, cp_size: int) -> int:
    """Length Megatron's CP sharding needs for a document: a multiple of 2 CP (unchanged at CP 1)."""
    if cp_size < 1:
        raise ValueError(f"context-parallel size must be >= 1, got {cp_size}")
    if cp_size == 1:
        return num_tokens
    return -(-num_tokens // (2 * cp_size)) * 2 * cp_size


@functools.lru_cache(maxsize=256)
def _cp_layout(doc_lengths: tuple[int, ...], cp_size: int) -> GroupLayout:
    if cp_size == 1 or len(doc_lengths) == 1:
        return make_layout(doc_lengths, cp_size, "zigzag")
    chunks = 2 * cp_size
    cu = [0]
    for n in doc_lengths:
        cu.append(cu[-1] + n)
    pieces = []
    for r in range(cp_size):
        mine = []
        for start, n in zip(cu, doc_lengths):
            c = n // chunks
            mine.append((start + r * c, start + (r + 1) * c))
            mine.append((start + (chunks - 1 - r) * c, start + (chunks - r) * c))
        pieces.append(tuple(mine))
    return GroupLayout(
        size=cp_size, kind=ZIGZAG_DOCS, cu_seqlens=tuple(cu), num_pad=0, pieces=tuple(pieces)
    )


def cp_layout(doc_lengths: Sequence[int], cp_size: int) -> GroupLayout:
    """The layout of documents ``doc_lengths`` (stream order, padding included) sharded over a
    CP group of ``cp_size`` ranks the way Megatron shards them."""
    lengths = tuple(int(n) for n in doc_lengths)
    if not lengths:
        raise ValueError("a batch needs at least one document, got none")
    if cp_size < 1:
        raise ValueError(f"context-parallel size must be >= 1, got {cp_size}")
    if cp_size > 1:
        bad = [i for i, n in enumerate(lengths) if n <= 0 or n % (2 * cp_size)]
        if bad:
            raise UserError(
                f"document {bad[0]} has length {lengths[bad[0]]}; with context-parallel size "
                f"{cp_size} every document must be padded to a positive multiple of "
                f"{2 * cp_size} (PackedSeqParams.cu_seqlens_q_padded; the HeteroSP data "
                "provider pads this way)"
            )
    elif any(n <= 0 for n in lengths):
        raise UserError(f"document lengths must be >= 1, got {lengths}")
    return _cp_layout(lengths, cp_size)


def cp_shard_index(doc_lengths: Sequence[int], cp_size: int, cp_rank: int) -> torch.Tensor:
    """Stream index of every token CP rank ``cp_rank`` holds, in its local order, shape [T]."""
    return cp_layout(doc_lengths, cp_size).local_index(cp_rank)


@functools.lru_cache(maxsize=64)
def _seqs(
    lengths: tuple[int, ...],
    group: dist.ProcessGroup | None,
    cp_size: int,
    cp_rank: int,
    softmax_strategy: str,
    linear_strategy: str,
    device: torch.device,
) -> PackedSeqs:
    if cp_size == 1:
        return PackedSeqs.from_lengths(list(lengths), device)
    sp = SPContext(
        group,
        cp_rank,
        cp_size,
        cp_layout(lengths, cp_size),
        softmax_strategy=softmax_strategy,
        linear_strategy=linear_strategy,
    )
    return PackedSeqs.for_rank(sp, device)


def cp_packed_seqs(
    doc_lengths: Sequence[int],
    group: dist.ProcessGroup | None,
    *,
    softmax_strategy: str = "ulysses",
    linear_strategy: str = "lasp2",
    device: torch.device | str = "cpu",
) -> PackedSeqs:
    """This rank's ``PackedSeqs`` for documents ``doc_lengths`` sharded over the CP ``group``
    (None or a group of one rank: whole documents, no SP context). Cached: every layer of a
    step asks for the same one."""
    cp_size = 1 if group is None else dist.get_world_size(group)
    cp_rank = 0 if group is None else dist.get_rank(group)
    lengths = tuple(int(n) for n in doc_lengths)
    if cp_size > 1:
        cp_layout(lengths, cp_size)  # validates
    return _seqs(
        lengths,
        group if cp_size > 1 else None,
        cp_size,
        cp_rank,
        softmax_strategy,
        linear_strategy,
        torch.device(device),
    )
