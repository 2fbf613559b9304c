"""The pool of SP process groups: groups of any consecutive ranks are made when a plan first
needs them (collectively, on every rank), hold exactly their ranks, are reused while cached,
and the least recently used leave once more than ``max_groups`` would be kept."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from hetero_sp.parallel import make_layout
from hetero_sp.parallel.groups import GroupPool
from tests.rank_pool import run_ranks


def _sum_over(pool: GroupPool, rank: int, first: int, size: int) -> float | None:
    group = pool.get(first, size)
    if rank not in group.ranks:
        return None
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=group.group)
    ctx = group.context(rank, make_layout([9], size), "allgather_kv")
    assert (ctx.rank, ctx.size, ctx.group) == (rank - first, size, group.group)
    return t.item()


def _pool_on_ranks(rank, world_size):
    pool = GroupPool(world_size, max_groups=2)
    out = {}
    # a 3 + 1 plan: the group of 3 is made, the single rank needs none
    pool.prepare([(0, 3), (3, 1)])
    out["sum3"] = _sum_over(pool, rank, 0, 3)
    out["single"] = pool.get(rank, 1)
    out["after_first"] = (pool.cached, pool.created)
    with pytest.raises(ValueError) as info:
        pool.get(1, 2)
    out["unprepared"] = str(info.value)
    pool.prepare([(1, 2), (0, 3)])  # (0, 3) reused, (1, 2) made
    out["sum12"] = _sum_over(pool, rank, 1, 2)
    pool.prepare([(2, 2)])  # over the cap: the least recently used, (0, 3), leaves
    out["after_evict"] = (pool.cached, pool.created)
    with pytest.raises(ValueError):
        pool.get(0, 3)
    pool.prepare([(0, 3)])  # made again; (1, 2) leaves
    out["remade"] = (pool.cached, pool.created)
    out["sum3_again"] = _sum_over(pool, rank, 0, 3)
    pool.prepare([(0, 2), (2, 2), (1, 3)])  # one step needs 3 groups: all kept for it
    out["big_step"] = (pool.cached, pool.created)
    out["sums"] = [_sum_over(pool, rank, f, s) for f, s in ((0, 2), (2, 2), (1, 3))]
    with pytest.raises(ValueError) as info:
        pool.prepare([(2, 3)])
    out["outside"] = str(info.value)
    with pytest.raises(ValueError) as info:
        pool.get(0, 2).context(3, make_layout([9], 2))
    out["not_member"] = str(info.value)
    return out


def test_pool_makes_groups_on_first_use_and_evicts_the_least_recently_used():
    results = run_ranks(_pool_on_ranks, 4)
    for rank, out in enumerate(results):
        assert out["sum3"] == (3.0 if rank < 3 else None)
        assert out["single"].first == rank and out["single"].group is None
        assert out["after_first"] == (((0, 3),), 1)
        assert "ranks 1..2 was not prepared" in out["unprepared"]
        assert out["sum12"] == (3.0 if rank in (1, 2) else None)
        assert out["after_evict"] == (((1, 2), (2, 2)), 3)
        assert out["remade"] == (((2, 2), (0, 3)), 4)
        assert out["sum3_again"] == (3.0 if rank < 3 else None)
        cached, created = out["big_step"]
        assert cached == ((2, 2), (0, 2), (1, 3)) and created == 6
        want = [1.0 if rank < 2 else None, 5.0 if rank >= 2 else None, 6.0 if rank else None]
        assert out["sums"] == want
        assert "no SP group of 3 ranks can start at rank 2 in a world of 4" in out["outside"]
        assert "rank 3 is not in the group of ranks 0..1" in out["not_member"]


def test_pool_refuses_bad_sizes():
    with pytest.raises(ValueError, match="world size must be >= 1"):
        GroupPool(0)
    with pytest.raises(ValueError, match="max_groups must be >= 1"):
        GroupPool(4, max_groups=0)
