"""LASP-2 and ZeCO on gloo against the single-process linear attention of the whole stream.

Every rank runs its shard of a group's packed stream through the strategy, back-propagates a
fixed cotangent, and returns o, dq, dk, dv, dg; the test compares them with
``local_linear_attention`` (torch backend) run on the whole stream in one process, for
documents crossing several ranks, ranks holding only a document's interior, documents
starting exactly at a rank boundary and many short documents, decay on and off, both layouts.

Tolerance: fp32 throughout. The strategies sum a document's state over ranks in another order
and grouping than the single-process chunk scan (pieces, not 64-token chunks) and compute the
incoming-state term separately; the observed error is at most 5e-7 of each tensor's largest
entry, so the check is 1e-5 of that scale (``assert_rel_close``). A wrong decay, a missing or
doubled state, or a wrong piece order is O(1e-2) of the scale or more. Tokens that take no
incoming state involve no communication and must equal the local op on the shard exactly.
"""

import dataclasses
import itertools
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hetero_sp.core.traffic import lasp2_bytes, zeco_bytes, zeco_link_bytes
from hetero_sp.model import PackedSeqs
from hetero_sp.ops.backends import local_linear_attention
from hetero_sp.parallel import SPContext, linear_strategy, make_layout
from hetero_sp.parallel.lasp2 import states_from_local_call
from hetero_sp.parallel.linear_pieces import piece_table, zeco_links
from hetero_sp.parallel.traffic_counter import COMM
from tests.common import assert_rel_close
from tests.rank_pool import run_ranks

HEADS, HEAD_K, HEAD_V = 2, 8, 6
SCALE = HEAD_K**-0.5
RTOL = 1e-5
CASES = ("crossing", "interior", "boundary", "short", "several")
LAYOUTS = ("contiguous", "zigzag")


def case_lengths(case: str, size: int, kind: str) -> list[int]:
    parts = size if kind == "contiguous" else 2 * size
    if case == "crossing":  # the middle document crosses every rank border
        return [37, 150, 13]
    if case == "interior":  # the middle document spans whole pieces (interior-only ranks)
        return [5, 40 * parts, 7]
    if case == "boundary":  # the second document starts exactly where piece 1 starts
        return [24, 24 * (parts - 1) - 5, 5]
    if case == "several":  # zigzag: several documents cut on their own, ranks' piece counts differ
        return [61, 7, 130, 3, 97, 11, 2, 45]
    return [3, 1, 5, 2, 7, 1, 1, 4, 9, 2, 3, 6, 1, 8, 2, 5, 11, 1, 3, 2]


def stream_inputs(num_tokens: int, decay: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(num_tokens, HEADS, HEAD_K, generator=gen), dim=-1)
    k = F.normalize(torch.randn(num_tokens, HEADS, HEAD_K, generator=gen), dim=-1)
    v = torch.randn(num_tokens, HEADS, HEAD_V, generator=gen)
    # Moderate decay so states from several ranks back still matter.
    g = F.logsigmoid(torch.randn(num_tokens, HEADS, generator=gen) + 4.0) if decay else None
    do = torch.randn(num_tokens, HEADS, HEAD_V, generator=gen)
    return q, k, v, g, do


def _forward_backward(fn, q, k, v, g, do, *args, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    g_leaf = None if g is None else g.clone().requires_grad_()
    o = fn(*leaves, g_leaf, *args, **kwargs)
    if isinstance(o, tuple):
        o = o[0]
    (o * do).sum().backward()
    grads = [t.grad for t in leaves] + [None if g_leaf is None else g_leaf.grad]
    return o.detach(), grads


def _untouched(layout, rank) -> torch.Tensor:
    """Local tokens that take no incoming state: not in a piece's first, continuing segment."""
    mask = torch.ones(layout.tokens_per_rank, dtype=torch.bool)
    for piece in piece_table(layout, rank).pieces:
        if piece.starts:
            mask[piece.first[0] : piece.first[1]] = False
    return mask


def _run_cases(rank, world_size, strategy, backend, cases, layouts):
    out = {}
    for case, kind, decay in itertools.product(cases, layouts, (True, False)):
        layout = make_layout(case_lengths(case, world_size, kind), world_size, kind)
        sp = SPContext(dist.group.WORLD, rank, world_size, layout, linear_strategy=strategy)
        seqs = PackedSeqs.for_rank(sp)
        idx = layout.local_index(rank)
        q, k, v, g, do = (
            None if t is None else t[idx] for t in stream_inputs(layout.num_tokens, decay)
        )
        COMM.reset()
        o, grads = _forward_backward(
            linear_strategy(strategy), q, k, v, g, do, seqs, backend=backend, scale=SCALE
        )
        comm = COMM.snapshot()
        o_alone, _ = local_linear_attention(
            q, k, v, g, seqs.cu_seqlens_list, scale=SCALE, backend=backend
        )
        mask = _untouched(layout, rank)
        out[case, kind, decay] = {
            "o": o,
            "grads": grads,
            "untouched_exact": torch.equal(o[mask], o_alone[mask]),
            "num_untouched": int(mask.sum()),
            "passes": any(p.passes for p in piece_table(layout, rank).pieces),
            "comm": comm,
        }
    return out


def _reference(case, kind, decay, size):
    layout = make_layout(case_lengths(case, size, kind), size, kind)
    q, k, v, g, do = stream_inputs(layout.num_tokens, decay)
    o, grads = _forward_backward(
        local_linear_attention, q, k, v, g, do, layout.cu_seqlens, scale=SCALE, backend="torch"
    )
    return layout, o, grads


def _check(results, strategy, size):
    for (case, kind, decay), _ in results[0].items():
        layout, o_ref, grads_ref = _reference(case, kind, decay, size)
        label = f"{strategy} P={size} {case} {kind} decay={decay}"
        if case == "interior" and (size > 2 or kind == "zigzag"):
            assert any(r[case, kind, decay]["passes"] for r in results), label
        for rank, per_rank in enumerate(results):
            r = per_rank[case, kind, decay]
            idx = layout.local_index(rank)
            assert r["untouched_exact"], f"{label} rank {rank}: tokens without S_in changed"
            assert_rel_close(r["o"], o_ref[idx], RTOL, f"{label} rank {rank} o")
            for name, got, ref in zip(("dq", "dk", "dv", "dg"), r["grads"], grads_ref):
                if ref is None:
                    assert got is None, f"{label}: {name} should be None"
                    continue
                assert_rel_close(got, ref[idx], RTOL, f"{label} rank {rank} {name}")
            table = piece_table(layout, rank)
            if strategy == "lasp2":
                expected = lasp2_bytes(size, HEADS, HEAD_K, HEAD_V, 4, table.stride)
            else:
                expected = zeco_link_bytes(*zeco_links(table), HEADS, HEAD_K, HEAD_V, 4)
            assert r["comm"] == {
                f"{strategy}/fwd_send": expected.fwd_send,
                f"{strategy}/fwd_recv": expected.fwd_recv,
                f"{strategy}/bwd_send": expected.bwd_send,
                f"{strategy}/bwd_recv": expected.bwd_recv,
            }, f"{label} rank {rank}: counter != formula"


@pytest.mark.parametrize("strategy", ["lasp2", "zeco"])
@pytest.mark.parametrize("size", [2, 3, 4, 5, 6])
def test_strategy_equals_single_process(strategy, size):
    results = run_ranks(_run_cases, size, strategy, "torch", CASES, LAYOUTS)
    _check(results, strategy, size)


# The Triton backend (local chunk kernels + merge kernels) in fp32, under the interpreter on
# CPU, where it is slow: each size runs the cases that matter most at it, together covering
# every scenario. Both it and the torch reference compute in fp32 and tile sums differently
# again, so the same 1e-5 scale-relative check applies.
TRITON_CASES = {2: ("boundary", "short"), 3: ("interior", "several"), 4: ("crossing",)}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lasp2", "zeco"])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_strategy_triton_backend_equals_single_process(strategy, size):
    pytest.importorskip("hetero_sp.ops.linear_attn.chunk")
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)")
    results = run_ranks(_run_cases, size, strategy, "triton", TRITON_CASES[size], LAYOUTS)
    _check(results, strategy, size)


class _UnusedGroup:
    """Stands in for a process group where validation must fail before any communication."""

    def __getattr__(self, name):
        raise AssertionError("a bad input reached the communication")


def test_bad_inputs_raise_before_communicating():
    layout = make_layout([10, 30], 2)
    sp = SPContext(_UnusedGroup(), 0, 2, layout, linear_strategy="zeco")
    seqs = PackedSeqs.for_rank(sp)
    q, k, v, g, _ = stream_inputs(layout.tokens_per_rank, decay=True)
    for name in ("lasp2", "zeco"):
        fn = linear_strategy(name)
        with pytest.raises(ValueError, match="needs a sequence-parallel context"):
            fn(q, k, v, g, PackedSeqs.from_lengths([20]))
        with pytest.raises(ValueError, match=r"q must be \[T, H, K\] with T = 20"):
            fn(q[:-1], k[:-1], v[:-1], g[:-1], seqs)
        with pytest.raises(ValueError, match="does not match rank 0's segments"):
            fn(q, k, v, g, dataclasses.replace(seqs, cu_seqlens_list=(0, 20)))
        with pytest.raises(ValueError, match="k .* must match q"):
            fn(q, k[:, :1], v, g, seqs)
        with pytest.raises(ValueError, match=r"v must be \[T, H, V\]"):
            fn(q, k, v[:, :1], g, seqs)
        with pytest.raises(ValueError, match=r"g must be \[T, H\]"):
            fn(q, k, v, g[:, :1], seqs)
        with pytest.raises(ValueError, match="share one floating dtype, got torch.float32, torch"):
            fn(q, k.to(torch.bfloat16), v, g, seqs)
        with pytest.raises(ValueError, match="g must be a floating tensor"):
            fn(q, k, v, g.long(), seqs)
    with pytest.raises(ValueError, match="num_blocks must be >= 1"):
        linear_strategy("zeco")(q, k, v, g, seqs, num_blocks=0)
    with pytest.raises(ValueError, match="'ring' is unknown; available: lasp2, zeco"):
        linear_strategy("ring")
    with pytest.raises(ValueError, match="pieces must be 1 .contiguous. or 2"):
        zeco_bytes(0, 2, HEADS, HEAD_K, HEAD_V, 4, pieces=3)


def test_zigzag_chain_runs_through_the_middle_rank():
    layout = make_layout([80], 4, "zigzag")  # chunks of 10; rank 3 holds [30, 50) as one piece
    middle = piece_table(layout, 3)
    assert [p.stream_index for p in middle.pieces] == [3]
    assert middle.holder(2) == (2, 0) and middle.holder(4) == (2, 1)
    assert all(p.starts and p.passes and p.carries for p in middle.pieces)
    first = piece_table(layout, 0).pieces
    assert not first[0].starts and first[0].carries  # the stream's first piece
    assert first[1].starts and not first[1].carries  # the stream's last piece
    assert [p.last_segment for p in first] == [0, 1]


def test_link_counts_match_the_one_document_formulas():
    """The layout-exact counts equal ``zeco_bytes``'s closed forms, which the planner prices."""
    for size in (2, 3, 4):
        for kind, pieces in (("contiguous", 1), ("zigzag", 2)):
            layout = make_layout([40 * size], size, kind)
            for rank in range(size):
                table = piece_table(layout, rank)
                exact = zeco_link_bytes(*zeco_links(table), HEADS, HEAD_K, HEAD_V, 4)
                assert exact == zeco_bytes(rank, size, HEADS, HEAD_K, HEAD_V, 4, pieces)
                assert table.stride == pieces


def _bf16_step(rank, world_size):
    out = {}
    for strategy in ("lasp2", "zeco"):
        layout = make_layout(case_lengths("crossing", world_size, "zigzag"), world_size, "zigzag")
        sp = SPContext(dist.group.WORLD, rank, world_size, layout, linear_strategy=strategy)
        idx = layout.local_index(rank)
        q, k, v, g, do = (t[idx] for t in stream_inputs(layout.num_tokens, decay=True))
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        fn = linear_strategy(strategy)
        out[strategy] = _forward_backward(
            fn, q, k, v, g, do.to(torch.bfloat16), PackedSeqs.for_rank(sp), scale=SCALE
        )
    return out


def test_bf16_inputs_keep_their_dtype_and_match_fp32():
    results = run_ranks(_bf16_step, 3)
    layout, o_ref, grads_ref = _reference("crossing", "zigzag", True, 3)
    for rank, per_rank in enumerate(results):
        idx = layout.local_index(rank)
        for strategy, (o, grads) in per_rank.items():
            assert o.dtype == torch.bfloat16
            assert [t.dtype for t in grads] == [torch.bfloat16] * 3 + [torch.float32]
            # bf16 inputs and outputs (eps 7.8e-3) against the fp32 reference: a few roundings.
            label = f"{strategy} bf16 rank {rank}"
            assert_rel_close(o.float(), o_ref[idx], 3e-2, f"{label} o")
            for name, got, ref in zip(("dq", "dk", "dv", "dg"), grads, grads_ref):
                assert_rel_close(got.float(), ref[idx], 3e-2, f"{label} {name}")


def test_cases_cover_both_lasp2_summary_sources():
    """LASP-2 reads u off the local call's final states or computes it; the cases above must
    run both (the many-short-documents case makes some ranks compute it)."""
    seen = set()
    for size, case, kind in itertools.product((2, 3, 4), CASES, LAYOUTS):
        layout = make_layout(case_lengths(case, size, kind), size, kind)
        for rank in range(size):
            segments = len(layout.local_cu_seqlens(rank)) - 1
            seen.add(states_from_local_call(segments, layout.tokens_per_rank, HEAD_K, HEAD_V))
    assert seen == {True, False}
