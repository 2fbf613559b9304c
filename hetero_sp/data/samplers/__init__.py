"""Samplers: (seed, step) -> the step's global batch. See each module for its batches."""

from __future__ import annotations

from hetero_sp.config import SAMPLERS, ConfigError, DataConfig
from hetero_sp.data.corpus import Corpus
from hetero_sp.data.samplers.base import EpochSampler, SamplerStateError
from hetero_sp.data.samplers.concat_chunk import ConcatChunkSampler
from hetero_sp.data.samplers.dd import CURRICULA, DDSampler, curriculum_odds
from hetero_sp.data.samplers.mixed import MixedSampler

__all__ = [
    "CURRICULA",
    "SAMPLERS",
    "ConcatChunkSampler",
    "DDSampler",
    "EpochSampler",
    "MixedSampler",
    "SamplerStateError",
    "build_sampler",
    "curriculum_odds",
]


def build_sampler(cfg: DataConfig, corpus: Corpus) -> EpochSampler:
    """The sampler ``cfg.sampler`` names, over ``corpus``, with the options of ``cfg``."""
    if cfg.sampler == "dd":
        return DDSampler(
            corpus,
            cfg.tokens_per_step,
            cfg.seed,
            cfg.min_seq_len,
            cfg.max_seq_len,
            curriculum=cfg.curriculum,
            cycles=cfg.curriculum_cycles,
            odds=list(cfg.curriculum_odds) or None,
        )
    if cfg.sampler == "mixed":
        return MixedSampler(
            corpus,
            cfg.tokens_per_step,
            cfg.seed,
            cfg.max_seq_len,
            source=cfg.mixed_source,
            min_seq_len=cfg.min_seq_len,
        )
    if cfg.sampler == "concat_chunk":
        return ConcatChunkSampler(corpus, cfg.tokens_per_step, cfg.seed, cfg.max_seq_len)
    raise ConfigError(
        f"data.sampler: unknown sampler {cfg.sampler!r}; allowed: {', '.join(SAMPLERS)}"
    )
