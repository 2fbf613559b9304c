"""What a group of d GPUs costs for a packed stream of documents: time and memory per GPU.

A group of size d running documents of lengths s_i (one packed stream) takes

    time(d) = fixed(d) + sum_i (quad(d) * s_i**2 + per_token(d) * s_i)

- compute: every block's profiled ``a2 s^2 + a1 s`` divided by d (Ulysses splits heads, the
  all-gather K/V head-tail layout and linear attention split tokens evenly); where d does not
  divide the query heads, Ulysses' busiest rank holds ``ceil(H / d)`` of them, and the softmax
  layers' quadratic term is priced at that rank's share instead of 1 / d;
- communication per token: the softmax strategy's bytes from ``hetero_sp.core.traffic`` over
  the group's collective bandwidth, for every S layer;
- fixed(d): per-block launch overheads, collective latencies, and the linear-attention state
  exchange (LASP-2 all-gather or ZeCO chain), which does not depend on the stream length, plus
  the worst-case padding of the stream (d - 1 tokens). The exchange is priced for one document
  crossing the group (one state per link); under the head-tail layout every document cut on its
  own adds a state per rank (``sharding.LONG_WORK_SHARE`` keeps them few).

Memory per GPU = model states (ZeRO-stage aware) + activations of the rank's stream tokens
(stream / d) + the strategy's extras (all-gather K/V holds every S layer's gathered K and V of
the whole stream for the backward). Both are linear in the stream's tokens, so the MILP can use
them directly. Per group size the cheaper allowed strategy of each layer kind is chosen once:
their traffic is linear in tokens, so the ranking does not depend on which documents run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hetero_sp.config import ModelConfig
from hetero_sp.core.heads import busiest_heads, ulysses_supported
from hetero_sp.core.names import LinearSP, SoftmaxSP, values
from hetero_sp.core.traffic import allgather_kv_bytes, lasp2_bytes, ulysses_bytes, zeco_bytes
from hetero_sp.planner.cluster import Link, Topology
from hetero_sp.planner.errors import ClusterError, PlanError, ProfileError
from hetero_sp.planner.memory import (
    activation_bytes_per_token,
    count_params,
    model_state_bytes,
)
from hetero_sp.planner.profile import Profile

SOFTMAX_STRATEGIES = values(SoftmaxSP)
LINEAR_STRATEGIES = values(LinearSP)
GiB = 2**30
_REF_TOKENS = 1 << 20  # per-rank tokens at which per-token byte counts are taken (exact division)
_ULYSSES_CALLS = 4  # all-to-alls per S layer: q/k/v in and o out, forward and backward
_ZECO_BLOCKS = 4  # K blocks ZeCO pipelines the state in


def ulysses_allowed(model: ModelConfig, size: int) -> bool:
    """Ulysses shards query heads over the group: every rank needs at least one (an uneven
    split is allowed and priced at its busiest rank)."""
    return ulysses_supported(model.num_heads, model.num_kv_heads, size)


@dataclass(frozen=True)
class GroupCost:
    """Everything the planner needs to price a group of ``size`` GPUs."""

    size: int
    softmax_strategy: str
    linear_strategy: str
    fixed_s: float
    per_token_s: float
    per_token2_s: float
    mem_fixed_bytes: float
    mem_per_token_bytes: float
    max_tokens: int
    """Stream tokens the group can hold within the memory limit."""

    def seq_time(self, tokens: float) -> float:
        return self.per_token2_s * tokens * tokens + self.per_token_s * tokens

    def time(self, lengths: Sequence[int]) -> float:
        return self.fixed_s + sum(self.seq_time(s) for s in lengths)

    def memory(self, stream_tokens: int) -> float:
        return self.mem_fixed_bytes + self.mem_per_token_bytes * stream_tokens


def _dominates(a: GroupCost, b: GroupCost) -> bool:
    """``a`` is no slower in any term than ``b`` and holds at least as many tokens."""
    return (
        a.fixed_s <= b.fixed_s
        and a.per_token_s <= b.per_token_s
        and a.per_token2_s <= b.per_token2_s
        and a.max_tokens >= b.max_tokens
    )


class CostModel:
    """Prices groups for one model, profile, cluster and training setup."""

    def __init__(
        self,
        profile: Profile,
        topology: Topology,
        *,
        zero_stage: int = 1,
        softmax_strategies: Sequence[str] = SOFTMAX_STRATEGIES,
        linear_strategies: Sequence[str] = LINEAR_STRATEGIES,
        max_group_size: int | None = None,
        model: ModelConfig | None = None,
    ) -> None:
        self.profile, self.topology = profile, topology
        self.model = model or profile.model
        for key in ("dim", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size"):
            if getattr(self.model, key) != getattr(profile.model, key):
                raise ProfileError(
                    f"the profile {profile.label!r} was measured with model.{key}="
                    f"{getattr(profile.model, key)}, the model has {getattr(self.model, key)}; "
                    "re-run `hetero-sp profile` with this model"
                )
        for name, allowed, known in (
            ("softmax", softmax_strategies, SOFTMAX_STRATEGIES),
            ("linear", linear_strategies, LINEAR_STRATEGIES),
        ):
            bad = [s for s in allowed if s not in known]
            if bad or not allowed:
                raise ClusterError(f"{name} strategies {list(allowed)}: pick from {known}")
        if max_group_size is not None and max_group_size < 1:
            raise ClusterError(f"max_group_size must be >= 1, got {max_group_size}")
        self.zero_stage = zero_stage
        self.softmax_strategies = tuple(softmax_strategies)
        self.linear_strategies = tuple(linear_strategies)
        self.elem_bytes = profile.elem_bytes
        self.num_params = count_params(self.model)
        self.state_bytes = model_state_bytes(
            self.num_params, zero_stage, topology.num_gpus, profile.precision
        )
        self.act_bytes = profile.activation_bytes_per_token or activation_bytes_per_token(
            self.model, self.elem_bytes
        )
        self.memory_limit_bytes = topology.usable_memory_bytes
        if self.state_bytes >= self.memory_limit_bytes:
            raise ClusterError(
                f"model states alone need {self.state_bytes / GiB:.2f} GiB per GPU at ZeRO stage "
                f"{zero_stage}, more than the {self.memory_limit_bytes / GiB:.2f} GiB available; "
                "raise the ZeRO stage or use GPUs with more memory"
            )
        self.groups: dict[int, GroupCost] = {}
        """Per size, its default kind: the strategy pair fastest per token on a full group."""
        self.alternatives: dict[int, tuple[GroupCost, ...]] = {}
        """Per size, the other kinds worth a decision: pairs that hold more tokens or cost less
        in some term than the default (dominated pairs are left out)."""
        for d in topology.group_sizes(max_group_size):
            kinds = self._kinds(d)
            if kinds:
                self.groups[d] = kinds[0]
                self.alternatives[d] = tuple(kinds[1:])
        self.sizes = tuple(sorted(self.groups))

    def capacity(self, size: int) -> int:
        """Most stream tokens a group of ``size`` holds, over its kinds."""
        return max(k.max_tokens for k in (self.groups[size], *self.alternatives.get(size, ())))

    @property
    def kinds(self) -> tuple[GroupCost, ...]:
        """Every group kind (size and strategy pair) the planner may choose, sizes ascending,
        each size's default first. The MILP's group types and the assignment use these."""
        return tuple(k for d in self.sizes for k in (self.groups[d], *self.alternatives.get(d, ())))

    def every_kind(self, size: int) -> list[GroupCost]:
        """All kinds of ``size``, one per allowed strategy pair, dominated ones included (what an
        exhaustive search must try to show the pruning loses nothing)."""
        if size not in self.groups:
            return []
        if size == 1:
            return [self.groups[1]]
        return self._kinds(size, prune=False)

    def group_cost(self, size: int, softmax_strategy: str, linear_strategy: str) -> GroupCost:
        """The kind of ``size`` running this strategy pair (a group of one rank: its only kind),
        for pricing and memory checks of a plan's group."""
        candidates = (self.groups[size], *self.alternatives.get(size, ()))
        if size == 1 or not self._sp_layers():
            return candidates[0]
        for k in candidates:
            if (k.softmax_strategy, k.linear_strategy) == (softmax_strategy, linear_strategy):
                return k
        for k in self._kinds(size, prune=False):
            if (k.softmax_strategy, k.linear_strategy) == (softmax_strategy, linear_strategy):
                return k
        raise PlanError(
            f"groups of {size} cannot run softmax {softmax_strategy!r} with linear "
            f"{linear_strategy!r} here (allowed: {self.softmax_strategies} x "
            f"{self.linear_strategies}, Ulysses needs heads divisible by the group size)"
        )

    def _sp_layers(self) -> bool:
        return bool(self.model.layers)

    def link(self, kind: str, size: int) -> Link:
        """A collective's cost over ``size`` ranks: measured, else derived from the topology's
        links, else interpolated between the nearest measured sizes around it inside one node
        (latency and seconds per byte linear in the size; e.g. 3 from 2 and 4)."""
        measured = self.profile.collectives.get(kind, {})
        if size in measured:
            return measured[size]
        derived = self.topology.derived_link(kind, size)
        below = [d for d in measured if d < size]
        above = [d for d in measured if d > size]
        if derived is None and below and above and max(above) <= self.topology.node:
            lo, hi = max(below), min(above)
            w = (size - lo) / (hi - lo)
            a, b = measured[lo], measured[hi]
            per_byte = (1 - w) / a.bandwidth_Bps + w / b.bandwidth_Bps
            derived = Link(
                latency_s=(1 - w) * a.latency_s + w * b.latency_s, bandwidth_Bps=1.0 / per_byte
            )
        if derived is None:
            raise ProfileError(
                f"profile {self.profile.label!r} has no {kind} timing for groups of {size} ranks "
                f"(measured sizes: {sorted(measured) or 'none'}) and the topology has no links "
                f"to derive it from; re-run `hetero-sp profile` under torchrun with at least "
                f"{size} ranks, or cap groups below {size} ranks (planner.max_group_size)"
            )
        return derived

    def _softmax_options(self, d: int) -> list[tuple[str, float, float, float, float]]:
        """(strategy, seconds per stream token, latency per layer, extra bytes per token, the
        busiest rank's share of the attention's quadratic work)."""
        m, eb = self.model, self.elem_bytes
        out = []
        for name in self.softmax_strategies:
            if name == "ulysses":
                if not ulysses_allowed(m, d):
                    continue
                cb = ulysses_bytes(_REF_TOKENS, d, m.num_heads, m.num_kv_heads, m.head_dim, eb)
                link, calls, extra = self.link("all_to_all", d), _ULYSSES_CALLS, 0.0
                share = busiest_heads(m.num_heads, d) / m.num_heads
            else:
                cb = allgather_kv_bytes(_REF_TOKENS, d, m.num_kv_heads, m.head_dim, eb)
                link, calls = self.link("all_gather", d), 2
                extra = 2 * m.num_kv_heads * m.head_dim * eb * (d - 1) / d
                share = 1.0 / d
            per_token = (cb.fwd_send + cb.bwd_send) / (_REF_TOKENS * d) / link.bandwidth_Bps
            out.append((name, per_token, calls * link.latency_s, extra, share))
        return out

    def _linear_options(self, d: int) -> list[tuple[str, float]]:
        """(strategy, seconds per layer) of the state exchange, forward and backward."""
        m = self.model
        eb = max(self.elem_bytes, 4)  # states travel in fp32 whatever the model dtype
        out = []
        for name in self.linear_strategies:
            if name == "lasp2":
                cb = lasp2_bytes(d, m.num_heads, m.head_dim, m.head_dim, eb)
                out.append((name, 2 * self.link("all_gather", d).time(cb.fwd_send)))
            else:
                one = zeco_bytes(0, d, m.num_heads, m.head_dim, m.head_dim, eb).fwd_send
                hop = self.link("send_recv", d).time(one / _ZECO_BLOCKS)
                out.append((name, 2 * (_ZECO_BLOCKS + d - 2) * hop))
        return out

    def _kinds(self, d: int, prune: bool = True) -> list[GroupCost]:
        """The kinds of groups of ``d`` ranks: one per allowed (softmax, linear) pair, the
        fastest per token on a full group first; with ``prune``, pairs no better in any term
        (fixed, per-token and quadratic time, tokens held) than another are dropped. Empty when
        no allowed softmax strategy works at this size (the Ulysses head limit)."""
        fits, layers = self.profile.compute, self.model.layers
        num_s, num_l = layers.count("S"), layers.count("L")
        compute_per_token = (
            num_s * (fits["S"].a1 if num_s else 0)
            + num_l * (fits["L"].a1 if num_l else 0)
            + fits["head"].a1
        ) / d
        fixed = fits["head"].fixed + sum(fits[k].fixed for k in layers)
        # A group of one rank runs the plain path: the strategies it names are never used.
        if num_s and d > 1:
            sm = self._softmax_options(d)
            if not sm:
                return []
        else:
            sm = [(self.softmax_strategies[0], 0.0, 0.0, 0.0, 1.0 / d)]
        ln = self._linear_options(d) if num_l and d > 1 else [(self.linear_strategies[0], 0.0)]
        ranked = []
        for name, comm_per_token, latency, extra, share in sm:
            quad = num_s * fits["S"].a2 * share if num_s else 0.0
            per_token = compute_per_token + num_s * comm_per_token
            mem_token = self.act_bytes / d + num_s * extra
            pad = d - 1
            mem_fixed = self.state_bytes + mem_token * pad
            room = self.memory_limit_bytes - mem_fixed
            max_tokens = int(room // mem_token) if room > 0 else 0
            full = max(max_tokens, 1)
            for lin_name, lin_time in ln:
                total = (
                    fixed
                    + num_s * latency
                    + num_l * lin_time
                    + per_token * (full + pad)
                    + quad * pad * pad
                )
                kind = GroupCost(
                    size=d,
                    softmax_strategy=name,
                    linear_strategy=lin_name,
                    fixed_s=fixed + num_s * latency + num_l * lin_time + per_token * pad,
                    per_token_s=per_token,
                    per_token2_s=quad,
                    mem_fixed_bytes=mem_fixed,
                    mem_per_token_bytes=mem_token,
                    max_tokens=max_tokens,
                )
                ranked.append((total / full, len(ranked), kind))  # seconds per token, full
        ranked.sort(key=lambda r: (r[0], r[1]))
        kinds = [k for _, _, k in ranked]
        if not prune:
            return kinds
        kept: list[GroupCost] = []
        for k in kinds:
            if not any(_dominates(other, k) for other in kept):
                kept.append(k)
        return kept

    def check_lengths(self, lengths: Sequence[int]) -> None:
        """Raise ``ValueError`` for an empty batch, a non-positive length, or a sequence no
        allowed group can hold."""
        if len(lengths) == 0:
            raise PlanError("the batch is empty: a step needs at least one sequence")
        biggest = max(
            (k for k in self.kinds if k.size == self.sizes[-1]), key=lambda k: k.max_tokens
        )
        for i, s in enumerate(lengths):
            if int(s) != s or s < 1:
                raise PlanError(f"sequence {i} has length {s}; lengths must be integers >= 1")
            if s > biggest.max_tokens:
                need = biggest.memory(int(s))
                raise PlanError(
                    f"sequence {i} ({s} tokens) needs {need / GiB:.2f} GiB per GPU even on a "
                    f"group of {biggest.size} GPUs (activations {biggest.mem_per_token_bytes * s / GiB:.2f}"
                    f" GiB + model states {self.state_bytes / GiB:.2f} GiB), but "
                    f"{self.memory_limit_bytes / GiB:.2f} GiB are available per GPU; cut it "
                    "shorter, add GPUs, or use a higher ZeRO stage"
                )

    def min_size(self, tokens: int) -> int | None:
        """Smallest allowed group size that can hold a stream of ``tokens`` tokens."""
        return next((d for d in self.sizes if self.capacity(d) >= tokens), None)

    def sequence_bounds(self, lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per sequence: the fewest GPU-seconds any group size gives it (fixed costs left out,
        since a group shares them), and the least time it takes on its best group alone."""
        s = np.asarray(lengths, dtype=float)
        work = np.full(len(s), np.inf)
        single = np.full(len(s), np.inf)
        for g in self.kinds:
            t = np.where(s <= g.max_tokens, g.per_token2_s * s * s + g.per_token_s * s, np.inf)
            work = np.minimum(work, g.size * t)
            single = np.minimum(single, g.fixed_s + t)
        return work, single

    def exclusive_bounds(self, lengths: Sequence[int]) -> tuple[np.ndarray, float]:
        """Per sequence: where only a group of more than half the GPUs holds it, the least time
        its tokens take on such a group (fixed costs left out), else 0; and the least fixed
        cost of such a group. No two of these sequences can run at once on different groups,
        so whatever the split and the passes, a step takes at least the fixed cost plus the
        sum of their times."""
        s = np.asarray(lengths, dtype=float)
        half = self.topology.num_gpus // 2
        small = np.zeros(len(s), dtype=bool)
        alone = np.full(len(s), np.inf)
        fixed = np.inf
        for g in self.kinds:
            fits = s <= g.max_tokens
            if g.size <= half:
                small |= fits
                continue
            fixed = min(fixed, g.fixed_s)
            t = g.per_token2_s * s * s + g.per_token_s * s
            alone = np.minimum(alone, np.where(fits, t, np.inf))
        return np.where(small, 0.0, alone), float(fixed)

    def lower_bound(self, lengths: Sequence[int]) -> float:
        """The most of: the sum over sequences of the fewest GPU-seconds any group size gives
        them / GPUs; the longest time any one sequence needs on its best group; and the
        sequences only groups of more than half the GPUs hold, one after another
        (:meth:`exclusive_bounds`). No plan is faster."""
        work, single = self.sequence_bounds(lengths)
        alone, fixed = self.exclusive_bounds(lengths)
        serial = fixed + float(alone.sum()) if alone.any() else 0.0
        return float(max(work.sum() / self.topology.num_gpus, single.max(), serial))
