"""Group a batch's sequence lengths into a few buckets for the MILP, by dynamic programming.

A bucket's width is measured as the tokens its sequences lack to its longest one,
``sum(bucket_max - length)`` (the "token error" of rounding every sequence up); the DP picks
the bucket borders among the sorted distinct lengths that minimise it, exactly. FlexSP reports
<= 2.3% token error for DP bucketing against up to 22% with fixed bins; with a fixed 16 buckets
batches of 512-1024 long-tailed lengths here reach 5-14%, so the planner can ask for the fewest
buckets under a token error (``max_error``). (The MILP then prices a bucket's sequences at their
mean length and admits a bucket to a group size only when its longest sequence fits.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Buckets:
    values: tuple[int, ...]
    """Each bucket's length (its longest member), ascending."""
    members: tuple[tuple[int, ...], ...]
    """Indices (into the input lengths) of each bucket's sequences."""
    added_tokens: int
    """Tokens the rounding adds over all sequences."""
    total_tokens: int

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(m) for m in self.members)

    @property
    def token_error(self) -> float:
        """Added tokens as a fraction of the batch's tokens."""
        return self.added_tokens / self.total_tokens


MAX_UNITS = 256
"""Distinct lengths beyond this many are first merged into runs of lengths within a small
relative width of each other (at most 5%, the narrowest that leaves this many runs), which the
DP then treats as one length each: its cost grows with the square of the count."""


def _units(distinct: np.ndarray, counts: np.ndarray, tokens: np.ndarray):
    """Merge sorted distinct lengths into at most ``MAX_UNITS`` consecutive runs, each within a
    relative width ``eps`` (the smallest of a few that suffices). Returns per run its longest
    length, sequence count and tokens, and the run of every distinct length."""
    logs = np.log(distinct.astype(float))
    for eps in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05):
        key = np.floor(logs / np.log1p(eps)).astype(np.int64)
        starts = np.flatnonzero(np.diff(key, prepend=key[0] - 1))
        if len(starts) <= MAX_UNITS:
            break
    ends = np.append(starts[1:], len(distinct)) - 1
    unit = np.cumsum(np.diff(key, prepend=key[0] - 1) != 0) - 1
    return distinct[ends], np.add.reduceat(counts, starts), np.add.reduceat(tokens, starts), unit


def bucket_lengths(
    lengths: Sequence[int],
    max_buckets: int,
    max_error: float = 0.0,
    min_buckets: int | None = None,
) -> Buckets:
    """Optimal bucketing of ``lengths`` into at most ``max_buckets`` buckets.

    With ``max_error`` > 0: the fewest buckets, from ``min_buckets`` (default ``max_buckets``)
    up, whose token error is at most ``max_error``; ``max_buckets`` when none is. The DP adds
    one bucket per pass, so it stops as soon as one is."""
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    if min_buckets is not None and not 1 <= min_buckets <= max_buckets:
        raise ValueError(
            f"min_buckets must be in [1, max_buckets={max_buckets}], got {min_buckets}"
        )
    if not 0 <= max_error < 1:
        raise ValueError(f"max_error must be in [0, 1), got {max_error}")
    if len(lengths) == 0:
        raise ValueError("cannot bucket an empty batch")
    arr = np.asarray(lengths, dtype=np.int64)
    distinct, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    tokens = counts * distinct
    if len(distinct) > MAX_UNITS:
        distinct, counts, tokens, unit = _units(distinct, counts, tokens)
        inverse = unit[inverse]
    n = len(distinct)
    k = min(max_buckets, n)
    enough = min(k, max_buckets if min_buckets is None else min_buckets)
    allowed = max_error * float(arr.sum()) if max_error > 0 else -1.0  # -1: use all k buckets
    # cost[i, j]: tokens added when units i..j (inclusive) form one bucket
    cum_cnt = np.concatenate([[0], np.cumsum(counts)])
    cum_tok = np.concatenate([[0], np.cumsum(tokens)])
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    cnt = cum_cnt[j + 1] - cum_cnt[i]
    tok = cum_tok[j + 1] - cum_tok[i]
    cost = np.where(i <= j, cnt * distinct[None, :] - tok, np.iinfo(np.int64).max // 4)
    # best[b][j]: least added tokens covering distinct lengths 0..j with b + 1 buckets
    best, prev = [cost[0]], [np.zeros(n, dtype=np.int64)]
    while len(best) < k and (len(best) < enough or best[-1][-1] > allowed):
        b = len(best)
        # last bucket is i..j, the first b buckets cover 0..i-1
        cand = best[-1][:-1, None] + cost[1:, :]
        arg = np.argmin(cand, axis=0)
        best.append(cand[arg, np.arange(n)])
        prev.append(arg + 1)
        best[b][:b] = best[b - 1][:b]  # fewer lengths than buckets: keep the b-bucket optimum
        prev[b][:b] = -1
    k = len(best)
    borders = []
    b, j_end = k - 1, n - 1
    while b >= 0 and j_end >= 0:
        start = int(prev[b][j_end]) if b > 0 else 0
        if start < 0:  # this prefix used fewer buckets
            b -= 1
            continue
        borders.append((start, j_end))
        j_end, b = start - 1, b - 1
    borders.reverse()
    bucket_of_distinct = np.empty(n, dtype=np.int64)
    for idx, (lo, hi) in enumerate(borders):
        bucket_of_distinct[lo : hi + 1] = idx
    seq_bucket = bucket_of_distinct[inverse]
    members = tuple(
        tuple(int(x) for x in np.flatnonzero(seq_bucket == b)) for b in range(len(borders))
    )
    values = tuple(int(distinct[hi]) for _, hi in borders)
    added = int(sum(values[seq_bucket[t]] - arr[t] for t in range(len(arr))))
    return Buckets(values=values, members=members, added_tokens=added, total_tokens=int(arr.sum()))
