"""The profile file: measured (or estimated) costs of one model on one kind of machine.

A profile holds, for the model it was made with:

- ``compute``: fitted forward + backward time of one block of each layer kind on one GPU over
  a single document of ``s`` tokens, ``a2 * s**2 + a1 * s + fixed`` seconds (``a2`` is 0 for
  linear-attention blocks; key ``head`` is the embedding, final norm, output head and loss);
- ``collectives``: per collective kind and group size, ``latency_s + bytes / bandwidth_Bps``;
- ``links``: the node size and the intra-/inter-node links that price group sizes the profile
  did not measure (optional; without them such sizes are refused);
- memory: the GPU's memory and, optionally, measured activation bytes per token.

Every number may carry a note saying where it comes from (``notes``); an ``estimate`` profile
must. Written by ``hetero-sp profile`` (:mod:`hetero_sp.profiling.profiler`), read by
:class:`hetero_sp.planner.cost.CostModel`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetero_sp.config import ModelConfig
from hetero_sp.planner.cluster import COLLECTIVES, Link, Topology
from hetero_sp.planner.errors import ProfileError

FORMAT = "hetero-sp-profile/1"
LAYER_KINDS = ("S", "L", "head")
PRECISIONS = {"fp32": 4, "bf16": 2}


@dataclass(kw_only=True, frozen=True)
class ComputeFit:
    """``a2 * s**2 + a1 * s + fixed`` seconds for a document of s tokens, forward + backward."""

    a2: float
    a1: float
    fixed: float
    max_rel_err: float | None = None
    """Largest |fit - measured| / measured over the samples; None for estimates."""
    samples: tuple[tuple[int, float], ...] = ()
    """(tokens, seconds) pairs the fit was made from."""

    def __post_init__(self) -> None:
        for key in ("a2", "a1", "fixed"):
            if not getattr(self, key) >= 0:
                raise ProfileError(
                    f"compute coefficient {key} must be >= 0, got {getattr(self, key)}"
                )

    def time(self, tokens: float) -> float:
        return self.a2 * tokens * tokens + self.a1 * tokens + self.fixed


@dataclass(kw_only=True, frozen=True)
class Profile:
    label: str
    """What was profiled, on which machine."""
    source: str
    """measured (by ``hetero-sp profile``) or estimate (see notes)."""
    precision: str
    """fp32 or bf16: element size on the wire and of activations."""
    model: ModelConfig
    """The model the compute costs were measured with."""
    compute: dict[str, ComputeFit]
    """Per layer kind: S, L and head."""
    collectives: dict[str, dict[int, Link]] = field(default_factory=dict)
    """Per collective kind, per measured group size."""
    collective_fit_err: dict[str, dict[int, float]] = field(default_factory=dict)
    """Largest relative error of each collective fit."""
    gpus_per_node: int = 1
    intra_node: Link | None = None
    inter_node: Link | None = None
    gpu_memory_bytes: float = 80e9
    activation_bytes_per_token: float | None = None
    """Measured activation memory per local token; None uses the formula in memory.py."""
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in ("measured", "estimate"):
            raise ProfileError(
                f"profile source must be 'measured' or 'estimate', got {self.source!r}"
            )
        if self.precision not in PRECISIONS:
            raise ProfileError(f"profile precision must be one of {list(PRECISIONS)}")
        missing = [k for k in ("head", *sorted(set(self.model.layers))) if k not in self.compute]
        if missing:
            raise ProfileError(
                f"profile {self.label!r} has no compute fit for layer kinds {missing}; "
                "re-run `hetero-sp profile` with a model that has them"
            )
        unknown = sorted(set(self.collectives) - set(COLLECTIVES))
        if unknown:
            raise ProfileError(f"profile has unknown collectives {unknown}; allowed: {COLLECTIVES}")
        if self.source == "estimate" and not self.notes:
            raise ProfileError("an estimate profile must say where its numbers come from (notes)")

    @property
    def elem_bytes(self) -> int:
        return PRECISIONS[self.precision]

    def topology(self, num_gpus: int, **overrides: Any) -> Topology:
        """The cluster of ``num_gpus`` such machines, with this profile's links and memory."""
        values: dict[str, Any] = dict(
            num_gpus=num_gpus,
            gpus_per_node=min(self.gpus_per_node, num_gpus),
            gpu_memory_bytes=self.gpu_memory_bytes,
            intra_node=self.intra_node,
            inter_node=self.inter_node,
        )
        values.update(overrides)
        return Topology(**values)

    def to_dict(self) -> dict[str, Any]:
        def link(x: Link | None) -> dict[str, float] | None:
            return None if x is None else dataclasses.asdict(x)

        return {
            "format": FORMAT,
            "label": self.label,
            "source": self.source,
            "precision": self.precision,
            "model": dataclasses.asdict(self.model),
            "compute": {k: dataclasses.asdict(v) for k, v in self.compute.items()},
            "collectives": {
                kind: {str(d): link(x) for d, x in sorted(by_size.items())}
                for kind, by_size in self.collectives.items()
            },
            "collective_fit_err": {
                kind: {str(d): e for d, e in sorted(errs.items())}
                for kind, errs in self.collective_fit_err.items()
            },
            "gpus_per_node": self.gpus_per_node,
            "intra_node": link(self.intra_node),
            "inter_node": link(self.inter_node),
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "activation_bytes_per_token": self.activation_bytes_per_token,
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Profile:
        if raw.get("format") != FORMAT:
            raise ProfileError(
                f"not a profile file: format is {raw.get('format')!r}, want {FORMAT!r}"
            )
        try:
            link = lambda x: None if x is None else Link(**x)  # noqa: E731
            return cls(
                label=raw["label"],
                source=raw["source"],
                precision=raw["precision"],
                model=ModelConfig(**raw["model"]),
                compute={
                    k: ComputeFit(**{**v, "samples": tuple(tuple(s) for s in v.get("samples", ()))})
                    for k, v in raw["compute"].items()
                },
                collectives={
                    kind: {int(d): link(x) for d, x in by_size.items()}
                    for kind, by_size in raw.get("collectives", {}).items()
                },
                collective_fit_err={
                    kind: {int(d): float(e) for d, e in errs.items()}
                    for kind, errs in raw.get("collective_fit_err", {}).items()
                },
                gpus_per_node=int(raw.get("gpus_per_node", 1)),
                intra_node=link(raw.get("intra_node")),
                inter_node=link(raw.get("inter_node")),
                gpu_memory_bytes=float(raw["gpu_memory_bytes"]),
                activation_bytes_per_token=raw.get("activation_bytes_per_token"),
                notes=dict(raw.get("notes", {})),
            )
        except (KeyError, TypeError) as err:
            raise ProfileError(f"profile file is missing or has a bad field: {err}") from err


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise ProfileError(
            f"profile file {str(path)!r} does not exist; make one with `hetero-sp profile`"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ProfileError(f"profile file {str(path)!r} is not valid JSON: {err}") from err
    return Profile.from_dict(raw)


def save_profile(profile: Profile, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    tmp.replace(path)


def rescale_profile(profile: Profile, model: ModelConfig) -> Profile:
    """The profile's compute costs carried over to another model size by FLOP ratios.

    Each block kind's per-token term scales with its forward FLOPs per token, the softmax
    quadratic term with heads x head dim; fixed overheads, collectives, links and memory stay.
    The result is an estimate (and says so): re-run ``hetero-sp profile`` with the model for
    plans whose absolute times can be trusted.
    """
    from hetero_sp.core.flops import block_flops_per_token

    missing = [k for k in ("head", *sorted(set(model.layers))) if k not in profile.compute]
    if missing:
        raise ProfileError(
            f"profile {profile.label!r} has no compute fit for layer kinds {missing}, so it "
            "cannot be carried over to this model; run `hetero-sp profile` with it"
        )
    old, compute = profile.model, {}
    for kind, fit in profile.compute.items():
        if kind not in (*LAYER_KINDS,):
            continue
        ratio = block_flops_per_token(model, kind) / block_flops_per_token(old, kind)
        a2 = fit.a2 * (model.num_heads * model.head_dim) / (old.num_heads * old.head_dim)
        compute[kind] = ComputeFit(
            a2=a2 if kind == "S" else 0.0, a1=fit.a1 * ratio, fixed=fit.fixed
        )
    notes = dict(profile.notes)
    notes["rescaled"] = (
        f"ESTIMATE: compute carried over from {profile.label!r} (model dim {old.dim}, "
        f"{old.num_heads} heads, ffn {old.ffn_dim}, vocab {old.vocab_size}) by FLOP ratios"
    )
    return dataclasses.replace(
        profile,
        label=f"{profile.label} rescaled to dim {model.dim}, layers {model.layers}",
        source="estimate",
        model=model,
        compute=compute,
        activation_bytes_per_token=None,
        notes=notes,
    )
