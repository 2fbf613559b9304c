"""Host-side pieces of softmax SP: the Ulysses head limits and KV assignment, the byte formulas,
the per-rank causal work of each layout, the layout each strategy asks for, and imports."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hetero_sp.core.heads import (
    busiest_heads,
    check_ulysses_heads,
    ulysses_kv_of_q,
    ulysses_kv_ranges,
    ulysses_q_ranges,
)
from hetero_sp.core.traffic import CommBytes, ulysses_bytes
from hetero_sp.model import PackedSeqs
from hetero_sp.parallel import (
    SPContext,
    UnsupportedGroupSize,
    causal_pairs,
    layout_kind_for,
    make_layout,
    ulysses_supported,
)
from hetero_sp.reference import pack_documents
from tests.common import random_docs, tiny_model


def test_ulysses_head_limits():
    assert ulysses_supported(8, 2, 4) and ulysses_supported(8, 2, 8) and ulysses_supported(6, 2, 3)
    assert ulysses_supported(8, 2, 3) and ulysses_supported(8, 2, 5)  # uneven head splits
    assert not ulysses_supported(4, 2, 8)  # more ranks than query heads
    assert not ulysses_supported(6, 4, 2)  # KV heads must divide query heads
    with pytest.raises(UnsupportedGroupSize, match=r"4 query heads \(2 KV heads\).* 5 ranks"):
        check_ulysses_heads(4, 2, 5)
    with pytest.raises(UnsupportedGroupSize, match="groups of at most 4 ranks or the allgather_kv"):
        check_ulysses_heads(4, 2, 5)


@pytest.mark.parametrize("H, P", [(8, 3), (8, 5), (8, 6), (7, 7), (12, 5), (4, 4)])
def test_ulysses_uneven_heads_cover_each_head_once(H, P):
    ranges = ulysses_q_ranges(H, 1, P)
    assert ranges[0][0] == 0 and ranges[-1][1] == H
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    counts = [hi - lo for lo, hi in ranges]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1
    assert max(counts) == busiest_heads(H, P) == -(-H // P)


@pytest.mark.parametrize(
    "H, G, P, ranges, remap",
    [
        (8, 8, 4, ((0, 2), (2, 4), (4, 6), (6, 8)), [None] * 4),
        (8, 2, 4, ((0, 1), (0, 1), (1, 2), (1, 2)), [None] * 4),  # one KV head to two ranks
        (4, 1, 4, ((0, 1),) * 4, [None] * 4),
        (6, 2, 3, ((0, 1), (0, 2), (1, 2)), [None, None, None]),
        # 12 query heads read KV head i // 4; rank 1 holds query heads 3, 4, 5
        (12, 3, 4, ((0, 1), (0, 2), (1, 3), (2, 3)), [None, (0, 1, 1), (0, 0, 1), None]),
        # uneven: query heads 0-1, 2-4, 5-7 on 3 ranks, two query heads per KV head
        (8, 4, 3, ((0, 1), (1, 3), (2, 4)), [None, (0, 0, 1), (0, 1, 1)]),
    ],
)
def test_ulysses_kv_heads_are_exactly_those_needed(H, G, P, ranges, remap):
    assert ulysses_kv_ranges(H, G, P) == ranges
    for r in range(P):
        assert ulysses_kv_of_q(H, G, P, r) == remap[r]
        q_heads = range(r * H // P, (r + 1) * H // P)
        assert set(range(*ranges[r])) == {i // (H // G) for i in q_heads}


def test_ulysses_bytes_by_rank_and_busiest():
    T, E = 10, 8
    # divisible heads: every rank the same, fwd == bwd, (P - 1) / P of q, k, v, o
    even = ulysses_bytes(T, 4, 8, 4, E, 2)
    assert even == ulysses_bytes(T, 4, 8, 4, E, 2, rank=3)
    moved = T * E * (2 * 8 + 2 * 4) * 3 // 4 * 2
    assert even == CommBytes(moved, moved, moved, moved)
    # KV heads 1, 2, 2, 1 per rank: rank 1 receives more KV than it sends
    r1 = ulysses_bytes(T, 4, 12, 3, E, 4, rank=1)
    qo = 2 * 3 * T * 3 * E * 4
    assert r1.fwd_send == qo + 2 * T * E * (1 + 2 + 1) * 4
    assert r1.fwd_recv == qo + 2 * 3 * T * E * 2 * 4
    assert (r1.bwd_send, r1.bwd_recv) == (r1.fwd_recv, r1.fwd_send)
    every = [ulysses_bytes(T, 4, 12, 3, E, 4, rank=r) for r in range(4)]
    busiest = ulysses_bytes(T, 4, 12, 3, E, 4)
    assert busiest.fwd_recv == max(c.fwd_recv for c in every) == r1.fwd_recv
    assert busiest.fwd_send == max(c.fwd_send for c in every)
    assert ulysses_bytes(T, 1, 12, 3, E, 4).total == 0
    with pytest.raises(UnsupportedGroupSize):
        ulysses_bytes(T, 3, 2, 2, E, 4)
    # uneven: 8 query heads on 3 ranks are 2, 3, 3; q and o of rank 0 leave with the other
    # ranks' 6 heads of its tokens and arrive with its 2 heads of 2 ranks' tokens
    r0 = ulysses_bytes(T, 3, 8, 8, E, 4, rank=0)
    assert r0.fwd_send == T * E * (6 + 2 * 2) * 4 + 2 * T * E * 6 * 4
    assert ulysses_bytes(T, 3, 8, 8, E, 4).fwd_recv == T * E * (5 + 2 * 3 + 2 * 2 * 3) * 4
    with pytest.raises(ValueError, match="rank 4 is outside a group of 4"):
        ulysses_bytes(T, 4, 8, 2, E, 4, rank=4)


def _brute_force_pairs(layout, rank):
    """Count allowed (query, key) pairs of the rank's rows in the group's full causal mask."""
    n = layout.num_tokens
    doc = torch.tensor([layout.doc_of(t) for t in range(n)])
    idx = torch.arange(n)
    mask = (doc[:, None] == doc[None, :]) & (idx[None, :] <= idx[:, None])
    return int(mask[layout.local_index(rank)].sum())


@pytest.mark.parametrize("kind", ["contiguous", "zigzag"])
@pytest.mark.parametrize("lengths, P", [([50], 4), ([7, 1, 30, 2, 19], 3), ([1, 1, 1], 2)])
def test_causal_pairs_counts_the_mask(lengths, P, kind):
    layout = make_layout(lengths, P, kind)
    for rank in range(P):
        assert causal_pairs(layout, rank) == _brute_force_pairs(layout, rank)


def _spread(layout):
    work = [causal_pairs(layout, r) for r in range(layout.size)]
    return (max(work) - min(work)) / max(work)


@pytest.mark.parametrize("P", [2, 3, 4, 8])
@pytest.mark.parametrize(
    "lengths",
    [
        [1_000_003],
        [3, 500_000, 17, 40, 1],
        [8192, 3986, 4206],
        [65_536, 3000],
        [700_000] + [1000] * 300,
        [1000] * 300 + [90_000, 40_000] + [500] * 100,
    ],
    ids=["one-long", "long-among-short", "three-mid", "long-and-one", "long-many-short", "two"],
)
def test_zigzag_balances_causal_work_of_long_documents(P, lengths):
    layout = make_layout(lengths, P, "zigzag")
    assert _spread(layout) < 0.10
    assert layout.long_docs  # every case has one
    for doc in layout.long_docs:  # cut head-tail on its own: every rank's share is even
        work = [_doc_pairs(layout, r, doc) for r in range(P)]
        assert (max(work) - min(work)) / max(work) < 0.10, (doc, work)
    # the contiguous layout does not: for one document its last rank does ~2P - 1 times the
    # first rank's work
    if len(lengths) == 1:
        assert _spread(make_layout(lengths, P, "contiguous")) > 0.5


def _doc_pairs(layout, rank, doc):
    total = 0
    for seg in layout.segments(rank):
        if seg.doc == doc:
            q, k = seg.end - seg.start, seg.end - layout.cu_seqlens[seg.doc]
            total += q * k - q * (q - 1) // 2
    return total


def test_zigzag_balances_random_long_tailed_groups():
    """Over random long-tailed mixes the busiest rank's causal work stays close to the idlest's
    (the measured distribution is in ``sharding.LONG_WORK_SHARE``)."""
    rng = random.Random(0)
    spreads = []
    for _ in range(100):
        P = rng.choice([2, 3, 4, 8])
        lengths = [
            int(min(2 ** rng.uniform(4, 17), rng.lognormvariate(7, 1.5))) + 1
            for _ in range(rng.randint(1, 40))
        ]
        layout = make_layout(lengths, P, "zigzag")
        if layout.tokens_per_rank >= 2000:
            spreads.append(_spread(layout))
    spreads.sort()
    assert len(spreads) > 50
    assert spreads[int(0.9 * len(spreads))] < 0.02
    assert spreads[-1] < 0.05


def test_layout_kind_for_each_strategy():
    assert layout_kind_for("ulysses") == "contiguous"
    assert layout_kind_for("allgather_kv") == "zigzag"
    with pytest.raises(ValueError, match="'ring' is unknown; available: allgather_kv, ulysses"):
        layout_kind_for("ring")


def test_strategies_register_whichever_package_is_imported_first():
    """hetero_sp.parallel imports the model's backends and the model imports hetero_sp.parallel:
    both orders must work (importing a strategy module runs the package's __init__ first)."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import {}\n"
        "from hetero_sp.parallel import SOFTMAX_STRATEGIES\n"
        "print(sorted(SOFTMAX_STRATEGIES))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code.format(first)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for first in ("hetero_sp.parallel", "hetero_sp.model")
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout.strip() == "['allgather_kv', 'ulysses']"


def test_a_group_of_one_rank_runs_the_plain_path():
    model = tiny_model("SS")
    docs = random_docs([9, 1, 30])
    inputs, _, lengths = pack_documents(docs)
    alone = SPContext(None, 0, 1, make_layout(lengths, 1), softmax_strategy="allgather_kv")
    got = model(inputs, PackedSeqs.for_rank(alone))
    assert torch.equal(got, model(inputs, PackedSeqs.from_lengths(lengths)))
