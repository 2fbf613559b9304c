"""The estimated profile of a 7B-class hybrid model on 8xH100 nodes (no H100 was measured).

Every number is derived here from public peak figures and stated efficiency assumptions, and
cross-checked against FlexSP's measured A100 profile (arXiv 2412.01523: GPT-7B on A100-40GB,
a2 = 5.1e-6 ms/token^2 and a1 = 0.18 ms/token for the whole model, all-to-all ~120 GB/s inside
a node and 5-10 GB/s across nodes). ``configs/profiles/h100x8-estimate.json`` is
``h100_estimate()`` written out; a test keeps the two equal. Replace it with a measured
profile (``hetero-sp profile`` under torchrun on the cluster) before trusting absolute times.
"""

from __future__ import annotations

from hetero_sp.config import ModelConfig
from hetero_sp.planner.cluster import Link
from hetero_sp.planner.profile import ComputeFit, Profile

H100_BF16_DENSE_FLOPS = 989e12  # SXM5 datasheet, dense bf16 tensor-core peak
MATMUL_EFFICIENCY = 0.5  # assumed model-FLOPs utilisation of the projection/FFN matmuls
ATTENTION_FLOPS = 450e12  # assumed FlashAttention-3 fwd+bwd bf16 throughput on H100
LINEAR_ATTN_OVERHEAD = 1.1  # chunked linear-attention kernels on top of the L block matmuls
NVLINK_BPS = 450e9  # NVLink 4: 450 GB/s per direction per GPU (datasheet)
NVLINK_EFFICIENCY = 2 / 3  # assumed NCCL all-to-all / all-gather share of the NVLink peak
IB_BPS = 50e9  # one ConnectX-7 NDR 400 Gb/s NIC per GPU = 50 GB/s per direction
IB_EFFICIENCY = 0.5  # assumed: all-to-all across many nodes reaches half the line rate
BLOCK_FIXED_S = 1e-4  # assumed kernel-launch and small-op overhead per block, forward+backward

MODEL = ModelConfig(
    vocab_size=32000,
    dim=4096,
    layers="LLLS" * 8,
    num_heads=32,
    num_kv_heads=8,
    ffn_dim=14336,
)


def _matmul_params(kind: str, m: ModelConfig) -> int:
    ffn = 3 * m.dim * m.ffn_dim
    if kind == "S":
        return ffn + m.dim * (2 * m.num_heads + 2 * m.num_kv_heads) * m.head_dim
    if kind == "L":
        return ffn + m.dim * (4 * m.num_heads * m.head_dim + m.num_heads)
    return m.vocab_size * m.dim  # the output head


def h100_estimate() -> Profile:
    m = MODEL
    matmul = MATMUL_EFFICIENCY * H100_BF16_DENSE_FLOPS
    a1 = {kind: 6 * _matmul_params(kind, m) / matmul for kind in ("S", "L", "head")}
    a1["L"] *= LINEAR_ATTN_OVERHEAD
    # causal attention: 2 s^2 H E flops forward (QK^T and PV, halved by the mask), backward 2.5x
    a2 = 3.5 * 2 * m.num_heads * m.head_dim / ATTENTION_FLOPS
    compute = {
        "S": ComputeFit(a2=a2, a1=a1["S"], fixed=BLOCK_FIXED_S),
        "L": ComputeFit(a2=0.0, a1=a1["L"], fixed=BLOCK_FIXED_S),
        "head": ComputeFit(a2=0.0, a1=a1["head"], fixed=BLOCK_FIXED_S),
    }
    intra = Link(latency_s=15e-6, bandwidth_Bps=NVLINK_BPS * NVLINK_EFFICIENCY)
    inter = Link(latency_s=30e-6, bandwidth_Bps=IB_BPS * IB_EFFICIENCY)
    flexsp_a1_layer = 0.18e-3 / 32 / 3  # FlexSP a1 per layer, A100 -> H100 at ~3x
    flexsp_a2_layer = 5.1e-9 / 32 / 3.2  # FlexSP a2 per layer, FA2 on A100 -> FA3 on H100
    notes = {
        "source": "ESTIMATE, not measured: derived from H100 SXM5 datasheet peaks and the "
        "assumed efficiencies below (hetero_sp/planner/estimate.py)",
        "model": "7B-class hybrid: dim 4096, 32 layers LLLS x 8, 32 query / 8 KV heads, "
        "SwiGLU 14336, vocab 32000",
        "compute.a1": f"6 x matmul parameters per token / ({MATMUL_EFFICIENCY:.0%} of "
        f"{H100_BF16_DENSE_FLOPS / 1e12:.0f} TFLOP/s bf16); L blocks x{LINEAR_ATTN_OVERHEAD} for "
        f"the chunked kernels. Cross-check: FlexSP's A100 a1 scaled 3x gives "
        f"{flexsp_a1_layer:.2e} s/token per layer vs {a1['S']:.2e} here",
        "compute.S.a2": f"3.5 x 2 x heads x head_dim flops per token^2 at "
        f"{ATTENTION_FLOPS / 1e12:.0f} TFLOP/s (FlashAttention-3). Cross-check: FlexSP's A100 "
        f"a2 scaled 3.2x gives {flexsp_a2_layer:.2e} s/token^2 per layer vs {a2:.2e} here",
        "compute.fixed": f"assumed {BLOCK_FIXED_S * 1e3:.1f} ms of launch overhead per block",
        "intra_node": f"NVLink 4 {NVLINK_BPS / 1e9:.0f} GB/s per direction x "
        f"{NVLINK_EFFICIENCY:.2f} assumed NCCL efficiency; 15 us latency assumed",
        "inter_node": f"one 400 Gb/s NDR NIC per GPU ({IB_BPS / 1e9:.0f} GB/s) x "
        f"{IB_EFFICIENCY} assumed for many-node all-to-all (FlexSP measured 5-10 GB/s on its "
        "A100 cluster); 30 us latency assumed",
        "memory": "80 GiB HBM3 per H100 SXM5; activation bytes per token from the formula in "
        "hetero_sp/planner/memory.py (no activation checkpointing)",
    }
    return Profile(
        label="h100x8-estimate: 7B-class LLLS hybrid, bf16, 8xH100 SXM5 nodes, NDR InfiniBand",
        source="estimate",
        precision="bf16",
        model=m,
        compute=compute,
        gpus_per_node=8,
        intra_node=intra,
        inter_node=inter,
        gpu_memory_bytes=80 * 2**30,
        notes=notes,
    )
