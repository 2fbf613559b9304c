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
(``megatron.get_batch``).

For Megatron's hybrid context parallelism, :class:`HybridCPSamples` gives the step's sequences
as the packed samples ``HybridCPDataLoaderWrapper`` reads (:func:`pack_sub_samples`); the
wrapper schedules and routes them. Nothing here imports megatron.
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


TOKEN_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
"""The per-token tensors of a micro-batch or sub-sample (the rest describe its documents)."""


def pack_sub_samples(
    sequences: Sequence[np.ndarray], multiple: int, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """One packed sample for Megatron's ``HybridCPDataLoaderWrapper``: sequences of L + 1 token
    ids back to back, each padded at its end to a multiple of ``multiple``. Tensors ``tokens``,
    ``labels``, ``loss_mask``, ``position_ids`` of shape [T] (the keys of :func:`pack_micro_batch`,
    without the batch dimension, as the wrapper cuts them) and ``cu_seqlens`` [N+1] int32, the
    offsets of the padded sequences, where the wrapper cuts its sub-samples."""
    packed = pack_micro_batch(sequences, 1, pad_id)
    cu = packed["cu_seqlens"].tolist()
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in TOKEN_KEYS}
    offsets = [0]
    for a, b in zip(cu, cu[1:]):
        pad = -(b - a) % multiple
        for key in TOKEN_KEYS:
            piece = packed[key][0, a:b]
            if key == "position_ids":
                fill = torch.arange(b - a, b - a + pad)
            else:
                fill = torch.full((pad,), 0 if key == "loss_mask" else pad_id, dtype=piece.dtype)
            parts[key] += [piece, fill]
        offsets.append(offsets[-1] + b - a + pad)
    out = {key: torch.cat(parts[key]) for key in TOKEN_KEYS}
    out["cu_seqlens"] = torch.tensor(offsets, dtype=torch.int32)
    return out


class HybridCPSamples:
    """Dataset-decomposition steps for Megatron's hybrid context parallelism.

    Step s's sequences are spread over ``bins_per_step`` packed samples balancing tokens
    (``balance_over_ranks``); sample ``s * bins_per_step + b`` is bin b (:func:`pack_sub_samples`,
    every sequence padded to a multiple of 2 x ``dp_cp_size``, what a sub-sample needs to be
    split over any group of the DP x CP ranks). ``HybridCPDataLoaderWrapper`` gathers every data-
    parallel rank's samples of the step and schedules all their sequences together.

    Two ways in. As a map-style dataset (``len``, ``[index]``) for Megatron-LM's
    ``--dataloader-type single``, whose ``HybridCPMegatronPretrainingSampler`` gives data-
    parallel rank d the items ``s * G + m * dp + d`` of step s (micro-batch size 1, G the
    global batch size = ``bins_per_step``). As an iterator: ``next()`` is the list of this
    data-parallel rank's samples of the next step, the same items; ``state_dict()`` holds the
    step.
    """

    def __init__(
        self,
        sampler: EpochSampler,
        *,
        bins_per_step: int,
        dp_cp_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        num_steps: int = 1 << 30,
        start_step: int = 0,
        pad_id: int = 0,
    ) -> None:
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise UserError(f"data-parallel rank {dp_rank} is outside a world of {dp_size}")
        if bins_per_step < dp_size or bins_per_step % dp_size:
            raise UserError(
                f"bins_per_step={bins_per_step} must be a positive multiple of the {dp_size} "
                "data-parallel ranks (Megatron-LM: --global-batch-size with micro-batch size 1)"
            )
        if dp_cp_size < 1 or num_steps < 1 or start_step < 0:
            raise UserError("dp_cp_size and num_steps must be >= 1, start_step >= 0")
        self.sampler, self.pad_id = sampler, pad_id
        self.bins_per_step, self.dp_cp_size = bins_per_step, dp_cp_size
        self.dp_rank, self.dp_size, self.num_steps = dp_rank, dp_size, num_steps
        self.step = start_step
        """The step ``next()`` returns next."""

    def bins(self, step: int) -> list[list[int]]:
        """Sequence indices of every sample of ``step``."""
        return balance_over_ranks(self.sampler.batch(step).lengths, self.bins_per_step)

    def __len__(self) -> int:
        return self.num_steps * self.bins_per_step

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        step, b = divmod(int(index), self.bins_per_step)
        sequences = self.sampler.batch(step).materialize(self.bins(step)[b])
        return pack_sub_samples(sequences, 2 * self.dp_cp_size, self.pad_id)

    def step_samples(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This data-parallel rank's samples of ``step``."""
        first = step * self.bins_per_step + self.dp_rank
        return [self[first + m * self.dp_size] for m in range(self.bins_per_step // self.dp_size)]

    def __iter__(self) -> Iterator[list[dict[str, torch.Tensor]]]:
        return self

    def __next__(self) -> list[dict[str, torch.Tensor]]:
        out = self.step_samples(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["step"] < 0:
            raise UserError(f"cursor {state} has a negative step")
        self.step = state["step"]


def pack_group_streams(
    samples: dict[int, dict[str, torch.Tensor]], sample_id_groups: list, rank: int
) -> tuple[dict[int, dict], list]:
    """One packed micro-batch per group and phase instead of one sub-sample per sequence.

    ``samples`` (sample id -> [n] tensors) and ``sample_id_groups[j][r]`` are what
    ``HybridCPDataLoaderWrapper`` returns on DP x CP rank ``rank``. Where every rank of a phase
    runs one group's list (HeteroSP's schedules do), the group's sequences become one THD
    micro-batch (:func:`pack_micro_batch`'s keys: [1, T] tensors, ``cu_seqlens`` =
    ``cu_seqlens_padded`` the offsets of the padded sequences, ``max_seqlen``) under the id of
    its first sequence, and every rank's list of the phase becomes that id: Megatron's schedule
    then runs a group's sequences in one forward and backward, as the plan priced them."""
    streams: dict[int, dict] = {}
    phases = []
    for j, phase in enumerate(sample_id_groups):
        owners: dict[int, list[int]] = {}
        for ids in phase:
            if ids:
                first = owners.setdefault(int(ids[0]), list(map(int, ids)))
                if first != list(map(int, ids)):
                    raise ValueError(
                        f"phase {j}: ranks share sequence {ids[0]} but not their lists; only "
                        "schedules with one group per rank and phase can be packed"
                    )
        if sum(len(ids) for ids in owners.values()) != len({int(i) for ids in phase for i in ids}):
            raise ValueError(f"phase {j}: a sequence is in the lists of two groups")
        phases.append([[int(ids[0])] if ids else [] for ids in phase])
        mine = [int(i) for i in phase[rank]]
        if not mine:
            continue
        parts = [samples[i] for i in mine]
        lengths = [p["tokens"].numel() for p in parts]
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
        stream = {key: torch.cat([p[key].reshape(-1) for p in parts])[None] for key in TOKEN_KEYS}
        stream.update(
            cu_seqlens=offsets, cu_seqlens_padded=offsets.clone(), max_seqlen=max(lengths)
        )
        streams[mine[0]] = stream
    return streams, phases
