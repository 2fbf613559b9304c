"""The multi-rank harness itself: results come back, and failures and hangs fail the test."""

import os

import pytest
import torch
import torch.distributed as dist

from tests.rank_pool import run_ranks


def _sum_of_ranks(rank, world_size):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return rank, world_size, t.item()


def _rank_one_raises(rank, world_size):
    if rank == 1:
        raise RuntimeError("boom on rank one")
    dist.barrier()
    return rank


def _rank_zero_hangs(rank, world_size):
    if rank != 0:
        dist.barrier()  # rank 0 never joins: the others block
    return rank


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_results_come_back_in_rank_order(world_size):
    results = run_ranks(_sum_of_ranks, world_size)
    expected_sum = world_size * (world_size - 1) / 2
    assert results == [(r, world_size, expected_sum) for r in range(world_size)]


def test_exception_on_one_rank_fails_with_its_traceback():
    with pytest.raises(AssertionError) as info:
        run_ranks(_rank_one_raises, 2, timeout=60)
    assert "rank 1 raised" in str(info.value)
    assert "boom on rank one" in str(info.value)
    # the pool was replaced: the next call works
    assert run_ranks(_sum_of_ranks, 2) == [(0, 2, 1.0), (1, 2, 1.0)]


def test_hang_fails_after_timeout_naming_the_ranks():
    with pytest.raises(AssertionError) as info:
        run_ranks(_rank_zero_hangs, 2, timeout=5)
    assert "ranks [1] did not finish" in str(info.value)
    assert run_ranks(_sum_of_ranks, 2) == [(0, 2, 1.0), (1, 2, 1.0)]


def _pid(rank, world_size):
    return os.getpid()


def test_a_pool_full_of_leftover_threads_is_replaced(monkeypatch):
    from tests import rank_pool

    first = run_ranks(_pid, 2)
    assert run_ranks(_pid, 2) == first  # reused while its workers stay lean
    monkeypatch.setattr(rank_pool, "MAX_THREADS", 0)  # every worker is "too full" now
    before = run_ranks(_pid, 2)
    after = run_ranks(_pid, 2)
    assert not set(before) & set(after), "the pool should have been started afresh"
