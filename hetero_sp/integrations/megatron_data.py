"""Dataset-decomposition batches cut into the micro-batches of Megatron's pretraining loop.

A HeteroSP sampler gives one :class:`~hetero_sp.data.batch.GlobalBatch` per step: any number of
sequences of any lengths. Megatron's loop takes ``num_microbatches`` micro-batches per step on
each of its ``dp_size`` data-parallel ranks. Step s's sequences are spread over the
``dp_size * num_microbatches`` micro-batches balancing tokens (``balance_over_ranks``, the same
assignment on every rank); micro-batch m of data-parallel rank d is bin ``m * dp_size + d``.

A micro-batch is one packed THD stream: its sequences back to back, each padded at its end to a
multiple of 2 CP (Megatron's context-parallel sharding cuts every document into 2 CP chunks;
at CP 1 nothing is padded). Keys (numbers of tokens: T = the padded stream, N sequences):

==================  ============  ==================================================
key                 shape, dtype  meaning
==================  ============  ==================================================
tokens              [1, T] int64  inputs; padding is ``pad_id``
labels              [1, T] int64  next token of each input; ``pad_id`` on padding
loss_mask           [1, T] fp32   1 on the sequences' tokens, 0 on padding
position_ids        [1, T] int64  position inside the sequence (padding continues it)
cu_seqlens          [N+1] int32   cumulative real lengths (``PackedSeqParams.cu_seqlens_q``)
cu_seqlens_padded   [N+1] int32   offsets of the padded sequences in the stream
max_seqlen          int           longest padded sequence
==================  ============  ==================================================

Each CP rank of a data-parallel rank reads the same micro-batch and keeps its shard
(``megatron.get_batch``). Nothing here imports megatron.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hetero_sp.core.errors import UserError
from hetero_sp.data.batch import balance_over_ranks
from hetero_sp.data.samplers import EpochSampler
from hetero_sp.integrations.megatron_layout import padded_length


def pack_micro_batch(
    sequences: Sequence[np.ndarray], cp_size: int, pad_id: int = 0
) -> dict[str, torch.Tensor | int]:
    """Pack sequences of L + 1 token ids each into one THD micro-batch (see the module doc)."""
    if not sequences:
        raise ValueError("a micro-batch needs at least one sequence, got none")
    tokens, labels, mask, positions = [], [], [], []
    cu, cu_padded = [0], [0]
    for ids in sequences:
        ids_L = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        n = ids_L.numel() - 1
        if n < 1:
            raise ValueError("every sequence needs at least 2 token ids (1 training token)")
        pad = padded_length(n, cp_size) - n
        fill = torch.full((pad,), pad_id, dtype=torch.long)
        tokens += [ids_L[:-1], fill]
        labels += [ids_L[1:], fill]
        mask += [torch.ones(n), torch.zeros(pad)]
        positions.append(torch.arange(n + pad))
        cu.append(cu[-1] + n)
        cu_padded.append(cu_padded[-1] + n + pad)
    lengths = [b - a for a, b in zip(cu_padded, cu_padded[1:])]
    return {
        "tokens": torch.cat(tokens)[None],
        "labels": torch.cat(labels)[None],
        "loss_mask": torch.cat(mask)[None],
        "position_ids": torch.cat(positions)[None],
        "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
        "cu_seqlens_padded": torch.tensor(cu_padded, dtype=torch.int32),
        "max_seqlen": max(lengths),
    }


class DecomposedBatches:
    """This data-parallel rank's micro-batches, step after step, from a HeteroSP sampler.

    Iterating yields micro-batch 0, 1, ..., ``num_microbatches - 1`` of the current step, then
    the next step's, without end (Megatron stops after ``--train-iters``). ``state_dict()``
    holds the cursor; every rank computes the same assignment from (seed, step) alone.
    """

    def __init__(
        self,
        sampler: EpochSampler,
        *,
        dp_rank: int,
        dp_size: int,
        num_microbatches: int,
        cp_size: int,
        start_step: int = 0,
        pad_id: int = 0,
    ) -> None:
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise UserError(f"data-parallel rank {dp_rank} is outside a world of {dp_size}")
        if num_microbatches < 1:
            raise UserError(f"num_microbatches must be >= 1, got {num_microbatches}")
        if start_step < 0:
            raise UserError(f"start_step must be >= 0, got {start_step}")
        self.sampler, self.pad_id = sampler, pad_id
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.num_microbatches, self.cp_size = num_microbatches, cp_size
        self.step, self.micro = start_step, 0
        """The micro-batch ``next()`` returns next."""

    def bins(self, step: int) -> list[list[int]]:
        """Sequence indices of every micro-batch of ``step`` over all data-parallel ranks;
        micro-batch m of rank d is ``bins[m * dp_size + d]``."""
        lengths = self.sampler.batch(step).lengths
        return balance_over_ranks(lengths, self.dp_size * self.num_microbatches)

    def micro_batch(self, step: int, micro: int) -> dict[str, torch.Tensor | int]:
        """Micro-batch ``micro`` of ``step`` for this data-parallel rank."""
        if not 0 <= micro < self.num_microbatches:
            raise ValueError(f"micro-batch {micro} is outside 0..{self.num_microbatches - 1}")
        batch = self.sampler.batch(step)
        indices = self.bins(step)[micro * self.dp_size + self.dp_rank]
        return pack_micro_batch(batch.materialize(indices), self.cp_size, self.pad_id)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | int]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor | int]:
        out = self.micro_batch(self.step, self.micro)
        self.micro += 1
        if self.micro == self.num_microbatches:
            self.step, self.micro = self.step + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "micro": self.micro}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not 0 <= state["micro"] < self.num_microbatches or state["step"] < 0:
            raise UserError(f"cursor {state} does not fit {self.num_microbatches} micro-batches")
        self.step, self.micro = state["step"], state["micro"]
