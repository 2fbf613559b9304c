"""The model-FLOP formula behind MFU, checked against torch's FLOP counter on the model, and the
peak FLOP/s MFU divides by (train.peak_tflops, else datasheet, else measured)."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from hetero_sp.config import load_config
from hetero_sp.core.flops import (
    _per_token_linear_flops,
    configured_peak_flops,
    forward_flops,
    measure_matmul_flops,
    training_flops,
)
from hetero_sp.model import PackedSeqs
from tests.common import tiny_config, tiny_model


def _matmul_flops_of_forward(model, length):
    tokens = torch.randint(0, 64, (length,))
    counter = FlopCounterMode(display=False)
    with counter:
        model(tokens, PackedSeqs.from_lengths([length]))
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "mm" in str(op) and "attention" not in str(op))


def test_projection_flops_match_torch_counter_for_softmax_model():
    cfg = tiny_config("SS")
    model = tiny_model("SS")
    length = 37
    # Everything but the attention core is dense matmuls that torch counts exactly.
    expected = length * _per_token_linear_flops(cfg)
    assert _matmul_flops_of_forward(model, length) == expected


def test_softmax_core_is_quadratic_and_per_document():
    cfg = tiny_config("S")
    per_token = _per_token_linear_flops(cfg)
    core = forward_flops(cfg, [100]) - 100 * per_token
    assert core == 2.0 * cfg.num_heads * cfg.head_dim * 100 * 101
    # Two documents of 50 cost a quarter-ish of one of 100 in the quadratic part.
    core_split = forward_flops(cfg, [50, 50]) - 100 * per_token
    assert core_split == 2 * 2.0 * cfg.num_heads * cfg.head_dim * 50 * 51
    assert training_flops(cfg, [100]) == 3 * forward_flops(cfg, [100])


def test_linear_layers_cost_linear_in_length():
    cfg = tiny_config("LL")
    assert forward_flops(cfg, [2000]) == 2 * forward_flops(cfg, [1000])


def test_linear_layer_projection_flops_match_torch_counter():
    cfg = tiny_config("LL")
    model = tiny_model("LL")
    length = 37
    tokens = torch.randint(0, 64, (length,))
    counter = FlopCounterMode(display=False)
    with counter:
        model(tokens, PackedSeqs.from_lengths([length]))
    counts = counter.get_flop_counts()["Global"]
    # nn.Linear runs as mm/addmm; the chunked core runs as bmm (einsum) and is not model FLOPs.
    dense = sum(v for op, v in counts.items() if str(op) in ("aten.mm", "aten.addmm"))
    H, E = cfg.num_heads, cfg.head_dim
    core_per_token = 2.0 * H * (2 * E) * (64 + 1) / 2 + 4.0 * H * E * E
    assert dense == length * (_per_token_linear_flops(cfg) - 2 * core_per_token)


def test_configured_peak_overrides_datasheet_and_measurement():
    cpu = torch.device("cpu")
    cfg = load_config(None, ["train.peak_tflops=250"])  # an integer in TOML is taken as a float
    assert cfg.train.peak_tflops == 250.0
    assert configured_peak_flops(cpu, "bf16", cfg.train.peak_tflops) == 250e12
    # 0 (the default): no datasheet value for a CPU, so the trainer measures.
    assert configured_peak_flops(cpu, "fp32", load_config(None, []).train.peak_tflops) is None


def test_measured_peak_in_the_training_precision():
    for dtype in (torch.float32, torch.bfloat16):
        flops = measure_matmul_flops(torch.device("cpu"), dtype, n=128, repeats=2)
        assert flops > 0, dtype
