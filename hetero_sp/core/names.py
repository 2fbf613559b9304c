"""Every name a config, a plan or a call may use to pick a strategy, backend or mode: defined
once here. The enums are ``StrEnum`` so their members compare equal to the plain strings that
TOML files, JSON plans and keyword arguments carry; :func:`values` gives the allowed strings
that config validation and error messages list."""

from __future__ import annotations

from enum import StrEnum

AUTO = "auto"
"""Let the cost model (strategies) or the device (backends) decide."""


class SoftmaxSP(StrEnum):
    """How softmax (S) layers run across an SP group."""

    ULYSSES = "ulysses"
    """All-to-all from token shards to head shards and back."""
    ALLGATHER_KV = "allgather_kv"
    """All-gather of K and V over the head-tail (zigzag) layout."""


class LinearSP(StrEnum):
    """How linear-attention (L) layers run across an SP group."""

    LASP2 = "lasp2"
    """One all-gather of every rank's state summary."""
    ZECO = "zeco"
    """ZeCO All-Scan: the state passed rank to rank."""


class Layout(StrEnum):
    """How a group's packed stream is cut into rank shards."""

    CONTIGUOUS = "contiguous"
    ZIGZAG = "zigzag"


SOFTMAX_LAYOUT: dict[SoftmaxSP, Layout] = {
    SoftmaxSP.ULYSSES: Layout.CONTIGUOUS,
    SoftmaxSP.ALLGATHER_KV: Layout.ZIGZAG,
}
"""The layout each softmax strategy wants: Ulysses attends over whole documents on every rank,
so it needs no balancing and the contiguous layout saves two reorderings per call; all-gather
K/V balances causal work with the head-tail (zigzag) layout."""


class SoftmaxBackend(StrEnum):
    """The single-rank kernel of softmax attention."""

    AUTO = AUTO
    FLASH = "flash"
    TORCH = "torch"


class LinearBackend(StrEnum):
    """The single-rank kernel of linear attention (and of the SP merge steps)."""

    AUTO = AUTO
    TORCH = "torch"
    TRITON = "triton"


class SPMode(StrEnum):
    """How each step's sequences are given SP groups (``parallel.sp_mode``)."""

    HETERO = "hetero"
    """The planner's MILP over mixed group sizes, every step."""
    HOMOGENEOUS = "homogeneous"
    """Per step, the one group size the cost model predicts fastest."""
    STATIC = "static"
    """Every sequence on groups of ``parallel.sp_degree`` ranks."""
    DP = "dp"
    """Groups of one rank (plain data parallelism)."""


class GroupShapes(StrEnum):
    """Which blocks of ranks an SP group may be (``planner.group_shapes``)."""

    ANY = "any"
    """Any number of consecutive ranks inside one node, or whole nodes above the node size."""
    POWER_OF_TWO = "power_of_two"
    """Aligned blocks of 1, 2, 4, ... ranks (and the whole world), as Megatron's CP builds."""


class Solver(StrEnum):
    """The MILP solver (``planner.solver``)."""

    AUTO = AUTO
    """HiGHS when highspy is installed, else CBC."""
    HIGHS = "highs"
    CBC = "cbc"


class AheadWorker(StrEnum):
    """Where rank 0 solves the next step's plan (``planner.ahead_worker``)."""

    THREAD = "thread"
    PROCESS = "process"


class Sampler(StrEnum):
    """How a step's batch is drawn (``data.sampler``)."""

    MIXED = "mixed"
    DD = "dd"
    CONCAT_CHUNK = "concat_chunk"


def values(kind: type[StrEnum], *, auto: bool = False) -> tuple[str, ...]:
    """The allowed strings of an enum, ``auto`` first when it is allowed too."""
    names = tuple(m.value for m in kind)
    if auto and AUTO not in names:
        return (AUTO, *names)
    return names
