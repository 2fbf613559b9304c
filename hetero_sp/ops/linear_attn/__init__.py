"""Causal linear attention with per-head scalar decay on packed variable-length streams.

``naive``: token recurrence and quadratic references. ``torch_chunk``: the chunked torch backend.
``chunk``: the Triton kernels (``chunk_linear_attn``); not imported here, because importing it
decorates the kernels, and on CPU that must happen after ``TRITON_INTERPRET=1`` is set.
"""

from hetero_sp.ops.linear_attn.naive import naive_linear_attn, naive_recurrent_linear_attn
from hetero_sp.ops.linear_attn.torch_chunk import torch_chunk_linear_attn

__all__ = ["naive_linear_attn", "naive_recurrent_linear_attn", "torch_chunk_linear_attn"]
