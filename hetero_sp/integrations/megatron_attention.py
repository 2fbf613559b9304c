"""HeteroSP's attention as megatron-core modules, run over Megatron's context-parallel group.

Shape legend: s local sequence length, b micro-batch rows, t local tokens of a packed (THD)
batch, T = b s (or t) local tokens in stream order, D hidden size, H query heads of this
tensor-parallel rank, G key/value heads, E head dim, X any trailing shape.

- :class:`HeteroSoftmaxCoreAttention` is a ``core_attention`` of Megatron's ``SelfAttention``:
  Megatron projects q, k, v and applies RoPE (CP-aware) and hands this module the local shard;
  it runs softmax attention SP (``ulysses`` or ``allgather_kv``) over the CP group.
- :class:`HeteroLinearSelfAttention` replaces a whole ``self_attention``: the decay gate reads
  the hidden states, which a core attention never sees. It computes HeteroSP's ``L`` layer
  (``hetero_sp.model.attention.LinearAttention``: L2-normalised q and k, per-head decay gate,
  per-head RMSNorm of the output) with linear-attention SP (``lasp2`` or ``zeco``).

The local shard's documents come from :mod:`.megatron_layout`: with ``packed_seq_params`` in the
THD format, the padded documents of ``cu_seqlens_q_padded`` (``cu_seqlens_q`` when not padded);
otherwise each of the b rows is one document of length s CP. CP is the size of the micro-batch's
group (:func:`micro_batch_cp_group`): ``packed_seq_params.cp_group`` under Megatron's hybrid
context parallelism, else the layer's context-parallel group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from hetero_sp.core.errors import UserError
from hetero_sp.integrations.megatron_compat import group_of
from hetero_sp.integrations.megatron_layout import cp_packed_seqs
from hetero_sp.model.attention import linear_attention_inputs
from hetero_sp.model.layers import RMSNorm
from hetero_sp.parallel import linear_strategy, softmax_strategy
from hetero_sp.parallel.attention import linear_attention, softmax_attention
from hetero_sp.parallel.packed import PackedSeqs

CAUSAL_MASKS = (AttnMaskType.causal, AttnMaskType.padding_causal)


def _is_thd(packed_seq_params) -> bool:
    return packed_seq_params is not None and packed_seq_params.qkv_format == "thd"


def _doc_lengths(packed_seq_params) -> list[int]:
    """Global lengths of the THD batch's padded documents, read to the host once per micro-batch
    (kept on the params object: every layer asks, and each read syncs with the GPU)."""
    lengths = getattr(packed_seq_params, "_hetero_sp_doc_lengths", None)
    if lengths is None:
        cu = packed_seq_params.cu_seqlens_q_padded
        if cu is None:
            cu = packed_seq_params.cu_seqlens_q
        cu = [int(x) for x in cu.tolist()]
        lengths = [b - a for a, b in zip(cu, cu[1:])]
        packed_seq_params._hetero_sp_doc_lengths = lengths
    return lengths


def micro_batch_cp_group(packed_seq_params, layer_group):
    """The CP group a micro-batch runs over, as Transformer Engine's attention reads it:
    ``packed_seq_params.cp_group`` when set (Megatron's hybrid context parallelism gives every
    sub-sample its own group of the DP x CP ranks); no group (one rank) when only
    ``local_cp_size=1`` is set; otherwise the layer's own context-parallel group."""
    group = getattr(packed_seq_params, "cp_group", None)
    local_size = getattr(packed_seq_params, "local_cp_size", None)
    if group is None and local_size is None:
        return layer_group
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise UserError(
            "packed_seq_params.cp_group must be a torch.distributed ProcessGroup (Megatron's "
            f"hybrid context parallelism), got {type(group).__name__}"
        )
    if layer_group is not None and layer_group.size() > 1:
        # GPTModel falls back to the layer's group for RoPE when a sub-sample has none.
        raise UserError(
            "per-micro-batch CP groups (hybrid context parallelism) need "
            f"context_parallel_size=1, got {layer_group.size()}; the groups come from the "
            "data-parallel ranks (Megatron-LM: --context-parallel-size 1 --hybrid-context-parallel)"
        )
    size = 1 if group is None else group.size()
    if local_size is not None and int(local_size) != size:
        raise UserError(
            f"packed_seq_params.local_cp_size={int(local_size)} but its cp_group has {size} "
            "ranks; give the group of that many ranks (or none for local_cp_size=1)"
        )
    return group


def _shard_seqs(
    num_local: int, rows: int, packed_seq_params, cp_group, device, **strategies: str
) -> PackedSeqs:
    """This rank's documents: the THD batch's padded documents, or ``rows`` rows of equal length,
    over the micro-batch's CP group (:func:`micro_batch_cp_group`)."""
    cp_group = micro_batch_cp_group(packed_seq_params, cp_group)
    cp_size = 1 if cp_group is None else cp_group.size()
    if _is_thd(packed_seq_params):
        lengths = _doc_lengths(packed_seq_params)
        if sum(lengths) != num_local * cp_size:
            raise UserError(
                f"packed_seq_params describes {sum(lengths)} tokens but the {cp_size} CP ranks "
                f"hold {num_local * cp_size}; cu_seqlens_q(_padded) must be the global "
                "(unsharded) offsets of the padded documents"
            )
    else:
        lengths = [num_local // rows * cp_size] * rows
    return cp_packed_seqs(lengths, cp_group, device=device, **strategies)


def _to_tokens(x_sbX: torch.Tensor) -> torch.Tensor:
    """[s, b, ...] -> [b s, ...]: rows one after the other, the stream order of the layout."""
    return x_sbX.transpose(0, 1).reshape(-1, *x_sbX.shape[2:])


def _from_tokens(x_TX: torch.Tensor, rows: int) -> torch.Tensor:
    """[b s, X] -> [s, b, X]."""
    return x_TX.view(rows, -1, x_TX.shape[-1]).transpose(0, 1)


def _check_no_dropout(config, attention_dropout: float | None) -> None:
    p = config.attention_dropout if attention_dropout is None else attention_dropout
    if p:
        raise UserError(
            f"HeteroSP attention has no attention dropout; set attention_dropout=0 (got {p})"
        )


class HeteroSoftmaxCoreAttention(MegatronModule):
    """Causal softmax attention of the local CP shard by a HeteroSP SP strategy.

    Takes q [s, b, H, E], k and v [s, b, G, E] (or [t, ., E] for THD) and returns
    [s, b, H E] (or [t, H E]), as Megatron's core attentions do. Build it through
    ``hybrid_layer_specs``; ``strategy`` and ``backend`` come from the spec.
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        *,
        strategy: str = "ulysses",
        backend: str = "auto",
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            softmax_strategy(strategy)  # an unknown name fails here, not in the first step
        _check_no_dropout(config, attention_dropout)
        if attn_mask_type not in CAUSAL_MASKS:
            raise UserError(f"HeteroSP attention is causal; got attn_mask_type={attn_mask_type}")
        self.layer_number, self.attn_mask_type = layer_number, attn_mask_type
        self.strategy, self.backend = strategy, backend
        self.softmax_scale = softmax_scale
        self.cp_group = group_of(pg_collection, "cp")

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
        **_unused,
    ) -> torch.Tensor:
        # attention_mask is ignored as Transformer Engine ignores it for causal masks: documents
        # come from packed_seq_params (THD) or are the batch rows.
        if (attn_mask_type or self.attn_mask_type) not in CAUSAL_MASKS:
            raise UserError(f"HeteroSP attention is causal; got attn_mask_type={attn_mask_type}")
        if attention_bias is not None:
            raise UserError("HeteroSP attention takes no attention_bias")
        thd = _is_thd(packed_seq_params)
        rows = 1 if thd else query.shape[1]
        q_THE, k_TGE, v_TGE = (x if thd else _to_tokens(x) for x in (query, key, value))
        seqs = _shard_seqs(
            q_THE.shape[0],
            rows,
            packed_seq_params,
            self.cp_group,
            q_THE.device,
            softmax_strategy=self.strategy,
        )
        scale = self.softmax_scale or q_THE.shape[-1] ** -0.5
        o_THE = softmax_attention(q_THE, k_TGE, v_TGE, seqs, backend=self.backend, scale=scale)
        o_TX = o_THE.reshape(o_THE.shape[0], -1)
        return o_TX if thd else _from_tokens(o_TX, rows)


class HeteroLinearSelfAttention(MegatronModule):
    """HeteroSP's linear-attention mixer (the ``L`` layer) in place of Megatron's self-attention.

    ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` per head and document, q and k
    L2-normalised per head, ``g_t = logsigmoid(w_g x_t + b_g) / decay_normalizer`` (0 when
    ``decay`` is off), a per-head RMSNorm of o before the output projection. Takes hidden
    states [s, b, D] and returns (output [s, b, D], bias), as ``SelfAttention`` does. Tensor
    parallelism is not supported (the per-head norm's weight would need a TP reduction).
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType = AttnMaskType.causal,
        cp_comm_type: str | None = None,
        pg_collection=None,
        *,
        strategy: str = "lasp2",
        backend: str = "auto",
        decay: bool = True,
        decay_normalizer: float = 16.0,
        **_unused,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            linear_strategy(strategy)  # an unknown name fails here, not in the first step
        if group_of(pg_collection, "tp").size() != 1:
            raise UserError(
                "HeteroSP's linear-attention layer needs tensor_model_parallel_size=1; use "
                "context parallelism (and data parallelism) to scale it"
            )
        if decay_normalizer <= 0:
            raise UserError(f"decay_normalizer must be positive, got {decay_normalizer}")
        self.layer_number, self.strategy, self.backend = layer_number, strategy, backend
        self.decay_normalizer = decay_normalizer
        self.num_heads, self.head_dim = config.num_attention_heads, config.kv_channels
        self.cp_group = group_of(pg_collection, "cp")
        width = self.num_heads * self.head_dim
        column = dict(config=config, init_method=config.init_method, gather_output=False)
        self.linear_qkv = ColumnParallelLinear(config.hidden_size, 3 * width, bias=False, **column)
        self.linear_gate = (
            ColumnParallelLinear(config.hidden_size, self.num_heads, bias=True, **column)
            if decay
            else None
        )
        # Megatron's own modules are created where config says; the norm follows them.
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        self.o_norm = RMSNorm(self.head_dim, config.layernorm_epsilon).to(
            device=device, dtype=config.params_dtype
        )
        self.linear_proj = RowParallelLinear(
            width,
            config.hidden_size,
            config=config,
            init_method=config.output_layer_init_method,
            bias=config.add_bias_linear,
            input_is_parallel=True,
            skip_bias_add=True,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        inference_context=None,
        rotary_pos_emb=None,
        packed_seq_params=None,
        **_unused,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_value_states is not None or inference_context is not None:
            raise UserError("HeteroLinearSelfAttention supports self-attention training only")
        rows = hidden_states.shape[1]
        qkv_TX = _to_tokens(self.linear_qkv(hidden_states)[0])
        T = qkv_TX.shape[0]
        q_THE, k_THE, v_THE = qkv_TX.view(T, 3, self.num_heads, self.head_dim).unbind(1)
        gate_TH = None
        if self.linear_gate is not None:
            gate_TH = _to_tokens(self.linear_gate(hidden_states)[0])
        q_THE, k_THE, g_TH = linear_attention_inputs(q_THE, k_THE, gate_TH, self.decay_normalizer)
        seqs = _shard_seqs(
            T, rows, packed_seq_params, self.cp_group, q_THE.device, linear_strategy=self.strategy
        )
        scale = self.head_dim**-0.5
        o_THE = linear_attention(q_THE, k_THE, v_THE, g_TH, seqs, backend=self.backend, scale=scale)
        o_sbX = _from_tokens(self.o_norm(o_THE).reshape(T, -1), rows)
        return self.linear_proj(o_sbX)
