"""The pool of SP process groups: which blocks exist for every world size (pure), and that the
created groups are the right ranks, found by (first rank, size), and usable."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from hetero_sp.parallel import make_layout
from hetero_sp.parallel.groups import build_group_pool, pool_blocks
from tests.rank_pool import run_ranks

EXPECTED = {
    1: (),
    2: ((0, 2),),
    3: ((0, 2), (0, 3)),
    4: ((0, 2), (2, 2), (0, 4)),
    5: ((0, 2), (2, 2), (0, 4), (0, 5)),
    6: ((0, 2), (2, 2), (4, 2), (0, 4), (0, 6)),
    7: ((0, 2), (2, 2), (4, 2), (0, 4), (0, 7)),
    8: ((0, 2), (2, 2), (4, 2), (6, 2), (0, 4), (4, 4), (0, 8)),
}


@pytest.mark.parametrize("world", sorted(EXPECTED))
def test_pool_blocks_for_world_sizes_1_to_8(world):
    assert pool_blocks(world) == EXPECTED[world]
    assert pool_blocks(world, node_size=world) == EXPECTED[world]
    assert pool_blocks(world, node_size=1) == EXPECTED[world]


def test_groups_up_to_a_node_stay_inside_it_and_larger_ones_are_whole_nodes():
    # 3 nodes of 2: pairs inside nodes, then 2 nodes (aligned) and all 3 nodes
    assert pool_blocks(6, node_size=2) == ((0, 2), (2, 2), (4, 2), (0, 4), (0, 6))
    # 2 nodes of 6 ranks: a 4-block at rank 4 would straddle the nodes, so it is not made
    blocks = pool_blocks(12, node_size=6)
    assert blocks == (
        (0, 2), (2, 2), (4, 2), (6, 2), (8, 2), (10, 2),
        (0, 4), (6, 4), (0, 6), (6, 6), (0, 12),
    )  # fmt: skip
    for first, size in blocks:
        if size <= 6:
            assert first // 6 == (first + size - 1) // 6, (first, size)
        else:
            assert first % 6 == 0 and size % 6 == 0
    assert pool_blocks(16, node_size=4)[-3:] == ((0, 8), (8, 8), (0, 16))


@pytest.mark.parametrize(
    "args, message",
    [
        ((0,), "world size must be >= 1"),
        ((6, 4), "node size must be >= 1 and divide the world size 6"),
        ((4, 0), "node size must be >= 1"),
    ],
)
def test_pool_blocks_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        pool_blocks(*args)


def _pool_on_ranks(rank, world_size):
    pool = build_group_pool()
    out = {"sizes": pool.sizes, "keys": tuple(pool.groups)}
    sums = {}
    for (first, size), g in pool.groups.items():
        if rank in g.ranks:
            t = torch.tensor([float(rank)])
            dist.all_reduce(t, group=g.group)
            sums[(first, size)] = t.item()
            ctx = g.context(rank, make_layout([9], size), "allgather_kv")
            assert (ctx.rank, ctx.size, ctx.group) == (rank - first, size, g.group)
    out["sums"] = sums
    out["single"] = pool.get(rank, 1)
    with pytest.raises(ValueError) as info:
        pool.get(1, 2)
    out["missing"] = str(info.value)
    with pytest.raises(ValueError) as info:
        pool.get(0, 2).context(3, make_layout([9], 2))
    out["not_member"] = str(info.value)
    return out


def test_pool_groups_hold_their_ranks():
    results = run_ranks(_pool_on_ranks, 4)
    for rank, out in enumerate(results):
        assert out["sizes"] == (1, 2, 4)
        assert out["keys"] == EXPECTED[4]
        expected_sums = {
            (f, s): float(sum(range(f, f + s))) for f, s in EXPECTED[4] if f <= rank < f + s
        }
        assert out["sums"] == expected_sums
        assert (out["single"].first, out["single"].size, out["single"].group) == (rank, 1, None)
        assert "no SP group of 2 ranks starts at rank 1" in out["missing"]
        assert "(0, 2), (2, 2), (0, 4)" in out["missing"]
        assert "rank 3 is not in the group of ranks 0..1" in out["not_member"]
