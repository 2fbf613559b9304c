"""What one rank runs in one micro-batch of a plan: its share of its group's packed stream.

A group's stream is the plan's sequences for that group, back to back, sharded over the group
by :func:`hetero_sp.parallel.make_layout` (contiguous for Ulysses; head-tail zigzag for
all-gather K/V, whose causal work it balances). A rank reads only the token ids its pieces of
the stream cover (plus one for the last label), never whole sequences it does not hold.
Padding tokens (at most P - 1, the layout's own last document) get id 0 and no label.

A rank whose group runs nothing in a micro-batch still does a forward and backward, over one
padding token without a label: ZeRO-3 gathers parameters collectively in every forward and
ZeRO-2/3 reduce gradients collectively in every backward, so every rank must take part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hetero_sp.data.batch import GlobalBatch
from hetero_sp.engine.loss import IGNORE_INDEX
from hetero_sp.parallel import GroupLayout, SPContext, layout_kind_for, make_layout
from hetero_sp.parallel.packed import PackedSeqs

PAD_ID = 0


@dataclass(frozen=True)
class GroupWork:
    """One group of one micro-batch, as the engine needs it (the planner's GroupPlan fits)."""

    ranks: tuple[int, ...]
    sequences: tuple[int, ...]
    softmax_strategy: str = "ulysses"
    linear_strategy: str = "lasp2"


@dataclass(frozen=True)
class RankMicroBatch:
    inputs_T: torch.Tensor
    labels_T: torch.Tensor
    seqs: PackedSeqs
    layout: GroupLayout | None
    """None for an idle rank."""
    group_size: int

    @property
    def num_labels(self) -> int:
        return int((self.labels_T != IGNORE_INDEX).sum())

    @property
    def idle(self) -> bool:
        return self.layout is None


def layout_kind(layers: str, softmax_strategy: str) -> str:
    """The layout a group uses: what its softmax strategy wants; contiguous without S layers."""
    return layout_kind_for(softmax_strategy) if "S" in layers else "contiguous"


def _read_stream(batch: GlobalBatch, layout: GroupLayout, sequences: tuple[int, ...], rank: int):
    """Inputs and labels of this rank's pieces of the group stream (int64 numpy arrays)."""
    starts = np.cumsum([0] + [batch.lengths[i] for i in sequences])
    inputs, labels = [], []
    for lo, hi in layout.pieces[rank]:
        pos = lo
        while pos < hi:
            j = int(np.searchsorted(starts, pos, side="right")) - 1
            if j >= len(sequences):  # padding at the end of the stream
                inputs.append(np.full(hi - pos, PAD_ID, dtype=np.int64))
                labels.append(np.full(hi - pos, IGNORE_INDEX, dtype=np.int64))
                break
            end = min(hi, int(starts[j + 1]))
            off = pos - int(starts[j])
            ids = batch.read(sequences[j], off, off + (end - pos) + 1)
            inputs.append(ids[:-1])
            labels.append(ids[1:])
            pos = end
    return np.concatenate(inputs), np.concatenate(labels)


def rank_microbatch(
    batch: GlobalBatch,
    group: GroupWork,
    rank: int,
    context_for,
    layers: str,
    device: torch.device,
) -> RankMicroBatch:
    """This rank's work in ``group`` (it must be one of ``group.ranks``).

    ``context_for(group, layout) -> SPContext`` supplies the process group (from the pool).
    """
    if rank not in group.ranks:
        raise ValueError(f"rank {rank} is not in group {list(group.ranks)}")
    if not group.sequences:
        return RankMicroBatch(
            inputs_T=torch.full((1,), PAD_ID, dtype=torch.long, device=device),
            labels_T=torch.full((1,), IGNORE_INDEX, dtype=torch.long, device=device),
            seqs=PackedSeqs.from_lengths([1], device),
            layout=None,
            group_size=len(group.ranks),
        )
    size = len(group.ranks)
    lengths = [batch.lengths[i] for i in group.sequences]
    layout = make_layout(lengths, size, layout_kind(layers, group.softmax_strategy))
    sp: SPContext = context_for(group, layout)
    inputs, labels = _read_stream(batch, layout, group.sequences, sp.rank)
    return RankMicroBatch(
        inputs_T=torch.from_numpy(inputs).to(device),
        labels_T=torch.from_numpy(labels).to(device),
        seqs=PackedSeqs.for_rank(sp, device),
        layout=layout,
        group_size=size,
    )
