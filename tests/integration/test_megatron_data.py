"""The pure half of the Megatron plug-in (no megatron-core needed): Megatron's CP sharding as a
group layout, THD packing of micro-batches, and dataset-decomposition batches spread over
data-parallel ranks and micro-batches with every target token exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hetero_sp.config import DataConfig
from hetero_sp.data.corpus import TokenCorpus
from hetero_sp.data.samplers import build_sampler
from hetero_sp.integrations.megatron_data import DecomposedBatches, pack_micro_batch
from hetero_sp.integrations.megatron_layout import (
    ZIGZAG_DOCS,
    cp_layout,
    cp_shard_index,
    padded_length,
)
from hetero_sp.parallel import make_layout


def megatron_rule(lengths: list[int], cp: int, rank: int) -> torch.Tensor:
    """Megatron's sharding written as Megatron writes it (``get_batch_on_this_cp_rank``: view
    as 2 CP chunks, index_select chunks r and 2 CP - 1 - r), applied to each document."""
    out, start = [], 0
    for n in lengths:
        chunks = torch.arange(start, start + n).view(2 * cp, n // (2 * cp))
        out.append(chunks.index_select(0, torch.tensor([rank, 2 * cp - 1 - rank])).reshape(-1))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize(
    "lengths, cp",
    [([16], 2), ([8, 4, 12], 2), ([6, 12, 6], 3), ([8, 16, 8, 32], 4), ([4, 4, 4, 4, 4], 2)],
)
def test_cp_layout_is_megatrons_head_tail_split_per_document(lengths, cp):
    layout = cp_layout(lengths, cp)
    seen = []
    for r in range(cp):
        index = cp_shard_index(lengths, cp, r)
        assert torch.equal(index, megatron_rule(lengths, cp, r))
        # local order is stream order, what the SP strategies' piece tables rely on
        assert torch.equal(index, index.sort().values)
        assert layout.local_cu_seqlens(r)[-1] == sum(lengths) // cp
        seen.append(index)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(sum(lengths)))


def test_one_document_is_the_zigzag_layout():
    assert cp_layout([24], 3) == make_layout([24], 3, "zigzag")
    assert cp_layout([8, 8], 2).kind == ZIGZAG_DOCS
    assert cp_layout([5, 3], 1) == make_layout([5, 3], 1)


def test_cp_layout_rejects_unpadded_documents():
    with pytest.raises(ValueError, match="multiple of 4"):
        cp_layout([8, 6], 2)
    with pytest.raises(ValueError, match="at least one document"):
        cp_layout([], 2)
    assert padded_length(5, 1) == 5 and padded_length(5, 2) == 8 and padded_length(8, 2) == 8


@pytest.mark.parametrize("cp", [1, 2, 3])
def test_pack_micro_batch(cp):
    seqs = [np.array([5, 6, 7, 8]), np.array([9, 10]), np.arange(20, 31)]
    b = pack_micro_batch(seqs, cp, pad_id=0)
    lengths = [3, 1, 10]
    padded = [padded_length(n, cp) for n in lengths]
    T = sum(padded)
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        assert b[key].shape == (1, T), key
    assert b["cu_seqlens"].tolist() == [0, 3, 4, 14]
    assert b["cu_seqlens_padded"].tolist() == np.concatenate([[0], np.cumsum(padded)]).tolist()
    assert b["max_seqlen"] == max(padded)
    assert b["cu_seqlens"].dtype == b["cu_seqlens_padded"].dtype == torch.int32
    for s, (start, n) in zip(seqs, zip(b["cu_seqlens_padded"].tolist(), lengths)):
        assert b["tokens"][0, start : start + n].tolist() == s[:-1].tolist()
        assert b["labels"][0, start : start + n].tolist() == s[1:].tolist()
    mask = b["loss_mask"][0]
    assert mask.sum().item() == sum(lengths)
    assert torch.equal(b["tokens"][0][mask == 0], torch.zeros(T - sum(lengths), dtype=torch.long))
    assert b["position_ids"][0].tolist() == [i for n in padded for i in range(n)]


def test_pack_micro_batch_rejects_empty_input():
    with pytest.raises(ValueError, match="at least one sequence"):
        pack_micro_batch([], 2)
    with pytest.raises(ValueError, match="at least 2 token ids"):
        pack_micro_batch([np.array([3])], 2)


def positional_corpus(lengths: list[int]) -> TokenCorpus:
    """Token id = position in the corpus, so a (token, label) pair says where it came from."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenCorpus.from_docs([np.arange(a, b) for a, b in zip(offsets, offsets[1:])])


def _sampler(kind: str):
    lengths = [int(n) for n in np.random.default_rng(0).integers(3, 300, size=60)]
    cfg = DataConfig(sampler=kind, tokens_per_step=512, max_seq_len=64, min_seq_len=8, seed=3)
    return build_sampler(cfg, positional_corpus(lengths))


@pytest.mark.parametrize("kind", ["dd", "mixed"])
@pytest.mark.parametrize("dp, micro, cp", [(1, 1, 1), (2, 2, 2), (3, 1, 4)])
def test_every_target_token_appears_once(kind, dp, micro, cp):
    """Over the data-parallel ranks, micro-batches and CP shards of a step, the (input, label)
    pairs with loss are exactly the step's next-token pairs, each once."""
    sampler = _sampler(kind)
    ranks = [
        DecomposedBatches(sampler, dp_rank=d, dp_size=dp, num_microbatches=micro, cp_size=cp)
        for d in range(dp)
    ]
    for step in range(3):
        batch = sampler.batch(step)
        expected = sorted(
            (int(a), int(b))
            for seq in batch.materialize(range(len(batch)))
            for a, b in zip(seq[:-1], seq[1:])
        )
        got = []
        for d in range(dp):
            for _ in range(micro):
                mb = next(ranks[d])
                lengths = np.diff(mb["cu_seqlens_padded"].numpy()).tolist()
                assert all(n % (2 * cp) == 0 for n in lengths) or cp == 1
                for r in range(cp):
                    index = cp_shard_index(lengths, cp, r)
                    mask = mb["loss_mask"][0, index] == 1
                    pairs = zip(mb["tokens"][0, index][mask], mb["labels"][0, index][mask])
                    got += [(int(a), int(b)) for a, b in pairs]
        assert sorted(got) == expected
        assert len(set(got)) == len(got)
        assert all(r.state_dict() == {"step": step + 1, "micro": 0} for r in ranks)


def test_decomposed_batches_resume_from_cursor():
    sampler = _sampler("dd")
    run = DecomposedBatches(sampler, dp_rank=1, dp_size=2, num_microbatches=3, cp_size=2)
    for _ in range(4):
        next(run)
    resumed = DecomposedBatches(sampler, dp_rank=1, dp_size=2, num_microbatches=3, cp_size=2)
    resumed.load_state_dict(run.state_dict())
    assert resumed.state_dict() == {"step": 1, "micro": 1}
    for _ in range(3):
        a, b = next(run), next(resumed)
        assert all(torch.equal(a[k], b[k]) for k in a if k != "max_seqlen")
    with pytest.raises(ValueError, match="does not fit"):
        resumed.load_state_dict({"step": 0, "micro": 3})
    with pytest.raises(ValueError, match="outside a world"):
        DecomposedBatches(sampler, dp_rank=2, dp_size=2, num_microbatches=1, cp_size=1)
