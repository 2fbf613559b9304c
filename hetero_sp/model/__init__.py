"""The hybrid linear/softmax attention decoder and its packed-sequence metadata."""

from hetero_sp.model.transformer import HybridLM
from hetero_sp.parallel.packed import PackedSeqs

__all__ = ["HybridLM", "PackedSeqs"]
