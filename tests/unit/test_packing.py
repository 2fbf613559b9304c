"""Packed documents never see each other: a packed batch gives the same outputs as running each
document alone, for both layer kinds, and changing one document leaves the others' outputs
untouched."""

import pytest
import torch

from hetero_sp.model import PackedSeqs
from hetero_sp.reference import pack_documents
from tests.common import random_docs, tiny_model

LENGTHS = [1, 63, 64, 65, 7, 130]


@pytest.mark.parametrize("layers", ["L", "S", "LS", "SLLS"])
@pytest.mark.parametrize("decay", [True, False], ids=["decay", "no-decay"])
def test_packed_equals_each_document_alone(layers, decay):
    model = tiny_model(layers, dtype=torch.float64, linear_decay=decay)
    docs = random_docs(LENGTHS)
    inputs, _, lengths = pack_documents(docs)
    packed = model(inputs, PackedSeqs.from_lengths(lengths))
    alone = torch.cat([model(d[:-1], PackedSeqs.from_lengths([len(d) - 1])) for d in docs])
    # fp64, same maths per document; only chunking of the stream differs.
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layers", ["L", "S"])
def test_changing_one_document_leaves_the_others_exact(layers):
    model = tiny_model(layers)
    docs = random_docs(LENGTHS)
    inputs, _, lengths = pack_documents(docs)
    seqs = PackedSeqs.from_lengths(lengths)
    base = model(inputs, seqs)
    changed = inputs.clone()
    start, end = sum(lengths[:3]), sum(lengths[:4])  # the 65-token document
    changed[start:end] = (changed[start:end] + 1) % 64
    out = model(changed, seqs)
    assert torch.equal(out[:start], base[:start])
    assert torch.equal(out[end:], base[end:])
    assert not torch.equal(out[start:end], base[start:end])


def test_token_count_must_match_cu_seqlens():
    model = tiny_model("LS")
    with pytest.raises(ValueError, match="cu_seqlens covers 5"):
        model(torch.zeros(6, dtype=torch.long), PackedSeqs.from_lengths([2, 3]))


def test_flash_backend_only_for_half_precision(monkeypatch):
    from hetero_sp.ops import backends

    cuda = torch.device("cuda")
    monkeypatch.setattr(backends, "_flash_attn_varlen", lambda: object())  # "installed"
    assert backends.resolve_softmax_backend("auto", cuda, torch.bfloat16) == "flash"
    assert backends.resolve_softmax_backend("auto", cuda, torch.float32) == "torch"
    assert backends.resolve_softmax_backend("flash", cuda, torch.float16) == "flash"
    with pytest.raises(ValueError, match="'flash' takes fp16 or bf16 tensors, got torch.float32"):
        backends.resolve_softmax_backend("flash", cuda, torch.float32)
    monkeypatch.setattr(backends, "_flash_attn_varlen", lambda: None)  # not installed
    assert backends.resolve_softmax_backend("auto", cuda, torch.bfloat16) == "torch"
    with pytest.raises(ValueError, match="needs flash-attn installed"):
        backends.resolve_softmax_backend("flash", cuda, torch.bfloat16)
