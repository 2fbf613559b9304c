"""The hybrid linear/softmax attention decoder and its packed-sequence metadata."""

from hetero_sp.model.packed import PackedSeqs
from hetero_sp.model.transformer import HybridLM

__all__ = ["HybridLM", "PackedSeqs"]
