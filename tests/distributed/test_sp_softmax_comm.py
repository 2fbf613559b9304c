"""The bytes the softmax strategies add to ``COMM`` while they run equal the pure formulas the
planner prices groups with; and bad calls fail before any communication with a clear error."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from hetero_sp.core.traffic import CommBytes, allgather_kv_bytes, ulysses_bytes
from hetero_sp.model import PackedSeqs
from hetero_sp.parallel import SPContext, UnsupportedGroupSize, make_layout, softmax_strategy
from hetero_sp.parallel.traffic_counter import COMM
from tests.rank_pool import run_ranks

LENGTHS = [37, 5, 1, 20]
E = 8


def _counted_call(rank, world_size, strategy, H, G, dtype):
    group = dist.new_group(list(range(world_size)))
    layout = make_layout(LENGTHS, world_size, "zigzag")
    sp = SPContext(group, rank, world_size, layout, softmax_strategy=strategy)
    T = layout.tokens_per_rank
    q = torch.randn(T, H, E, dtype=dtype, requires_grad=True)
    k = torch.randn(T, G, E, dtype=dtype, requires_grad=True)
    v = torch.randn(T, G, E, dtype=dtype, requires_grad=True)
    COMM.reset()
    o = softmax_strategy(strategy)(q, k, v, PackedSeqs.for_rank(sp), backend="torch")
    after_forward = COMM.snapshot()
    o.sum().backward()
    total = COMM.snapshot()
    COMM.reset()
    with torch.no_grad():  # inference builds no graph, moves the same forward bytes
        same = torch.equal(softmax_strategy(strategy)(q, k, v, PackedSeqs.for_rank(sp)), o)
    return T, after_forward, total, same, COMM.snapshot()


@pytest.mark.parametrize(
    "strategy, P, H, G, dtype",
    [
        ("ulysses", 2, 4, 2, torch.float32),
        ("ulysses", 4, 4, 1, torch.float32),  # each KV head replicated to every rank
        ("ulysses", 4, 12, 3, torch.float32),  # ranks receive 1, 2, 2, 1 KV heads
        ("ulysses", 4, 8, 8, torch.bfloat16),
        ("ulysses", 3, 4, 2, torch.float32),  # query heads 1, 1, 2: uneven splits
        ("ulysses", 4, 6, 3, torch.float32),  # query heads 1, 2, 1, 2
        ("allgather_kv", 2, 4, 2, torch.float32),
        ("allgather_kv", 4, 4, 1, torch.bfloat16),
    ],
)
def test_counter_equals_formula(strategy, P, H, G, dtype):
    results = run_ranks(_counted_call, P, strategy, H, G, dtype)
    elem = torch.tensor([], dtype=dtype).element_size()
    for rank, (T, after_forward, total, same, inference) in enumerate(results):
        assert same and inference == after_forward
        if strategy == "ulysses":
            want = ulysses_bytes(T, P, H, G, E, elem, rank=rank)
        else:
            want = allgather_kv_bytes(T, P, G, E, elem)
        assert want.fwd_send > 0
        got = CommBytes(
            total[f"{strategy}/fwd_send"],
            total[f"{strategy}/fwd_recv"],
            total[f"{strategy}/bwd_send"],
            total[f"{strategy}/bwd_recv"],
        )
        assert got == want, (rank, got, want)
        assert f"{strategy}/bwd_send" not in after_forward  # the forward moves no gradient
        assert set(total) == {
            f"{strategy}/{d}" for d in ("fwd_send", "fwd_recv", "bwd_send", "bwd_recv")
        }


def _bad_calls(rank, world_size):
    group = dist.new_group([1, 2, 3])
    if rank == 0:
        return None
    me = rank - 1
    layout = make_layout([10], 3)
    sp = SPContext(group, me, 3, layout, softmax_strategy="ulysses")
    seqs = PackedSeqs.for_rank(sp)
    T = layout.tokens_per_rank
    messages = {}
    q, k = torch.randn(T, 4, E), torch.randn(T, 2, E)
    with pytest.raises(UnsupportedGroupSize) as info:  # 3 ranks, 2 query heads: one gets none
        softmax_strategy("ulysses")(k, k, k, seqs)
    messages["heads"] = str(info.value)
    with pytest.raises(ValueError) as info:
        softmax_strategy("allgather_kv")(q[:-1], k[:-1], k[:-1], seqs)
    messages["tokens"] = str(info.value)
    alone = PackedSeqs(seqs.cu_seqlens, seqs.cu_seqlens_list, seqs.max_seqlen, seqs.positions)
    with pytest.raises(ValueError) as info:
        softmax_strategy("allgather_kv")(q, k, k, alone)
    messages["no_context"] = str(info.value)
    mismatch = SPContext(group, me % 2, 2, make_layout([10], 2))
    q5, k5 = torch.randn(5, 4, E), torch.randn(5, 2, E)
    with pytest.raises(ValueError) as info:
        softmax_strategy("allgather_kv")(q5, k5, k5, PackedSeqs.for_rank(mismatch))
    messages["group_size"] = str(info.value)
    dist.barrier(group=group)  # nothing above communicated: every rank is still in step
    return messages


def test_bad_calls_raise_clear_errors_before_communicating():
    results = run_ranks(_bad_calls, 4)
    for messages in results[1:]:
        assert "2 query heads (2 KV heads)" in messages["heads"]
        assert "groups of at most 2 ranks" in messages["heads"]
        assert "group has 3 ranks" in messages["heads"]
        assert "allgather_kv" in messages["heads"]
        assert (
            "got 3 local tokens" in messages["tokens"] and "gives each rank 4" in messages["tokens"]
        )
        assert "group of 2 or more ranks" in messages["no_context"]
        assert "says 2 ranks but its process group has 3" in messages["group_size"]
