"""What differs between megatron-core releases, and what it takes to run megatron-core on CPU.

Releases: 0.16 is the last megatron-core for Python 3.11; 0.17+ declare Python >= 3.12. The
calls this plug-in makes (``get_gpt_layer_local_spec``, ``SelfAttentionSubmodules``, the
core-attention constructor and forward, ``ColumnParallelLinear``/``RowParallelLinear``,
``get_transformer_layer_offset``/``get_num_layers_to_build``, ``PackedSeqParams``, the RNG
tracker globals) have the same form in 0.16.1 and 0.19.2, both checked. One differs:
``get_batch_on_this_cp_rank`` has a required ``is_hybrid_cp`` argument in 0.19.2 (not in 0.16.1)
(:func:`megatron_cp_shard`). Any difference found later belongs in this file.

CPU: megatron-core assumes CUDA in three places a CPU forward/backward reaches (checked on
0.16.1 and 0.19.2): ``RotaryEmbedding.get_emb`` moves its table to
``torch.cuda.current_device()``; with context parallelism on [s, b] batches,
``get_pos_emb_on_this_cp_rank`` builds its index in pinned memory and moves it with
``.cuda()``; and Megatron's own ``DotProductAttention`` forks the CUDA RNG tracker for
attention dropout (HeteroSP's attention has no dropout and never forks). Hybrid context
parallelism (checked on 0.16.1) adds more: ``forward_backward_no_pipelining`` and
``hybrid_context_parallel_forward_backward`` create tensors with ``device="cuda"``,
``HybridCPDataLoaderWrapper`` moves its lengths and samples with ``.cuda()``, and
``get_batch_on_this_hybrid_cp_rank`` builds ``cu_seqlens`` with ``device="cuda",
pin_memory=True``. :func:`cpu_compat` covers all of them for the duration of a ``with`` block;
nothing is patched at import time.

Hybrid context parallelism and RoPE (0.16.1): for ``[s, b]`` sub-samples ``GPTModel`` slices the
rotary table by ``packed_seq_params.cp_group``, which is right; for packed THD batches
``SelfAttention`` applies RoPE with its own ``pg_collection.cp``, not the micro-batch's group.
:func:`rope_over_micro_batch_group` gives the attention modules the micro-batch's group for one
forward.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import inspect
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

from hetero_sp.core.errors import UserError

try:
    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings import rotary_pos_embedding
    from megatron.core.tensor_parallel import random as megatron_random
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
    from megatron.core.utils import get_batch_on_this_cp_rank
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "hetero_sp.integrations.megatron needs megatron-core; install it with "
        "pip install 'hetero-sp[megatron]'"
    ) from error

MIN_VERSION = (0, 16)


def megatron_core_version() -> tuple[int, ...]:
    """The installed megatron-core release as a tuple of ints (pre-release tags dropped)."""
    text = importlib.metadata.version("megatron-core")
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


if megatron_core_version()[:2] < MIN_VERSION:
    raise ImportError(
        f"hetero_sp.integrations.megatron needs megatron-core >= 0.16, found "
        f"{importlib.metadata.version('megatron-core')}; pip install 'hetero-sp[megatron]'"
    )


def group_of(pg_collection, name: str):
    """Process group ``name`` ('cp', 'tp') of a layer: from its ``ProcessGroupCollection`` when
    Megatron passed one, else from ``parallel_state``'s globals (what Megatron itself falls back
    to)."""
    group = getattr(pg_collection, name, None) if pg_collection is not None else None
    if group is not None:
        return group
    if name == "cp":
        return parallel_state.get_context_parallel_group()
    if name == "tp":
        return parallel_state.get_tensor_model_parallel_group()
    raise ValueError(f"unknown process group {name!r}; allowed: cp, tp")


def local_layer_range(config, vp_stage: int | None = None) -> range:
    """Indices (0-based, whole model) of the decoder layers this pipeline stage builds."""
    if getattr(config, "pipeline_model_parallel_layout", None) is not None:
        raise UserError(
            "hybrid_block_spec does not support pipeline_model_parallel_layout; split layers "
            "evenly over pipeline stages (or by num_layers_in_first/last_pipeline_stage)"
        )
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    return range(offset, offset + get_num_layers_to_build(config, vp_stage=vp_stage))


def megatron_cp_shard(batch: dict, cp_group) -> dict:
    """Megatron's own CP sharding of a ``[b, s]`` batch dict (``get_batch_on_this_cp_rank``),
    whichever release is installed."""
    if "is_hybrid_cp" in inspect.signature(get_batch_on_this_cp_rank).parameters:
        return get_batch_on_this_cp_rank(batch, False, cp_group=cp_group)
    return get_batch_on_this_cp_rank(batch, cp_group=cp_group)


class CPURNGTracker:
    """Megatron's RNG-state tracker for the CPU generator: ``fork(name)`` runs its block on the
    named CPU RNG stream and restores the default stream after (what
    ``CudaRNGStatesTracker.fork`` does with the CUDA generator)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def is_initialized(self) -> bool:
        return bool(self.states_)

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_ or name in self.states_:
            raise ValueError(f"RNG state {name!r} or seed {seed} is already tracked")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise ValueError(f"RNG state {name!r} is not tracked; known: {sorted(self.states_)}")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _pos_emb_on_this_cp_rank(pos_emb: torch.Tensor, seq_dim: int, cp_group) -> torch.Tensor:
    """Megatron's ``get_pos_emb_on_this_cp_rank`` with the index on the table's device: chunks
    r and 2 CP - 1 - r of the 2 CP chunks along ``seq_dim`` (the rotary table is
    [positions, 1, 1, rotary dim])."""
    cp_size, cp_rank = cp_group.size(), cp_group.rank()
    index = torch.tensor([cp_rank, 2 * cp_size - 1 - cp_rank], device=pos_emb.device)
    shape = pos_emb.shape
    chunks = pos_emb.view(*shape[:seq_dim], 2 * cp_size, -1, *shape[seq_dim + 1 :])
    mine = chunks.index_select(seq_dim, index)
    return mine.view(*shape[:seq_dim], -1, *shape[seq_dim + 1 :])


@contextlib.contextmanager
def cpu_compat(seed: int = 1234) -> Iterator[CPURNGTracker]:
    """Run megatron-core models on a machine without CUDA inside this block.

    - ``torch.cuda.current_device()`` returns the CPU device, so Megatron's "move to the current
      GPU" calls keep tensors on the CPU;
    - the rotary embedding's per-CP-rank slice indexes on the CPU;
    - Megatron's RNG tracker is a :class:`CPURNGTracker` with the model-, data- and
      expert-parallel streams seeded from ``seed`` (as ``model_parallel_cuda_manual_seed`` does
      on GPUs, with the TP rank of an initialised model-parallel state);
    - tensors created with ``device="cuda"`` or ``pin_memory=True``, or moved with ``.cuda()``,
      stay on the CPU (:class:`CUDAOnCPU`, on this thread: hybrid context parallelism's
      schedule, data wrapper and batch function).

    All are restored on exit. The patch of ``torch.cuda.current_device`` is process-wide while
    the block runs: use it for CPU tests and debugging, never on a GPU machine. Build the model
    with ``TransformerConfig(use_cpu_initialization=True, ...)`` and the fusions off
    (``bias_dropout_fusion``, ``masked_softmax_fusion``, ``apply_rope_fusion``,
    ``gradient_accumulation_fusion`` all False).
    """
    if torch.cuda.is_available():
        raise RuntimeError("cpu_compat is for machines without CUDA; on GPUs run Megatron as is")
    tp_rank = (
        parallel_state.get_tensor_model_parallel_rank()
        if parallel_state.model_parallel_is_initialized()
        else 0
    )
    tracker = CPURNGTracker()
    # The offsets model_parallel_cuda_manual_seed uses, so streams differ the same way.
    tracker.add("model-parallel-rng", seed + 2718 + tp_rank)
    tracker.add("data-parallel-rng", seed)
    tracker.add("expert-parallel-rng", seed + 1024 + tp_rank)
    patches = [
        (torch.cuda, "current_device", lambda: torch.device("cpu")),
        (rotary_pos_embedding, "get_pos_emb_on_this_cp_rank", _pos_emb_on_this_cp_rank),
        (megatron_random, "_CUDA_RNG_STATE_TRACKER", tracker),
        (megatron_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", True),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        with CUDAOnCPU():
            yield tracker
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class CUDAOnCPU(TorchFunctionMode):
    """Keeps on the CPU the tensors megatron-core creates or moves onto CUDA: ``device="cuda"``
    becomes the CPU, ``pin_memory=True`` is dropped, ``Tensor.cuda()`` and
    ``Tensor.pin_memory()`` return the tensor. A torch function mode: active on the thread that
    entered it, for as long as it is entered."""

    _MOVES = (torch.Tensor.cuda, torch.Tensor.pin_memory)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._MOVES:
            return args[0]
        if _is_cuda(kwargs.get("device")) or kwargs.get("pin_memory"):
            kwargs = dict(kwargs)
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
            kwargs.pop("pin_memory", None)
        return func(*args, **kwargs)


@contextlib.contextmanager
def rope_over_micro_batch_group(model: torch.nn.Module, packed_seq_params) -> Iterator[None]:
    """For one forward of ``model``: its attention modules apply RoPE to a packed THD batch over
    the micro-batch's CP group (``packed_seq_params.cp_group``) instead of their own.

    megatron-core 0.16.1's ``SelfAttention`` shards a THD batch's rotary positions by its
    ``pg_collection.cp``; under hybrid context parallelism the batch is sharded over the
    micro-batch's group. Every module with a ``pg_collection`` and a ``core_attention`` gets a
    copy of its collection with ``cp`` replaced, restored on exit. The backward does not read
    it; recomputing attention in the backward (activation recompute) would, so do not combine the
    two. Nothing changes for ``[s, b]`` batches (``GPTModel`` already slices their table by the
    micro-batch's group) or when the batch names no group.
    """
    group = getattr(packed_seq_params, "cp_group", None)
    if group is None or getattr(packed_seq_params, "qkv_format", None) != "thd":
        yield
        return
    saved = []
    for module in model.modules():
        if hasattr(module, "core_attention") and getattr(module, "pg_collection", None) is not None:
            swapped = copy.copy(module.pg_collection)
            swapped.cp = group
            saved.append((module, module.pg_collection))
            module.pg_collection = swapped
    try:
        yield
    finally:
        for module, collection in saved:
            module.pg_collection = collection
