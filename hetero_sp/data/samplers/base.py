"""What every sampler shares: epochs, seeding, the cursor and its JSON state.

A sampler maps (seed, step) to a :class:`GlobalBatch` and nothing else: step s is position
``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, and each epoch's order is drawn
from ``numpy.random.default_rng([seed, epoch, tag, ...])``, so sampling is without replacement
within an epoch and reshuffled across epochs. ``batch(step)`` is pure (the engine may look
ahead); ``next_batch()`` returns the batch at the cursor and advances it, and
``state_dict()`` / ``load_state_dict()`` save and restore that cursor as JSON.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

import numpy as np

from hetero_sp.config import ConfigError
from hetero_sp.core.errors import UserError
from hetero_sp.data.batch import GlobalBatch, Segment
from hetero_sp.data.corpus import Corpus

_EPOCH_PLANS_KEPT = 2  # the current epoch and the next, so one-step lookahead does not thrash


class SamplerStateError(UserError):
    """A sampler state that does not belong to this sampler (other data, seed or options)."""


class EpochSampler(ABC):
    name: str

    def __init__(self, corpus: Corpus, tokens_per_step: int, seed: int) -> None:
        if tokens_per_step < 1:
            raise ConfigError(f"tokens_per_step must be positive, got {tokens_per_step}")
        if seed < 0:
            raise ConfigError(f"the sampler seed must be >= 0, got {seed}")
        self.corpus, self.tokens_per_step, self.seed = corpus, tokens_per_step, seed
        self.step = 0
        """The step ``next_batch()`` returns next."""
        self._plans: OrderedDict[int, Any] = OrderedDict()

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int: ...

    @abstractmethod
    def options(self) -> dict:
        """Everything besides seed and corpus that fixes the batches (JSON values)."""

    @abstractmethod
    def _plan_epoch(self, epoch: int) -> Any:
        """The order of one epoch (whatever ``_refs`` needs)."""

    @abstractmethod
    def _refs(self, plan: Any, position: int) -> list[tuple[Segment, ...]]:
        """The sequences of batch ``position`` of a planned epoch."""

    def describe(self) -> dict:
        """Numbers worth logging once: epoch size and what an epoch leaves out."""
        return {"sampler": self.name, "steps_per_epoch": self.steps_per_epoch, **self.options()}

    def rng(self, epoch: int, *tags: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, *tags])

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, position within the epoch) of a step."""
        if step < 0:
            raise ValueError(f"steps start at 0, got {step}")
        return divmod(step, self.steps_per_epoch)

    def batch(self, step: int) -> GlobalBatch:
        epoch, position = self.position(step)
        if epoch not in self._plans:
            self._plans[epoch] = self._plan_epoch(epoch)
            while len(self._plans) > _EPOCH_PLANS_KEPT:
                self._plans.popitem(last=False)
        return GlobalBatch(step, tuple(self._refs(self._plans[epoch], position)), self.corpus)

    def next_batch(self) -> GlobalBatch:
        batch = self.batch(self.step)
        self.step += 1
        return batch

    def _identity(self) -> dict:
        return {
            "sampler": self.name,
            "seed": self.seed,
            "tokens_per_step": self.tokens_per_step,
            "corpus_fingerprint": self.corpus.fingerprint,
            "options": self.options(),
        }

    def state_dict(self) -> dict:
        epoch, position = self.position(self.step)
        return {**self._identity(), "step": self.step, "epoch": epoch, "position": position}

    def load_state_dict(self, state: dict) -> None:
        mine = self._identity()
        for key, value in mine.items():
            if state.get(key) != value:
                raise SamplerStateError(
                    f"sampler state has {key}={state.get(key)!r} but this run has {value!r}; "
                    "resume with the [data] config and dataset the state was saved with"
                )
        step = int(state["step"])
        if (state.get("epoch"), state.get("position")) != self.position(step):
            raise SamplerStateError(
                f"sampler state step {step} is not epoch {state.get('epoch')} position "
                f"{state.get('position')}; the state is corrupt or from another epoch size"
            )
        self.step = step


def stream_window(cum: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Items overlapping tokens ``[lo, hi)`` of a stream of items laid end to end.

    ``cum`` holds the items' cumulative lengths with a leading 0 (item j covers
    ``[cum[j], cum[j+1])``). Returns (j, a, b): tokens ``[a, b)`` of item j lie in the window.
    """
    first = int(np.searchsorted(cum, lo, side="right")) - 1
    last = int(np.searchsorted(cum, hi, side="left"))
    return [
        (j, max(lo - int(cum[j]), 0), min(hi, int(cum[j + 1])) - int(cum[j]))
        for j in range(first, last)
    ]
