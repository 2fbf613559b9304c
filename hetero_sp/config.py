"""Training configuration: validated, frozen dataclass sections loaded from TOML.

A config file has one TOML table per section (``[model]``, ``[parallel]``, ...). Any key can be
overridden on the command line as ``section.key=value`` (the value is parsed as TOML, and taken
as a plain string when it is not valid TOML, so ``model.layers=LLSS`` works unquoted).
Every bad value raises :class:`ConfigError` (a ``UserError``) naming the key and what is
allowed; the allowed names come from :mod:`hetero_sp.core.names`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetero_sp.core.errors import UserError
from hetero_sp.core.names import (
    AheadWorker,
    GroupShapes,
    LinearBackend,
    LinearSP,
    Sampler,
    SoftmaxBackend,
    SoftmaxSP,
    Solver,
    SPMode,
    values,
)

SAMPLERS = values(Sampler)


class ConfigError(UserError):
    """A configuration value that cannot be used; the message names the key and the fix."""


def _require(ok: bool, section: str, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{key}: {what}")


def _choice(value: str, allowed: tuple[str, ...], section: str, key: str) -> None:
    _require(value in allowed, section, key, f"got {value!r}; allowed values: {', '.join(allowed)}")


@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    """The hybrid decoder."""

    vocab_size: int = 258
    """Vocabulary size; 258 = 256 byte values + <bos> + <eos> for the byte tokenizer."""
    dim: int = 128
    """Hidden size of the residual stream."""
    layers: str = "LLLS"
    """Layer pattern, one letter per layer: L = linear attention with decay, S = softmax attention."""
    num_heads: int = 4
    """Query heads of every attention layer (linear and softmax)."""
    num_kv_heads: int = 2
    """Key/value heads of softmax layers (grouped-query attention); must divide num_heads."""
    ffn_dim: int = 384
    """Inner size of the SwiGLU feed-forward block."""
    rope_theta: float = 10000.0
    """RoPE base of softmax layers."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    linear_decay: bool = True
    """Per-head, per-token decay gate in L layers; false gives plain linear attention (g = 0)."""
    decay_normalizer: float = 16.0
    """Divides logsigmoid(gate): larger values give slower decay (longer memory)."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of weight matrices."""

    def __post_init__(self) -> None:
        s = "model"
        for key in ("vocab_size", "dim", "num_heads", "num_kv_heads", "ffn_dim"):
            _require(getattr(self, key) > 0, s, key, f"must be positive, got {getattr(self, key)}")
        _require(len(self.layers) > 0, s, "layers", "needs at least one layer letter (L or S)")
        bad = sorted(set(self.layers) - {"L", "S"})
        _require(
            not bad,
            s,
            "layers",
            f"{self.layers!r} has {bad}; each letter must be L (linear attention) or S (softmax)",
        )
        _require(
            self.dim % self.num_heads == 0,
            s,
            "num_heads",
            f"must divide dim={self.dim}, got {self.num_heads}",
        )
        _require(
            self.num_heads % self.num_kv_heads == 0,
            s,
            "num_kv_heads",
            f"must divide num_heads={self.num_heads}, got {self.num_kv_heads}",
        )
        _require(self.rope_theta > 0, s, "rope_theta", "must be positive")
        _require(self.norm_eps > 0, s, "norm_eps", "must be positive")
        _require(self.decay_normalizer > 0, s, "decay_normalizer", "must be positive")
        _require(self.init_std > 0, s, "init_std", "must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(kw_only=True, frozen=True)
class ParallelConfig:
    """How sequences are spread over ranks and which kernels run attention."""

    sp_mode: str = "hetero"
    """hetero: the planner's mixed group sizes per batch; homogeneous: the best single group size
    per batch; static: sp_degree for every sequence (DeepSpeed-Ulysses style); dp: static with
    sp_degree 1 (every rank trains whole sequences)."""
    sp_degree: int = 1
    """Group size of the static mode (any size planner.group_shapes allows)."""
    softmax_sp: str = "auto"
    """S layers across a group: ulysses, allgather_kv, or auto (the cost model picks per group)."""
    linear_sp: str = "auto"
    """L layers across a group: lasp2, zeco, or auto (the cost model picks per group)."""
    node_size: int = 0
    """Ranks per machine (groups up to this size stay inside one machine); 0: torchrun's
    LOCAL_WORLD_SIZE."""
    linear_backend: str = "auto"
    """Linear-attention kernels: auto (triton on CUDA, torch otherwise), torch or triton."""
    softmax_backend: str = "auto"
    """Softmax attention: auto (flash-attn varlen when importable on CUDA, else torch), flash, torch."""
    max_process_groups: int = 64
    """SP process groups kept between steps (made on a plan's first use of them; the least
    recently used leave first; a step needing more keeps them all for that step)."""

    def __post_init__(self) -> None:
        s = "parallel"
        _require(self.max_process_groups >= 1, s, "max_process_groups", "must be >= 1")
        _choice(self.sp_mode, values(SPMode), s, "sp_mode")
        _require(self.sp_degree >= 1, s, "sp_degree", f"must be >= 1, got {self.sp_degree}")
        _require(
            self.sp_mode == "static" or self.sp_degree == 1,
            s,
            "sp_degree",
            f"is only used with parallel.sp_mode=static (sp_mode is {self.sp_mode!r})",
        )
        _choice(self.softmax_sp, values(SoftmaxSP, auto=True), s, "softmax_sp")
        _choice(self.linear_sp, values(LinearSP, auto=True), s, "linear_sp")
        _require(
            self.node_size >= 0, s, "node_size", "must be >= 0 (0: torchrun's LOCAL_WORLD_SIZE)"
        )
        _choice(self.linear_backend, values(LinearBackend), "parallel", "linear_backend")
        _choice(self.softmax_backend, values(SoftmaxBackend), "parallel", "softmax_backend")


@dataclass(kw_only=True, frozen=True)
class DataConfig:
    """Where training tokens come from and how a step's batch is drawn."""

    dataset: str = "embedded"
    """embedded (the Python standard library's sources, prepared on first use) or a `hetero-sp prepare` folder."""
    tokenizer: str = "byte"
    """byte, or the path of a Hugging Face tokenizer.json; must be the one the dataset was prepared with."""
    sampler: str = "mixed"
    """Batches: mixed (many lengths per step), dd (one power-of-two length per step) or concat_chunk (baseline)."""
    tokens_per_step: int = 8192
    """Tokens in one global batch (all ranks together); constant across steps."""
    max_seq_len: int = 2048
    """Longest sequence: the largest bucket (dd), document piece (mixed) or the fixed length (concat_chunk)."""
    min_seq_len: int = 64
    """Shortest dataset-decomposition bucket (dd, and mixed with mixed_source = chunks); a power of two."""
    mixed_source: str = "documents"
    """What mixed fills a step with: documents (cut at max_seq_len) or chunks (of every bucket)."""
    curriculum: str = "uniform"
    """dd bucket odds: uniform (the data's length mix), grow_p2 (short first: odds 2^(max-i)) or odds."""
    curriculum_cycles: int = 1
    """dd: times the curriculum restarts within one epoch (the paper's Grow-P2 uses 8)."""
    curriculum_odds: tuple[float, ...] = ()
    """dd with curriculum = odds: one positive odds value per bucket, shortest bucket first."""
    seed: int = 1234
    """Seed of the batch sampler; with the step it fixes every batch."""

    def __post_init__(self) -> None:
        s = "data"
        _require(self.dataset != "", s, "dataset", "give embedded or a prepared dataset folder")
        _require(
            self.tokenizer == "byte" or self.tokenizer.endswith(".json"),
            s,
            "tokenizer",
            f"got {self.tokenizer!r}; use byte or the path of a tokenizer.json",
        )
        _choice(self.sampler, SAMPLERS, s, "sampler")
        _choice(self.mixed_source, ("documents", "chunks"), s, "mixed_source")
        _choice(self.curriculum, ("uniform", "grow_p2", "odds"), s, "curriculum")
        _require(self.tokens_per_step > 0, s, "tokens_per_step", "must be positive")
        _require(self.max_seq_len > 0, s, "max_seq_len", "must be positive")
        _require(self.seed >= 0, s, "seed", f"must be >= 0, got {self.seed}")
        _require(self.curriculum_cycles >= 1, s, "curriculum_cycles", "must be >= 1")
        buckets = self.sampler == "dd" or (
            self.sampler == "mixed" and self.mixed_source == "chunks"
        )
        if buckets:
            for key in ("min_seq_len", "max_seq_len"):
                v = getattr(self, key)
                _require(
                    v > 0 and v & (v - 1) == 0,
                    s,
                    key,
                    f"the {self.sampler} sampler's buckets need a power of two, got {v}",
                )
            _require(
                self.min_seq_len <= self.max_seq_len,
                s,
                "min_seq_len",
                f"must not exceed max_seq_len={self.max_seq_len}, got {self.min_seq_len}",
            )
        if self.sampler in ("dd", "concat_chunk"):
            _require(
                self.tokens_per_step % self.max_seq_len == 0,
                s,
                "tokens_per_step",
                f"{self.sampler} needs a multiple of max_seq_len={self.max_seq_len}, "
                f"got {self.tokens_per_step}",
            )
        else:
            _require(
                self.tokens_per_step >= self.max_seq_len,
                s,
                "tokens_per_step",
                f"must be >= max_seq_len={self.max_seq_len}, got {self.tokens_per_step}",
            )
        if self.sampler != "dd":
            _require(
                self.curriculum == "uniform",
                s,
                "curriculum",
                "only the dd sampler has a curriculum; set data.sampler=dd or data.curriculum=uniform",
            )
            _require(
                self.curriculum_cycles == 1,
                s,
                "curriculum_cycles",
                "only the dd sampler has curriculum cycles; set data.sampler=dd or leave it at 1",
            )
        if self.curriculum == "odds":
            num = self.max_seq_len.bit_length() - self.min_seq_len.bit_length() + 1
            _require(
                len(self.curriculum_odds) == num and all(o > 0 for o in self.curriculum_odds),
                s,
                "curriculum_odds",
                f"needs {num} positive values (buckets {self.min_seq_len}..{self.max_seq_len}, "
                f"shortest first), got {list(self.curriculum_odds)}",
            )
        else:
            _require(
                not self.curriculum_odds,
                s,
                "curriculum_odds",
                "is only used with data.curriculum=odds; remove it or set the curriculum",
            )


@dataclass(kw_only=True, frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 3e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 10
    """Steps of linear warm-up from 0 to lr."""
    weight_decay: float = 0.1
    """Decoupled weight decay of matrices (norms and biases get none)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""

    def __post_init__(self) -> None:
        s = "optim"
        _require(self.lr > 0, s, "lr", "must be positive")
        _require(0 <= self.min_lr <= self.lr, s, "min_lr", "must be in [0, lr]")
        _require(self.warmup_steps >= 0, s, "warmup_steps", "must be >= 0")
        _require(self.weight_decay >= 0, s, "weight_decay", "must be >= 0")
        _require(0 <= self.beta1 < 1, s, "beta1", "must be in [0, 1)")
        _require(0 <= self.beta2 < 1, s, "beta2", "must be in [0, 1)")
        _require(self.eps > 0, s, "eps", "must be positive")
        _require(self.grad_clip >= 0, s, "grad_clip", "must be >= 0 (0 disables clipping)")


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """The run: length, precision, ZeRO stage, outputs."""

    steps: int = 100
    """Optimizer steps to train."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3."""
    precision: str = "fp32"
    """fp32 or bf16 (bf16 mixed precision with fp32 master weights)."""
    activation_checkpointing: bool = False
    """Keep only each block's input and recompute its activations in the backward: far less
    memory for long sequences, about a third more compute."""
    seed: int = 0
    """Seed of the model initialisation."""
    out_dir: str = "runs/cpu-tiny"
    """Run folder (not empty): metrics.jsonl, tensorboard events, checkpoints."""
    log_every: int = 1
    """Write metrics every this many steps."""
    ckpt_every: int = 50
    """Checkpoint every this many steps; 0 disables checkpoints (a final one is still written)."""
    keep_checkpoints: int = 2
    """Newest checkpoints to keep on disk."""
    resume: bool = True
    """Continue from the newest good checkpoint in out_dir when there is one (an error when
    every checkpoint there is broken); false: start over, moving an earlier run's files into
    out_dir/earlier_run_N."""
    ckpt_on_signal: bool = True
    """On SIGINT (Ctrl-C) or SIGTERM (SLURM's notice before a kill) every rank stops after the
    step it is in; true saves that step's checkpoint first, so the same command resumes there
    (a save cut short by the kill leaves the older checkpoints as they were); false stops
    without one, losing the steps since the last checkpoint."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0."""
    dist_timeout_s: int = 600
    """Seconds a collective may wait before the run fails (gloo/NCCL timeout)."""
    peak_tflops: float = 0.0
    """Peak dense TFLOP/s of one rank's device in train.precision, the denominator of
    throughput/mfu; 0: the datasheet value of a known GPU (H100, H200, A100, L40S), else a timed
    matrix product."""

    def __post_init__(self) -> None:
        s = "train"
        _require(self.steps > 0, s, "steps", "must be positive")
        _choice(str(self.zero_stage), ("0", "1", "2", "3"), s, "zero_stage")
        _choice(self.precision, ("fp32", "bf16"), s, "precision")
        _require(
            self.out_dir.strip() != "",
            s,
            "out_dir",
            "must name the run folder, e.g. train.out_dir=runs/my-run (an empty value would "
            "write into the current directory)",
        )
        _require(self.log_every > 0, s, "log_every", "must be positive")
        _require(self.ckpt_every >= 0, s, "ckpt_every", "must be >= 0")
        _require(self.keep_checkpoints > 0, s, "keep_checkpoints", "must be positive")
        _require(self.dist_timeout_s > 0, s, "dist_timeout_s", "must be positive")
        _require(
            self.peak_tflops >= 0,
            s,
            "peak_tflops",
            f"must be >= 0 (0: datasheet or measured), got {self.peak_tflops}",
        )


BUCKET_CAP_FACTOR = 4
"""With ``planner.max_bucket_error`` > 0, a micro-batch gets at most this many times
``planner.num_buckets`` buckets."""


@dataclass(kw_only=True, frozen=True)
class PlannerConfig:
    """The per-step planner: cost profile, memory, time budget, MILP shape and solver. The
    planner takes this section as it is (``Planner(cost, cfg.planner)``)."""

    profile: str = "configs/profiles/cpu-gloo.json"
    """Cost profile written by `hetero-sp profile` (a profile of another model size is rescaled by
    FLOPs, with a warning)."""
    memory_gb: float = 0.0
    """Memory per rank in GiB that plans are sized for (they fill at most 90% of it); 0: the
    profile's device memory."""
    time_limit_s: float = 0.5
    """Wall-clock planning time of one step, shared by its micro-batches: MILP rounds are capped
    to end by it and local search stops at it; the best plan found by then is used. Bucketing,
    the homogeneous fall-back and the assignment of each micro-batch always run."""
    min_time_limit_s: float = 0.05
    """Least time of one MILP round (capped at time_limit_s): a round starts only while this much
    of the step's time is left, and the step's first round always gets it."""
    num_buckets: int = 16
    """Length buckets of the MILP (dynamic-programming bucketing)."""
    max_bucket_error: float = 0.05
    """Add buckets (up to 4x num_buckets) until rounding every length up to its bucket's longest
    adds at most this fraction of the tokens; 0: exactly num_buckets. At 0.05, batches of
    512-1024 long-tailed lengths on 64-256 GPUs got 16-36 buckets and plans from 1.6% faster to
    0.3% slower than with 16 buckets (5-15% error), in the same time budget."""
    rel_gap: float = 0.005
    """Relative MILP gap at which the solver stops early."""
    split_search: bool = True
    """With planning time left after the token-balanced micro-batch split, also plan the splits
    whose lower bound can beat it (quadratic cost and memory decide, not tokens) and keep the
    fastest plan; false: the token-balanced split only."""
    passes: bool = True
    """Let a group run its share of a micro-batch as several passes (each a packed stream that
    fits memory, gradients accumulated), so memory bounds a pass, not the group's share; used
    with ZeRO stages 0 and 1 only, whose backward does not communicate (stages 2 and 3 reduce
    or gather in every pass, so every rank would wait for the group with the most)."""
    explicit_slots: int = 8
    """Group sizes with at most this many possible groups get one MILP slot per group."""
    improve_rounds: int = 300
    """Local-search moves after assignment (each move lowers the busiest group)."""
    solver: str = "auto"
    """MILP solver: auto (HiGHS when highspy is installed, else CBC), highs or cbc."""
    threads: int = 1
    """Solver threads (1 keeps the CPU free for the training step it overlaps)."""
    max_group_size: int = 0
    """Largest SP group a plan may use (0: as large as the world and the profile allow)."""
    group_shapes: str = "any"
    """Which blocks of ranks a group may be: any (any size inside a node, whole nodes above it)
    or power_of_two (aligned blocks of 1, 2, 4, ... ranks, as Megatron's CP builds)."""
    run_ahead: bool = True
    """Solve step i+1's plan on a background thread while step i trains."""
    ahead_worker: str = "thread"
    """Where rank 0 solves: thread, or process (a spawned process the thread waits on, which
    keeps the solver's Python off the training loop's interpreter lock)."""

    def __post_init__(self) -> None:
        s = "planner"
        _require(self.profile != "", s, "profile", "give the path of a profile JSON file")
        _require(self.memory_gb >= 0, s, "memory_gb", "must be >= 0 (0: the profile's memory)")
        _require(self.time_limit_s > 0, s, "time_limit_s", "must be positive")
        _require(self.min_time_limit_s > 0, s, "min_time_limit_s", "must be positive")
        _require(self.num_buckets >= 1, s, "num_buckets", "must be >= 1")
        _require(
            0 <= self.max_bucket_error < 1, s, "max_bucket_error", "must be in [0, 1) (0: off)"
        )
        _require(0 <= self.rel_gap < 1, s, "rel_gap", f"must be in [0, 1), got {self.rel_gap}")
        _require(self.explicit_slots >= 0, s, "explicit_slots", "must be >= 0")
        _require(self.improve_rounds >= 0, s, "improve_rounds", "must be >= 0")
        _choice(self.solver, values(Solver), s, "solver")
        _require(self.threads >= 1, s, "threads", "must be >= 1")
        _require(self.max_group_size >= 0, s, "max_group_size", "must be >= 0 (0: no cap)")
        _choice(self.group_shapes, values(GroupShapes), s, "group_shapes")
        _choice(self.ahead_worker, values(AheadWorker), s, "ahead_worker")

    @property
    def round_floor_s(self) -> float:
        """Least time of one MILP round: ``min_time_limit_s``, at most the step's whole budget."""
        return min(self.min_time_limit_s, self.time_limit_s)

    @property
    def bucket_cap(self) -> int:
        """Most buckets a micro-batch may get."""
        factor = BUCKET_CAP_FACTOR if self.max_bucket_error else 1
        return factor * self.num_buckets


@dataclass(kw_only=True, frozen=True)
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}
SECTIONS = {name: globals()[typ] if isinstance(typ, str) else typ for name, typ in SECTIONS.items()}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def _coerce(section: str, key: str, value: Any, typ: Any) -> Any:
    """Check a TOML value against a field type; ints are accepted where floats are expected."""
    where = f"{section}.{key}"
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    origin = typing.get_origin(typ)
    if origin is tuple:
        (item_type, _) = typing.get_args(typ)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(section, key, v, item_type) for v in value)
    raise ConfigError(f"{where}: unsupported field type {typ}")


def _build_section(name: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(
                f"{name}.{key}: unknown key; allowed keys in [{name}]: {', '.join(allowed)}"
            )
        kwargs[key] = _coerce(name, key, value, hints[key])
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); the value is parsed as TOML if it can be."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: write it as section.key=value, e.g. model.dim=256")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def config_from_dict(raw: dict[str, Any]) -> Config:
    sections = {}
    for name, table in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"[{name}]: unknown section; allowed sections: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}]: expected a table of keys, got {table!r}")
        sections[name] = _build_section(name, table)
    return Config(**sections)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML file (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)
