"""Chunked causal linear attention with decay in plain torch: the CPU backend.

Shape legend: T tokens of the packed stream, N documents, H heads, K key dim, V value dim,
C chunk size, M chunks (every document is cut into chunks of at most C tokens; a chunk never
crosses a document), J the largest number of chunks of one document.

Same contract as ``naive.naive_linear_attn``. The work splits into three parts, as in the
Triton kernels: the intra-chunk output (a masked C x C attention with decay), one state per
chunk, and the inter-chunk output from the state that enters each chunk. The scan over chunks
runs J steps, each batched over all documents that still have chunks left. Gradients come from
autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetero_sp.ops.common.varlen import as_list, check_cu_seqlens


@dataclass(frozen=True)
class _ChunkLayout:
    """Where every chunk lives; built once per call from ``cu_seqlens`` on the host."""

    gather_MC: torch.Tensor  # token index of each chunk slot, T (a zero row) for padding slots
    valid_MC: torch.Tensor  # bool: slot holds a real token
    scan_order: list[torch.Tensor]  # for scan step j: chunk ids, documents sorted by chunk count
    scan_docs: list[int]  # documents still active at step j (a prefix of the sorted documents)
    doc_order: torch.Tensor  # documents sorted by chunk count, descending
    chunks_per_doc: list[int]


def _layout(cu: list[int], chunk_size: int, device: torch.device) -> _ChunkLayout:
    starts, doc_of_chunk, index_in_doc = [], [], []
    chunks_per_doc = []
    for doc, (s, e) in enumerate(zip(cu, cu[1:])):
        n = -(-(e - s) // chunk_size)
        chunks_per_doc.append(n)
        for j in range(n):
            starts.append(s + j * chunk_size)
            doc_of_chunk.append(doc)
            index_in_doc.append(j)
    total = cu[-1]
    offs_C = torch.arange(chunk_size)
    starts_M = torch.tensor(starts, dtype=torch.long)
    ends_M = torch.tensor([cu[d + 1] for d in doc_of_chunk], dtype=torch.long)
    idx_MC = starts_M[:, None] + offs_C[None, :]
    valid_MC = idx_MC < ends_M[:, None]
    gather_MC = torch.where(valid_MC, idx_MC, torch.full_like(idx_MC, total))

    doc_order = sorted(range(len(chunks_per_doc)), key=lambda d: -chunks_per_doc[d])
    first_chunk = [0] * len(chunks_per_doc)
    running = 0
    for d, n in enumerate(chunks_per_doc):
        first_chunk[d] = running
        running += n
    max_chunks = max(chunks_per_doc, default=0)
    scan_order, scan_docs = [], []
    for j in range(max_chunks):
        active = [d for d in doc_order if chunks_per_doc[d] > j]
        scan_docs.append(len(active))
        scan_order.append(torch.tensor([first_chunk[d] + j for d in active], device=device))
    return _ChunkLayout(
        gather_MC=gather_MC.to(device),
        valid_MC=valid_MC.to(device),
        scan_order=scan_order,
        scan_docs=scan_docs,
        doc_order=torch.tensor(doc_order, dtype=torch.long, device=device),
        chunks_per_doc=chunks_per_doc,
    )


def _gather(x_T: torch.Tensor, layout: _ChunkLayout) -> torch.Tensor:
    """[T, ...] -> [M, C, ...] with zeros in padding slots."""
    padded = torch.cat([x_T, x_T.new_zeros((1, *x_T.shape[1:]))])
    return padded[layout.gather_MC]


def torch_chunk_linear_attn(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    cu_seqlens: torch.Tensor | list[int],
    scale: float | None = None,
    initial_state_NHKV: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked linear attention; returns (o [T, H, V], final state [N, H, K, V] or None)."""
    cu = as_list(cu_seqlens)
    check_cu_seqlens(cu, q_THK.shape[0])
    num_docs, num_heads = len(cu) - 1, q_THK.shape[1]
    head_k, head_v = q_THK.shape[-1], v_THV.shape[-1]
    if scale is None:
        scale = head_k**-0.5
    if g_TH is None:
        g_TH = q_THK.new_zeros(q_THK.shape[:2])
    layout = _layout(cu, chunk_size, q_THK.device)

    q_MCHK = _gather(q_THK * scale, layout)
    k_MCHK = _gather(k_THK, layout)
    v_MCHV = _gather(v_THV, layout)
    # Cumulative log-decay inside each chunk, in fp32; padding slots add 0.
    G_MCH = _gather(g_TH.to(torch.promote_types(g_TH.dtype, torch.float32)), layout).cumsum(1)
    G_last_MH = G_MCH[:, -1]

    # Intra-chunk: o_i = sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j.
    causal_CC = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q_THK.device).tril()
    diff_MHCC = G_MCH.permute(0, 2, 1)[..., :, None] - G_MCH.permute(0, 2, 1)[..., None, :]
    decay_MHCC = torch.where(causal_CC, diff_MHCC, float("-inf")).exp().to(q_THK.dtype)
    scores_MHCC = torch.einsum("mihk,mjhk->mhij", q_MCHK, k_MCHK) * decay_MHCC
    o_MCHV = torch.einsum("mhij,mjhv->mihv", scores_MHCC, v_MCHV)

    # Chunk summaries: the state a chunk adds, and how much it decays what enters it.
    tail_MCH = (G_last_MH[:, None, :] - G_MCH).exp().to(q_THK.dtype)
    delta_MHKV = torch.einsum("mchk,mchv->mhkv", k_MCHK * tail_MCH[..., None], v_MCHV)
    gamma_MH = G_last_MH.exp().to(q_THK.dtype)

    # Scan over chunk index j; documents sorted by chunk count so the active ones are a prefix.
    if initial_state_NHKV is None:
        state_NHKV = q_THK.new_zeros(num_docs, num_heads, head_k, head_v)
    else:
        state_NHKV = initial_state_NHKV.to(q_THK.dtype)
    state_NHKV = state_NHKV[layout.doc_order]
    # One gather into scan order, then split: per-step indexing of the full [M, ...] tensors
    # would make every step's backward allocate and fill an [M, H, K, V] gradient (O(M^2)).
    sizes = [len(ids) for ids in layout.scan_order]
    order = torch.cat(layout.scan_order) if sizes else None
    entering, finals = [], []
    if sizes:
        deltas = delta_MHKV.index_select(0, order).split(sizes)
        gammas = gamma_MH.index_select(0, order).split(sizes)
        for j, (delta_NHKV, gamma_NH) in enumerate(zip(deltas, gammas)):
            active = layout.scan_docs[j]
            if active < state_NHKV.shape[0]:
                finals.append(state_NHKV[active:])
                state_NHKV = state_NHKV[:active]
            entering.append(state_NHKV)
            state_NHKV = gamma_NH[:, :, None, None] * state_NHKV + delta_NHKV
    finals.append(state_NHKV)

    if entering:
        state_in_MHKV = torch.empty_like(delta_MHKV).index_copy(0, order, torch.cat(entering))
        q_decayed = q_MCHK * G_MCH.exp().to(q_THK.dtype)[..., None]
        o_MCHV = o_MCHV + torch.einsum("mchk,mhkv->mchv", q_decayed, state_in_MHKV)

    o_THV = v_THV.new_zeros(v_THV.shape)
    o_THV = o_THV.index_put((layout.gather_MC[layout.valid_MC],), o_MCHV[layout.valid_MC])

    final_NHKV = None
    if output_final_state:
        # Each block in ``finals`` precedes the ones appended before it in sorted order.
        sorted_final = torch.cat(finals[::-1])
        final_NHKV = torch.empty_like(sorted_final).index_copy(0, layout.doc_order, sorted_final)
    return o_THV, final_NHKV
