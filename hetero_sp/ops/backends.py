"""Single-rank attention backends on packed variable-length streams.

Shape legend: T query tokens, S key tokens, H query heads, G key/value heads (G divides H),
E head dim of q/k, F head dim of v, N documents.

Softmax: flash-attn's varlen kernel when it is importable and the tensors are on CUDA, else a
torch path that runs ``scaled_dot_product_attention`` document by document (memory stays
linear in T; no T x T mask is ever built). Causal masks are aligned bottom-right when a
document has fewer queries than keys (the flash-attn >= 2.1 convention): the last query sees
every key, which is what sequence-parallel strategies need for a rank's slice of a document.

Linear attention: the chunked torch path, or the Triton kernels once ``hetero_sp.ops.linear_attn.chunk``
is importable and the tensors are on CUDA (or ``TRITON_INTERPRET=1`` is set).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from hetero_sp.core.errors import UserError
from hetero_sp.core.names import LinearBackend, SoftmaxBackend, values
from hetero_sp.ops.common.varlen import check_cu_seqlens
from hetero_sp.ops.linear_attn.torch_chunk import torch_chunk_linear_attn


@functools.cache
def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


FLASH_DTYPES = (torch.float16, torch.bfloat16)
"""flash-attn's kernels take half precision only."""


def resolve_softmax_backend(
    name: str, device: torch.device, dtype: torch.dtype | None = None
) -> str:
    """The softmax backend for tensors on ``device`` of ``dtype`` (None: any half dtype)."""
    if name not in values(SoftmaxBackend):
        allowed = ", ".join(values(SoftmaxBackend))
        raise UserError(f"softmax backend {name!r} is unknown; allowed: {allowed}")
    have_flash = device.type == "cuda" and _flash_attn_varlen() is not None
    if name == "flash" and not have_flash:
        raise UserError(
            "softmax backend 'flash' needs flash-attn installed (pip install 'hetero-sp[gpu]') "
            "and CUDA tensors; use parallel.softmax_backend=torch or auto"
        )
    half = dtype is None or dtype in FLASH_DTYPES
    if name == "flash" and not half:
        raise UserError(
            f"softmax backend 'flash' takes fp16 or bf16 tensors, got {dtype}; train with "
            "train.precision=bf16 or use parallel.softmax_backend=torch or auto"
        )
    if name == "auto":
        return "flash" if have_flash and half else "torch"
    return name


def _torch_varlen(q_THE, k_SGE, v_SGF, cu_q, cu_k, scale):
    groups = q_THE.shape[1] // k_SGE.shape[1]
    outputs = []
    for (qs, qe), (ks, ke) in zip(zip(cu_q, cu_q[1:]), zip(cu_k, cu_k[1:])):
        nq, nk = qe - qs, ke - ks
        if nq == 0:
            continue
        if nk < nq:
            raise ValueError(
                f"a document has {nq} queries but only {nk} keys; causal needs nk >= nq"
            )
        q = q_THE[qs:qe].transpose(0, 1)[None]
        k = k_SGE[ks:ke].repeat_interleave(groups, dim=1).transpose(0, 1)[None]
        v = v_SGF[ks:ke].repeat_interleave(groups, dim=1).transpose(0, 1)[None]
        if nq == nk:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=causal_lower_right(nq, nk), scale=scale
            )
        outputs.append(o[0].transpose(0, 1))
    if not outputs:
        return q_THE.new_zeros((0, q_THE.shape[1], v_SGF.shape[-1]))
    return torch.cat(outputs)


def varlen_softmax_attention(
    q_THE: torch.Tensor,
    k_SGE: torch.Tensor,
    v_SGF: torch.Tensor,
    cu_seqlens_q: list[int] | tuple[int, ...],
    cu_seqlens_k: list[int] | tuple[int, ...],
    *,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of every query document on the key document of the same index.

    Returns [T, H, F]. Document i's queries are ``cu_seqlens_q[i]:cu_seqlens_q[i+1]`` and its
    keys ``cu_seqlens_k[i]:cu_seqlens_k[i+1]``; a document may have fewer queries than keys
    (bottom-right causal alignment) but never more.
    """
    if len(cu_seqlens_q) != len(cu_seqlens_k):
        raise ValueError("query and key streams must have the same number of documents")
    if v_SGF.shape[0] != k_SGE.shape[0]:
        raise ValueError(f"k has {k_SGE.shape[0]} tokens but v has {v_SGF.shape[0]}")
    # A cu_seqlens that does not cover its tensor would return the wrong number of rows.
    for name, cu, x in (
        ("cu_seqlens_q", cu_seqlens_q, q_THE),
        ("cu_seqlens_k", cu_seqlens_k, k_SGE),
    ):
        try:
            check_cu_seqlens(list(cu), x.shape[0])
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    if scale is None:
        scale = q_THE.shape[-1] ** -0.5
    if resolve_softmax_backend(backend, q_THE.device, q_THE.dtype) == "flash":
        cu_q = torch.tensor(cu_seqlens_q, dtype=torch.int32, device=q_THE.device)
        cu_k = torch.tensor(cu_seqlens_k, dtype=torch.int32, device=q_THE.device)
        max_q = max(b - a for a, b in zip(cu_seqlens_q, cu_seqlens_q[1:]))
        max_k = max(b - a for a, b in zip(cu_seqlens_k, cu_seqlens_k[1:]))
        return _flash_attn_varlen()(
            q_THE, k_SGE, v_SGF, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True
        )
    return _torch_varlen(q_THE, k_SGE, v_SGF, list(cu_seqlens_q), list(cu_seqlens_k), scale)


@functools.cache
def _triton_linear_attn():
    try:
        module = importlib.import_module("hetero_sp.ops.linear_attn.chunk")
    except ImportError:
        return None
    return getattr(module, "chunk_linear_attn", None)


def resolve_linear_backend(name: str, device: torch.device) -> str:
    if name not in values(LinearBackend):
        allowed = ", ".join(values(LinearBackend))
        raise UserError(f"linear-attention backend {name!r} is unknown; allowed: {allowed}")
    # Import the kernels only where they can run: importing decorates them, and a CPU process
    # that imported them without the interpreter could not use them later.
    runnable_here = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    triton_ok = runnable_here and _triton_linear_attn() is not None
    if name == "triton" and not triton_ok:
        raise UserError(
            "linear-attention backend 'triton' needs the Triton kernels and CUDA tensors "
            "(or TRITON_INTERPRET=1 on CPU, fp32 only); use parallel.linear_backend=torch or auto"
        )
    if name == "auto":
        return "triton" if triton_ok and device.type == "cuda" else "torch"
    return name


def local_linear_attention(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor | None,
    cu_seqlens: list[int] | tuple[int, ...],
    *,
    scale: float,
    initial_state_NHKV: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal linear attention with decay over rank-local documents; see ``hetero_sp.ops.linear_attn``."""
    if resolve_linear_backend(backend, q_THK.device) == "triton":
        op = _triton_linear_attn()
    else:
        op = torch_chunk_linear_attn
    return op(
        q_THK,
        k_THK,
        v_THV,
        g_TH,
        list(cu_seqlens),
        scale=scale,
        initial_state_NHKV=initial_state_NHKV,
        output_final_state=output_final_state,
    )
