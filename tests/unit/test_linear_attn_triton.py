"""The Triton chunked linear attention against the naive reference: outputs, final states and
every gradient (q, k, v, g, initial state, with a cotangent on the final state), on packed
documents crossing chunk boundaries, with every kernel output poisoned with NaN beforehand.

On CPU the kernels run in Triton's interpreter (``tests/conftest.py`` sets TRITON_INTERPRET=1
before any kernel module is imported); on a CUDA machine the same tests run on the GPU.

Tolerance: the kernels compute in fp32 (fp32 inputs; ``tl.dot`` with ieee precision on GPU),
the reference in fp64. Over chunks of 64 tokens and up to 65 chained chunk states the observed
error is at most ~2e-6 of each tensor's largest entry, so every tensor is checked at 2e-5 of
its scale (``assert_rel_close``); an indexing or masking error is O(1) of the scale.
"""

import pytest
import torch
import torch.nn.functional as F

from hetero_sp.config import ModelConfig
from hetero_sp.model import HybridLM, PackedSeqs
from hetero_sp.ops.backends import local_linear_attention, resolve_linear_backend
from hetero_sp.ops.common.triton_utils import POISON_ENV, is_interpreter
from hetero_sp.ops.linear_attn.chunk import chunk_linear_attn
from hetero_sp.ops.linear_attn.naive import naive_linear_attn
from hetero_sp.reference import pack_documents
from tests.common import assert_rel_close, random_docs, tiny_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not is_interpreter():
    pytest.skip(
        "Triton kernels need CUDA or TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU "
        "unless the environment overrides it)",
        allow_module_level=True,
    )
RTOL = 2e-5


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setenv(POISON_ENV, "1")


def _inputs(lengths, heads=2, dk=32, dv=16, decay=True, seed=0, decay_shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q = torch.randn(T, heads, dk, generator=gen, dtype=torch.float64)
    k = torch.randn(T, heads, dk, generator=gen, dtype=torch.float64)
    v = torch.randn(T, heads, dv, generator=gen, dtype=torch.float64)
    g = None
    if decay:
        g = F.logsigmoid(torch.randn(T, heads, generator=gen, dtype=torch.float64) - decay_shift)
    s0 = torch.randn(len(lengths), heads, dk, dv, generator=gen, dtype=torch.float64)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return q, k, v, g, s0, cu


def _run(fn, q, k, v, g, s0, cu, dtype, device, use_output=True):
    """Forward, then backward of <o, do> + <final, dfinal> with fixed random cotangents."""
    named = {"q": q, "k": k, "v": v, "s0": s0} | ({} if g is None else {"g": g})
    leaves = {n: t.to(device, dtype, copy=True).requires_grad_() for n, t in named.items()}
    o, final = fn(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("g"), cu, None, leaves["s0"], True
    )
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(device, dtype)
    dfinal = torch.randn(final.shape, generator=gen, dtype=torch.float64).to(device, dtype)
    loss = (final * dfinal).sum()
    if use_output:
        loss = loss + (o * do).sum()
    loss.backward()
    # A leaf that the loss does not reach (q when only the final state is used) has no grad in
    # the reference and a zero one from the kernels.
    grads = {
        n: torch.zeros(t.shape, dtype=torch.float64) if t.grad is None else t.grad.cpu().double()
        for n, t in leaves.items()
    }
    return o.detach().cpu().double(), final.detach().cpu().double(), grads


def _check_against_naive(args, use_output=True, rtol_dg=RTOL):
    o, f, grads = _run(chunk_linear_attn, *args, torch.float32, DEVICE, use_output)
    o_ref, f_ref, grads_ref = _run(naive_linear_attn, *args, torch.float64, "cpu", use_output)
    assert_rel_close(o, o_ref, RTOL, "o")
    assert_rel_close(f, f_ref, RTOL, "final state")
    assert set(grads) == set(grads_ref)
    for name in grads_ref:
        rtol = rtol_dg if name == "g" else RTOL
        assert_rel_close(grads[name], grads_ref[name], rtol, f"d{name}")


LENGTH_CASES = {
    "T1": [1],
    "T63": [63],
    "T64": [64],
    "T65": [65],
    "T500": [500],
    "packed-crossing-chunks": [1, 63, 64, 65, 3, 130, 174],
    "empty-docs": [0, 5, 0, 70, 0, 1, 0],
}


@pytest.mark.parametrize("decay", [True, False], ids=["decay", "no-decay"])
@pytest.mark.parametrize("case", list(LENGTH_CASES))
def test_matches_naive(case, decay):
    _check_against_naive(_inputs(LENGTH_CASES[case], decay=decay))


@pytest.mark.slow
@pytest.mark.parametrize("decay", [True, False], ids=["decay", "no-decay"])
def test_matches_naive_T4097(decay):
    _check_against_naive(_inputs([4097], heads=1, dk=16, dv=16, decay=decay))


def test_head_dims_not_multiple_of_tile():
    # 20 and 40 span several 16-wide tiles with a ragged last one: exercises the K/V masks.
    _check_against_naive(_inputs([3, 70, 0, 129], dk=20, dv=40))


def test_strong_decay():
    # g ~ -6 per token: the in-chunk cumulative decay reaches ~-400, where exp(-g) overflows
    # fp32; padding rows of a partial chunk must never enter a product with it.
    # dg = reverse cumsum of q.dq - k.dk, terms far larger than their difference when the decay
    # is this strong: in fp32 the torch backend's autograd is off by 1.6e-5 of dg's scale here
    # and the kernels by 2.7e-5, so dg is checked at 1e-4 (still far below an O(1) error).
    _check_against_naive(_inputs([70, 1, 100], dk=16, decay_shift=6.0), rtol_dg=1e-4)


def test_gradient_through_final_state_only():
    _check_against_naive(_inputs([100, 30], dk=16), use_output=False)


def test_without_initial_or_final_state():
    q, k, v, g, _, cu = _inputs([10, 0, 90])
    dev = [t.to(DEVICE, torch.float32) for t in (q, k, v, g)]
    o, final = chunk_linear_attn(*dev, cu)
    assert final is None
    o_ref, _ = naive_linear_attn(q, k, v, g, cu)
    assert_rel_close(o.cpu().double(), o_ref, RTOL, "o")


def test_bad_inputs_are_rejected():
    q, k, v, g, s0, cu = (
        t.to(DEVICE, torch.float32) if isinstance(t, torch.Tensor) else t for t in _inputs([10])
    )
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        chunk_linear_attn(q, k, v, g, [0, 5])
    with pytest.raises(ValueError, match="v must be"):
        chunk_linear_attn(q, k, v[:5], g, cu)
    with pytest.raises(ValueError, match="g must be"):
        chunk_linear_attn(q, k, v, g[:, :1], cu)
    with pytest.raises(ValueError, match="initial state must be"):
        chunk_linear_attn(q, k, v, g, cu, initial_state_NHKV=s0[:, :1])
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="only fp32"):
            chunk_linear_attn(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, cu)


def test_backend_resolution():
    dev = torch.device(DEVICE)
    assert resolve_linear_backend("triton", dev) == "triton"
    # auto picks the kernels only on CUDA: the interpreter is for tests.
    assert resolve_linear_backend("auto", dev) == ("triton" if DEVICE == "cuda" else "torch")
    q, k, v, g, s0, cu = (
        t.to(DEVICE, torch.float32) if isinstance(t, torch.Tensor) else t for t in _inputs([40, 30])
    )
    out = {
        b: local_linear_attention(
            q, k, v, g, cu, scale=0.3, initial_state_NHKV=s0, output_final_state=True, backend=b
        )
        for b in ("torch", "triton")
    }
    # Two fp32 implementations, different summation orders.
    assert_rel_close(out["triton"][0], out["torch"][0], RTOL, "o")
    assert_rel_close(out["triton"][1], out["torch"][1], RTOL, "final state")


@pytest.mark.parametrize("decay", [True, False], ids=["decay", "no-decay"])
def test_llll_model_matches_torch_backend(decay):
    cfg: ModelConfig = tiny_config("LLLL", linear_decay=decay)
    docs = random_docs([1, 70, 0, 60, 3])
    inputs, labels, lengths = pack_documents(docs)
    seqs = PackedSeqs.from_lengths(lengths, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = HybridLM(cfg, linear_backend=backend, softmax_backend="torch").to(DEVICE)
        logits = model(inputs.to(DEVICE), seqs)
        F.cross_entropy(logits, labels.to(DEVICE)).backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters()}
        results[backend] = (logits.detach().cpu(), grads)
    logits, grads = results["triton"]
    logits_ref, grads_ref = results["torch"]
    # Same fp32 model, two attention implementations: rounding differences only. Parameter
    # gradients pass back through four layers and their norms: on an H200 embed.weight came
    # out at 2.0e-5 of its scale (1e-6 on CPU), so they are checked at 1e-4.
    assert_rel_close(logits, logits_ref, RTOL, "logits")
    assert set(grads) == set(grads_ref)
    for name, ref in grads_ref.items():
        assert_rel_close(grads[name], ref, 1e-4, name)
