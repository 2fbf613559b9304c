"""Ulysses and all-gather K/V at the attention level: every rank's output and dQ, dK, dV equal
the single-process varlen attention of the group's whole stream, sliced to the rank's tokens.

Batches where documents start and end anywhere: one document spanning all ranks, documents
shorter than P tokens, many tiny documents, a rank holding only the interior of a document,
and one token per rank; both layouts; several GQA head counts, and Ulysses with head counts the
group size does not divide; groups of 2, 3 (a subgroup of 4 ranks made with ``dist.new_group``),
4, 5 (a subgroup of 6) and 6 ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from hetero_sp.core.heads import ulysses_kv_ranges
from hetero_sp.model import PackedSeqs
from hetero_sp.ops.backends import varlen_softmax_attention
from hetero_sp.parallel import SPContext, make_layout, softmax_strategy
from tests.rank_pool import run_ranks

E = 8


def _cases(P: int) -> dict[str, list[int]]:
    return {
        "one_doc_all_ranks": [16 * P + 3],
        "docs_shorter_than_P": [1, 1, max(P - 1, 1), 1, max(P - 1, 1)],
        "many_tiny_docs": [(7 * i) % 3 + 1 for i in range(40)],
        "rank_holds_interior": [3, 40 * P + 1, 4],
        # zigzag deals the short documents to every rank; alone, a document leaves inner ranks
        # (and the last, holding both middle chunks) nothing but its interior
        "one_doc_no_padding": [32 * P],
        "one_token_per_rank": [1, P - 1] if P > 1 else [1],
    }


def _tensors(N: int, H: int, G: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(N, H, E, generator=gen)
    k = torch.randn(N, G, E, generator=gen)
    v = torch.randn(N, G, E, generator=gen)
    do = torch.randn(N, H, E, generator=gen)
    return q, k, v, do


def _runs(P: int, heads: list[tuple[int, int]]):
    for case, lengths in _cases(P).items():
        for kind in ("contiguous", "zigzag"):
            for H, G in heads:
                yield f"{case}/{kind}/H{H}G{G}", lengths, kind, H, G


def _attention_on_ranks(rank, world_size, strategy, group_ranks, heads):
    group = dist.new_group(group_ranks)
    if rank not in group_ranks:
        return None
    P, me = len(group_ranks), group_ranks.index(rank)
    out = {}
    for i, (name, lengths, kind, H, G) in enumerate(_runs(P, heads)):
        layout = make_layout(lengths, P, kind)
        sp = SPContext(group, me, P, layout, softmax_strategy=strategy)
        local = layout.local_index(me)
        q, k, v, do = (t[local].clone() for t in _tensors(layout.num_tokens, H, G, seed=i))
        for t in (q, k, v):
            t.requires_grad_()
        o = softmax_strategy(strategy)(q, k, v, PackedSeqs.for_rank(sp), backend="torch")
        o.backward(do)
        out[name] = (o.detach(), q.grad, k.grad, v.grad)
    return out


def _reference(lengths, kind, P, H, G, seed):
    layout = make_layout(lengths, P, kind)
    q, k, v, do = _tensors(layout.num_tokens, H, G, seed)
    for t in (q, k, v):
        t.requires_grad_()
    cu = layout.cu_seqlens
    o = varlen_softmax_attention(q, k, v, cu, cu, backend="torch")
    o.backward(do)
    return layout, (o.detach(), q.grad, k.grad, v.grad)


def _check(strategy, P, heads, results):
    interior_seen = set()
    for i, (name, lengths, kind, H, G) in enumerate(_runs(P, heads)):
        layout, expected = _reference(lengths, kind, P, H, G, seed=i)
        kv_shared = False
        if strategy == "ulysses":
            ranges = ulysses_kv_ranges(H, G, P)
            kv_shared = any(b[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        full_scale = dict(zip(("o", "dq", "dk", "dv"), (t.abs().max().item() for t in expected)))
        for me, res in enumerate(results):
            local = layout.local_index(me)
            segs = layout.segments(me)
            if all(s.doc == segs[0].doc and s.continues_prev and s.continues_next for s in segs):
                interior_seen.add((name.split("/")[0], kind))
            for label, got, want in zip(("o", "dq", "dk", "dv"), res[name], expected):
                want = want[local]
                tag = f"{strategy} P={P} {name} rank {me} {label}"
                if strategy == "ulysses" and (label in ("o", "dq") or not kv_shared):
                    # Each head's attention runs on the whole document in one process, with the
                    # same kernel as the reference: nothing is reduced across ranks.
                    assert torch.equal(got, want), tag
                else:
                    # fp32: all-gather K/V computes a rank's slice of a document with the
                    # bottom-right-masked SDPA kernel where the reference runs the whole document
                    # with is_causal (another kernel, another summation order), and dK/dV (and
                    # Ulysses' dK/dV of a KV head sent to several ranks) add per-rank partial
                    # gradients. Seen: up to 9e-7 relative (~8 ulp); the bound leaves 5x margin.
                    # The scale is the whole stream's, at least 1 (inputs are unit normals): a
                    # rank holding only one-token documents has dq = 0 up to roundoff.
                    err = (got - want).abs().max().item()
                    scale = max(full_scale[label], 1.0)
                    assert err <= 5e-6 * scale, f"{tag}: max abs err {err:.3e}, scale {scale:.3e}"
    # the interior cases really put a rank inside one document wherever the layout allows it
    if P >= 3:
        assert ("rank_holds_interior", "contiguous") in interior_seen, P
    if P >= 2:
        assert ("one_doc_no_padding", "zigzag") in interior_seen, P


ULYSSES_HEADS = {
    2: [(4, 2), (4, 1), (8, 8)],
    3: [(6, 2), (3, 3), (8, 2)],  # 6/2: rank 1's query heads read both KV heads; 8: 2, 3, 3
    4: [(4, 2), (4, 1), (12, 3), (6, 3)],  # 12/3: KV heads per rank 1, 2, 2, 1; 6: 1, 2, 1, 2
    5: [(8, 2), (5, 5)],  # 8 query heads: 1, 2, 1, 2, 2
    6: [(8, 4), (6, 1)],  # 8 query heads: 1, 1, 2, 1, 1, 2
}
ALLGATHER_HEADS = {2: [(4, 2)], 3: [(4, 2), (6, 3)], 4: [(4, 2), (4, 1)], 5: [(4, 2)], 6: [(4, 1)]}
GROUPS = {
    2: (2, [0, 1]),
    3: (4, [1, 2, 3]),
    4: (4, [0, 1, 2, 3]),
    5: (6, [1, 2, 3, 4, 5]),
    6: (6, [0, 1, 2, 3, 4, 5]),
}


@pytest.mark.parametrize("P", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("strategy", ["ulysses", "allgather_kv"])
def test_strategy_equals_single_process_attention(strategy, P):
    heads = (ULYSSES_HEADS if strategy == "ulysses" else ALLGATHER_HEADS)[P]
    world, group_ranks = GROUPS[P]
    results = run_ranks(_attention_on_ranks, world, strategy, group_ranks, heads)
    _check(strategy, P, heads, [results[r] for r in group_ranks])
