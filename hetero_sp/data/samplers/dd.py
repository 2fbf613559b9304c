"""``dd``: dataset-decomposition batches, one bucket per step, with a length curriculum.

Each step takes ``tokens_per_step / 2**i`` chunks of one bucket D_i, so every step holds
exactly ``tokens_per_step`` tokens in sequences of one length (Pouransari et al., arXiv
2405.13226, "variable sequence length" training).

Which bucket each step uses follows the paper's reference code (apple/ml-dataset-decomposition:
``scripts/get_dd_params.py`` sets the mixing weights, its OpenLM patch draws with them). An epoch
uses ``B_i = chunks_i // (tokens_per_step / 2**i)`` batches of every bucket (the few chunks left
over are reshuffled into the next epoch), split into ``cycles`` equal parts (the reference's
"epochs"). Within a cycle with ``b_i`` batches of bucket i, each step draws bucket i with
probability ``o_i * b_i / sum_j o_j * b_j`` over the buckets that still have batches left in the
cycle; a bucket that runs out drops out and the others renormalise, so every cycle uses all of
its batches. ``uniform`` (all ``o_i = 1``) draws by the data's own length mix; ``grow_p2`` takes
``o_i = 2**(max - i)`` (32:16:8:4:2:1 for six buckets), so short sequences dominate the start of
a cycle and long ones its end; with 8 cycles (the paper's choice for Grow-P2) the lengths grow 8
times over an epoch. User-given odds replace ``o_i``.

Constant probabilities over live buckets are the merge of independent Poisson processes, one per
bucket with rate ``o_i * b_i``, each stopped after its ``b_i`` events: a cycle's order is the
argsort of every bucket's cumulative Exp(1) / rate arrival times, computed for the whole epoch
at once.
"""

from __future__ import annotations

import numpy as np

from hetero_sp.config import ConfigError
from hetero_sp.data.batch import Segment
from hetero_sp.data.corpus import Corpus
from hetero_sp.data.decompose import decompose, log2_exact
from hetero_sp.data.samplers.base import EpochSampler

CURRICULA = ("uniform", "grow_p2", "odds")


def curriculum_odds(
    curriculum: str, num_buckets: int, odds: list[float] | None = None
) -> list[float]:
    """Odds per bucket, shortest bucket first."""
    if curriculum == "uniform":
        return [1.0] * num_buckets
    if curriculum == "grow_p2":
        return [float(2 ** (num_buckets - 1 - k)) for k in range(num_buckets)]
    if curriculum == "odds":
        if odds is None or len(odds) != num_buckets or min(odds) <= 0:
            raise ConfigError(
                f"curriculum 'odds' needs {num_buckets} positive odds (one per bucket, shortest "
                f"first), got {odds}"
            )
        return [float(o) for o in odds]
    raise ConfigError(f"unknown curriculum {curriculum!r}; allowed: {', '.join(CURRICULA)}")


class DDSampler(EpochSampler):
    name = "dd"

    def __init__(
        self,
        corpus: Corpus,
        tokens_per_step: int,
        seed: int,
        min_seq_len: int,
        max_seq_len: int,
        curriculum: str = "uniform",
        cycles: int = 1,
        odds: list[float] | None = None,
    ) -> None:
        super().__init__(corpus, tokens_per_step, seed)
        hi = log2_exact(max_seq_len, "data.max_seq_len")
        if tokens_per_step % max_seq_len:
            raise ConfigError(
                f"dd needs tokens_per_step ({tokens_per_step}) to be a multiple of max_seq_len "
                f"({max_seq_len}) so every bucket fills a step exactly"
            )
        if cycles < 1:
            raise ConfigError(f"curriculum cycles must be >= 1, got {cycles}")
        self.dec = decompose(corpus.lengths(), min_seq_len, max_seq_len)
        lo = self.dec.min_log2
        self.min_seq_len, self.max_seq_len, self.cycles = min_seq_len, max_seq_len, cycles
        self.curriculum = curriculum
        self.odds = curriculum_odds(curriculum, hi - lo + 1, odds)
        self._chunks = {i: self.dec.bucket_chunks(i) for i in range(lo, hi + 1)}
        self._per_batch = {i: tokens_per_step >> i for i in self._chunks}
        self.batches_per_epoch = {i: len(c) // self._per_batch[i] for i, c in self._chunks.items()}
        self._steps = sum(self.batches_per_epoch.values())
        if self._steps == 0:
            raise ConfigError(
                f"no bucket has {tokens_per_step} tokens for one dd step: lower "
                "data.tokens_per_step or data.max_seq_len, or use a larger dataset"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def options(self) -> dict:
        return {
            "min_seq_len": self.min_seq_len,
            "max_seq_len": self.max_seq_len,
            "curriculum": self.curriculum,
            "cycles": self.cycles,
            "odds": list(self.odds),
        }

    def describe(self) -> dict:
        buckets = {
            f"D_{i}": {
                "seq_len": 1 << i,
                "chunks": len(c),
                "batches_per_epoch": self.batches_per_epoch[i],
                "chunks_unused_per_epoch": len(c) - self.batches_per_epoch[i] * self._per_batch[i],
            }
            for i, c in self._chunks.items()
        }
        return {
            **super().describe(),
            "buckets": buckets,
            "leftover_tokens": self.dec.leftover_tokens,
        }

    def _plan_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        lo = self.dec.min_log2
        order = {i: c[self.rng(epoch, 1, i).permutation(len(c))] for i, c in self._chunks.items()}
        sched_bucket, sched_batch = [], []
        for cycle in range(self.cycles):
            rng = self.rng(epoch, 2, cycle)
            buckets, batches, times = [], [], []
            for i, total in self.batches_per_epoch.items():
                first = total * cycle // self.cycles
                count = total * (cycle + 1) // self.cycles - first
                if count == 0:
                    continue
                rate = self.odds[i - lo] * count
                buckets.append(np.full(count, i, dtype=np.int64))
                batches.append(np.arange(first, first + count, dtype=np.int64))
                times.append(np.cumsum(rng.exponential(size=count)) / rate)
            if not times:
                continue  # fewer batches than cycles: this cycle has none
            sequence = np.argsort(np.concatenate(times), kind="stable")
            sched_bucket.append(np.concatenate(buckets)[sequence])
            sched_batch.append(np.concatenate(batches)[sequence])
        return np.concatenate(sched_bucket), np.concatenate(sched_batch), order

    def _refs(self, plan, position: int) -> list[tuple[Segment, ...]]:
        sched_bucket, sched_batch, order = plan
        i, k = int(sched_bucket[position]), int(sched_batch[position])
        m = self._per_batch[i]
        chunks = order[i][k * m : (k + 1) * m]
        stored = (1 << i) + 1
        return [
            ((int(d), int(o), int(o) + stored),)
            for d, o in zip(self.dec.doc[chunks], self.dec.offset[chunks])
        ]
