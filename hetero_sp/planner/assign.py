"""From group sizes (and the MILP's bucket counts) to concrete groups: which ranks form each
group and which sequences each runs.

:class:`Packing` holds sequences on groups with their predicted loads (true lengths, not
bucket lengths). Sequences are placed longest first on the least-loaded group with memory room
(LPT), then a local search moves or swaps sequences off the most loaded group while that lowers
the pair's maximum, which also evens out tokens among groups of one size. Ranks are placed last
(:func:`~hetero_sp.planner.cluster.place_groups`): groups of whole nodes first, the others
packed into nodes largest first, which keeps power-of-two blocks aligned.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

import numpy as np

from hetero_sp.planner.bucketing import Buckets
from hetero_sp.planner.cluster import place_groups
from hetero_sp.planner.cost import CostModel, GroupCost
from hetero_sp.planner.milp import MilpResult
from hetero_sp.planner.plan import GroupPlan


class Packing:
    """Sequences (indices into ``lengths``) on groups of the given kinds: each a
    :class:`GroupCost` (a size and its strategy pair), or a size for that size's default kind.

    With ``passes``, a group may run its sequences as several passes (each within its memory);
    each pass pays the group's fixed time. While sequences move, a group's passes are counted as
    ``ceil(tokens / max_tokens)``; :meth:`pass_bins` packs them for real (first fit by tokens,
    longest first) and :meth:`exact_loads` prices that."""

    def __init__(
        self,
        lengths: np.ndarray,
        cost: CostModel,
        kinds: Sequence[int | GroupCost],
        passes: bool = False,
    ) -> None:
        self.cost, self.lengths = cost, np.asarray(lengths, dtype=np.int64)
        self.passes = passes
        self.specs = [cost.groups[k] if isinstance(k, int) else k for k in kinds]
        self.sizes = [k.size for k in self.specs]
        per_kind = {}
        for k in set(self.specs):
            per_kind[k] = (
                k.per_token2_s * self.lengths.astype(float) ** 2 + k.per_token_s * self.lengths
            )
        self.times = np.stack([per_kind[k] for k in self.specs]) if self.specs else None
        self.fixed = np.array([k.fixed_s for k in self.specs])
        self.cap = np.array([k.max_tokens for k in self.specs], dtype=np.int64)
        self.busy = np.zeros(len(self.sizes))
        self.tokens = np.zeros(len(self.sizes), dtype=np.int64)
        self.count = np.zeros(len(self.sizes), dtype=np.int64)
        self.where = np.full(len(self.lengths), -1, dtype=np.int64)
        self._moves = 0  # add/remove calls: the makespan is cached between them
        self._makespan_at: tuple[int, float] | None = None

    def _fixed(self, tokens: np.ndarray, count: np.ndarray, g=slice(None)) -> np.ndarray:
        """Fixed time of groups ``g`` holding ``tokens`` in ``count`` sequences."""
        if not self.passes:
            return self.fixed[g] * (count > 0)
        num = np.maximum(1, -(-tokens // np.maximum(self.cap[g], 1)))
        return self.fixed[g] * np.where(count > 0, num, 0)

    def _fits(self, tokens: np.ndarray, length, g=slice(None)) -> np.ndarray:
        """Whether a sequence of ``length`` may join groups ``g`` now holding ``tokens``."""
        if self.passes:
            return np.broadcast_to(length <= self.cap[g], np.shape(tokens))
        return tokens + length <= self.cap[g]

    def loads(self) -> np.ndarray:
        return self.busy + self._fixed(self.tokens, self.count)

    @property
    def makespan(self) -> float:
        """The busiest group's time, its passes packed for real (cached until a sequence
        moves: packing the passes of every group costs milliseconds)."""
        if self._makespan_at is None or self._makespan_at[0] != self._moves:
            value = float(self.exact_loads().max()) if self.sizes else 0.0
            self._makespan_at = (self._moves, value)
        return self._makespan_at[1]

    def pass_bins(self, g: int) -> list[list[int]]:
        """Group ``g``'s sequences as passes: one pass without ``passes``, else first fit by
        tokens, longest first, into passes of at most its ``max_tokens``."""
        members = sorted(np.flatnonzero(self.where == g), key=lambda i: (-self.lengths[i], i))
        if not self.passes:
            return [sorted(int(i) for i in members)] if members else []
        bins: list[list[int]] = []
        room: list[int] = []
        for i in members:
            b = next((b for b, r in enumerate(room) if self.lengths[i] <= r), None)
            if b is None:
                bins.append([])
                room.append(int(self.cap[g]))
                b = len(bins) - 1
            bins[b].append(int(i))
            room[b] -= int(self.lengths[i])
        return [sorted(b) for b in bins]

    def exact_loads(self) -> np.ndarray:
        """Loads with every group's passes packed for real (:meth:`pass_bins`)."""
        if not self.passes:
            return self.loads()
        # a group whose tokens fit its memory runs one pass; only the others are packed
        num = np.where(self.count > 0, 1, 0)
        for g in np.flatnonzero(self.tokens > self.cap):
            num[g] = len(self.pass_bins(int(g)))
        return self.busy + self.fixed * num

    def add(self, i: int, g: int) -> None:
        self.busy[g] += self.times[g, i]
        self.tokens[g] += self.lengths[i]
        self.count[g] += 1
        self.where[i] = g
        self._moves += 1

    def remove(self, i: int) -> None:
        g = self.where[i]
        self.busy[g] -= self.times[g, i]
        self.tokens[g] -= self.lengths[i]
        self.count[g] -= 1
        self.where[i] = -1
        self._moves += 1

    def lpt(self, items: Sequence[int], allowed: Sequence[int] | None = None) -> list[int]:
        """Place items longest first on the least-loaded allowed group with memory room;
        returns the items that fit nowhere."""
        groups = np.arange(len(self.sizes)) if allowed is None else np.asarray(allowed)
        failed = []
        # _fits and _fixed for these groups, inlined: this loop is the hot path of the estimates
        cap, fixed = self.cap[groups], self.fixed[groups]
        per_pass = np.maximum(cap, 1)
        for i in sorted(items, key=lambda i: (-self.lengths[i], i)):
            n = self.lengths[i]
            tokens = self.tokens[groups] + n
            room = n <= cap if self.passes else tokens <= cap
            if not room.any():
                failed.append(i)
                continue
            num = np.maximum(1, -(-tokens // per_pass)) if self.passes else 1
            after = self.busy[groups] + self.times[groups, i] + fixed * num
            after[~room] = np.inf
            self.add(i, int(groups[int(np.argmin(after))]))
        return failed

    def improve(self, max_rounds: int, deadline: float | None = None) -> None:
        """Move or swap sequences off the most loaded group while that lowers its load; stop
        after ``max_rounds`` moves or at ``deadline`` (``time.perf_counter()`` seconds)."""
        for _ in range(max_rounds):
            if deadline is not None and time.perf_counter() >= deadline:
                return
            loads = self.loads()
            g = int(np.argmax(loads))
            top = loads[g]
            tol = 1e-12 * top
            members = np.flatnonzero(self.where == g)
            best_val, best_move = top - tol, None
            others = np.arange(len(self.sizes)) != g
            gi = np.array([g])
            for i in members:
                n_i = self.lengths[i]
                left = (
                    self.busy[g]
                    - self.times[g, i]
                    + self._fixed(self.tokens[gi] - n_i, self.count[gi] - 1, gi)[0]
                )
                into = self.busy + self.times[:, i] + self._fixed(self.tokens + n_i, self.count + 1)
                ok = others & self._fits(self.tokens, n_i)
                val = np.where(ok, np.maximum(left, into), np.inf)
                h = int(np.argmin(val))
                if val[h] < best_val:
                    best_val, best_move = val[h], (int(i), h, None)
            outside = np.flatnonzero((self.where != g) & (self.where >= 0))
            if best_move is None and len(outside):
                hs = self.where[outside]
                t_h_out = self.times[hs, outside]
                t_g_out = self.times[g, outside]
                n_out = self.lengths[outside]
                g_all = np.full(len(outside), g)
                for i in members:
                    n_i = self.lengths[i]
                    tok_g = self.tokens[g] - n_i + n_out
                    tok_h = self.tokens[hs] - n_out + n_i
                    new_g = (
                        self.busy[g]
                        - self.times[g, i]
                        + t_g_out
                        + self._fixed(tok_g, np.full(len(outside), self.count[g]), g_all)
                    )
                    new_h = (
                        self.busy[hs]
                        - t_h_out
                        + self.times[hs, i]
                        + self._fixed(tok_h, self.count[hs], hs)
                    )
                    if self.passes:
                        ok = (n_out <= self.cap[g]) & (n_i <= self.cap[hs])
                    else:
                        ok = (tok_g <= self.cap[g]) & (tok_h <= self.cap[hs])
                    val = np.where(ok, np.maximum(new_g, new_h), np.inf)
                    j = int(np.argmin(val))
                    if val[j] < best_val:
                        best_val, best_move = val[j], (int(i), int(hs[j]), int(outside[j]))
            if best_move is None:
                return
            i, h, j = best_move
            self.remove(i)
            if j is not None:
                self.remove(j)
                self.add(j, g)
            self.add(i, h)


def homogeneous(
    lengths: np.ndarray,
    cost: CostModel,
    size: int | GroupCost,
    improve_rounds: int,
    deadline: float | None = None,
    passes: bool = False,
) -> Packing | None:
    """Every group of one kind (a size: its default kind); None when the sequences do not fit
    in memory.

    Longest first onto the least-loaded group with room; when memory is too tight for that,
    first fit by tokens (the memory-first packing the micro-batch split checks with). With
    ``passes``, memory bounds each sequence only (a group runs as many passes as it needs)."""
    kind = cost.groups[size] if isinstance(size, int) else size
    sizes = [kind] * cost.topology.max_groups(kind.size)
    if not len(lengths) or int(np.max(lengths)) > kind.max_tokens:
        return None
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if passes:
        pack = _lpt_identical_passes(Packing(lengths, cost, sizes, passes=True), order)
        pack.improve(improve_rounds, deadline)
        return pack
    pack = _lpt_identical(Packing(lengths, cost, sizes), order)
    if pack is None:
        pack = _first_fit(Packing(lengths, cost, sizes), order)
    if pack is not None:
        pack.improve(improve_rounds, deadline)
    return pack


def _lpt_identical(pack: Packing, order: Sequence[int]) -> Packing | None:
    """LPT on groups of one size with a heap of (load, group)."""
    cap, fixed = pack.cap[0], pack.fixed[0]
    heap = [(0.0, g) for g in range(len(pack.sizes))]
    for i in order:
        skipped = []
        while heap and pack.tokens[heap[0][1]] + pack.lengths[i] > cap:
            skipped.append(heapq.heappop(heap))
        if not heap:
            return None
        _, g = heapq.heappop(heap)
        pack.add(i, g)
        heapq.heappush(heap, (pack.busy[g] + fixed, g))
        for item in skipped:
            heapq.heappush(heap, item)
    return pack


def _lpt_identical_passes(pack: Packing, order: Sequence[int]) -> Packing:
    """:meth:`Packing.lpt` with passes on groups of one kind, with a heap of (load, group):
    a sequence adds its time and, where it opens a pass, the fixed time, so the group it
    finishes earliest on is the least loaded unless that one needs a new pass; then only groups
    loaded less than one fixed time more compete (every sequence fits a pass: nothing fails)."""
    cap, fixed = int(pack.cap[0]), float(pack.fixed[0])
    per_pass = max(cap, 1)
    tokens = [0] * len(pack.sizes)

    def opens(g: int, n: int) -> int:  # 1 where the sequence needs one more pass in group g
        if not tokens[g]:
            return 0  # an empty group's one pass is in its load already
        return -(-(tokens[g] + n) // per_pass) - -(-tokens[g] // per_pass)

    heap = [(fixed, g) for g in range(len(pack.sizes))]  # empty groups: one pass's fixed time
    for i in order:
        n = int(pack.lengths[i])
        popped = [heapq.heappop(heap)]
        best = (popped[0][0] + fixed * opens(popped[0][1], n), popped[0][1])
        while heap and best[0] > popped[0][0] and heap[0][0] <= best[0]:
            load, g = heapq.heappop(heap)
            popped.append((load, g))
            best = min(best, (load + fixed * opens(g, n), g))
        g = best[1]
        pack.add(i, g)
        tokens[g] += n
        for item in popped:
            if item[1] != g:
                heapq.heappush(heap, item)
        num = max(1, -(-tokens[g] // per_pass))
        heapq.heappush(heap, (float(pack.busy[g]) + fixed * num, g))
    return pack


def _first_fit(pack: Packing, order: Sequence[int]) -> Packing | None:
    for i in order:
        room = np.flatnonzero(pack.tokens + pack.lengths[i] <= pack.cap)
        if not len(room):
            return None
        pack.add(i, int(room[0]))
    return pack


def realize(
    lengths: np.ndarray,
    cost: CostModel,
    buckets: Buckets,
    result: MilpResult,
    improve_rounds: int,
    deadline: float | None = None,
    passes: bool = False,
) -> Packing | None:
    """Concrete groups for a MILP solution; None when some sequence fits nowhere."""
    kinds = cost.kinds
    explicit = list(result.groups)
    specs = [kinds[g.kind] for g in explicit]
    classes = []
    for j, num, counts in result.fluid:
        classes.append((list(range(len(specs), len(specs) + num)), list(counts)))
        specs += [kinds[j]] * num
    spare = cost.topology.num_gpus - sum(k.size for k in specs)
    specs += [cost.groups[1]] * spare  # spare GPUs: groups of one to fill
    pack = Packing(lengths, cost, specs, passes=passes)
    quota = [list(g.counts) for g in explicit]
    pools: list[list[int]] = [[] for _ in classes]
    homeless = []
    for k in reversed(range(len(buckets.values))):
        for i in sorted(buckets.members[k], key=lambda i: (-lengths[i], i)):
            want = [g for g in range(len(explicit)) if quota[g][k] > 0]
            room = [g for g in want if pack._fits(pack.tokens[g], lengths[i], g)]
            if room:  # the MILP counted mean lengths: a group may lack room for this one
                g = min(room, key=lambda g: (pack.loads()[g], g))
                quota[g][k] -= 1
                pack.add(i, g)
                continue
            if want:
                quota[want[0]][k] -= 1
                homeless.append(i)
                continue
            c = next((c for c, (_, counts) in enumerate(classes) if counts[k] > 0), None)
            if c is None:
                homeless.append(i)
            else:
                classes[c][1][k] -= 1
                pools[c].append(i)
    for (members, _), pool in zip(classes, pools):
        homeless += pack.lpt(pool, members)
    if pack.lpt(homeless):
        return None
    pack.improve(improve_rounds, deadline)
    return pack


def group_plans(pack: Packing, index: Sequence[int]) -> tuple[GroupPlan, ...]:
    """Groups with ranks (:func:`~hetero_sp.planner.cluster.place_groups`), ordered by first
    rank; ranks no busy group covers are idle groups of one. ``index`` maps the packing's
    sequences to their indices in the step's batch."""
    cost = pack.cost
    world = cost.topology.num_gpus
    busy = [g for g in range(len(pack.sizes)) if pack.count[g] > 0]
    bins = {g: pack.pass_bins(g) for g in busy}  # each group's passes, packed once
    loads = {g: float(pack.busy[g] + pack.fixed[g] * len(bins[g])) for g in busy}
    busy.sort(key=lambda g: (-pack.sizes[g], -loads[g], g))
    firsts = place_groups([pack.sizes[g] for g in busy], cost.topology)
    if firsts is None:
        raise RuntimeError(
            f"groups of sizes {[pack.sizes[g] for g in busy]} do not fit the nodes of "
            f"{cost.topology.node} ranks; a planner bug (the group counts should fit)"
        )
    out, covered = [], set()
    for g, first in zip(busy, firsts):
        d = pack.sizes[g]
        seqs = tuple(sorted(int(index[i]) for i in np.flatnonzero(pack.where == g)))
        spec = pack.specs[g]
        passes = tuple(tuple(int(index[i]) for i in b) for b in bins[g]) if len(bins[g]) > 1 else ()
        stream = max(int(pack.lengths[b].sum()) for b in bins[g])
        covered.update(range(first, first + d))
        out.append(
            GroupPlan(
                ranks=tuple(range(first, first + d)),
                sequences=seqs,
                softmax_strategy=spec.softmax_strategy,
                linear_strategy=spec.linear_strategy,
                tokens=int(pack.tokens[g]),
                predicted_s=loads[g],
                memory_bytes=float(spec.memory(stream)),
                passes=passes,
            )
        )
    idle = cost.groups[1]
    for r in sorted(set(range(world)) - covered):
        out.append(
            GroupPlan(
                ranks=(r,),
                sequences=(),
                softmax_strategy=idle.softmax_strategy,
                linear_strategy=idle.linear_strategy,
                tokens=0,
                predicted_s=0.0,
                memory_bytes=float(cost.state_bytes),
            )
        )
    return tuple(sorted(out, key=lambda g: g.ranks[0]))


def _layout_kinds(cost: CostModel) -> list[GroupCost]:
    """The kinds of the proportional layout: sizes that divide the node or are whole nodes."""
    node = cost.topology.node
    return [k for k in cost.kinds if k.size == 1 or node % k.size == 0 or k.size > node]


def proportional(
    lengths: np.ndarray,
    cost: CostModel,
    improve_rounds: int,
    deadline: float | None = None,
    passes: bool = False,
    cap_s: float | None = None,
) -> Packing | None:
    """A mixed layout without the MILP: every sequence on its cheapest group size (fewest
    GPU-seconds among the kinds that hold it, as in the lower bound; with ``cap_s``, among
    those on which it takes at most ``cap_s`` seconds, or its fastest kind where none does),
    GPUs shared among the sizes in proportion to their work (one group at least each; the
    least-worked sizes give way while they do not fit together), sequences longest first onto
    the group they finish earliest on, then the local search. Sizes that divide the node or
    are whole nodes only, so the groups always fit the nodes. None when some sequence fits
    nowhere."""
    topology = cost.topology
    kinds = _layout_kinds(cost)
    s = np.asarray(lengths, dtype=float)
    work = np.full((len(kinds), len(s)), np.inf)
    for j, k in enumerate(kinds):
        fits = s <= k.max_tokens
        work[j, fits] = k.size * (k.per_token2_s * s[fits] ** 2 + k.per_token_s * s[fits])
    if cap_s is not None:
        alone = work / np.array([[k.size] for k in kinds]) + np.array([[k.fixed_s] for k in kinds])
        within = alone <= cap_s
        fastest = np.argmin(alone, axis=0)
        within[fastest, np.arange(len(s))] |= ~within.any(axis=0)
        work = np.where(within, work, np.inf)
    sizes = sorted({k.size for k in kinds})
    world = topology.num_gpus
    while True:
        allowed = np.array([k.size in sizes for k in kinds])
        masked = np.where(allowed[:, None], work, np.inf)
        if not np.isfinite(masked.min(axis=0)).all():
            return None
        choice = np.argmin(masked, axis=0)
        share = {d: 0.0 for d in sizes}
        votes: dict[int, dict[int, float]] = {}
        for j in set(choice.tolist()):
            d = kinds[j].size
            w = float(work[j, choice == j].sum())
            share[d] += w
            votes.setdefault(d, {})[j] = w
        used = [d for d in sizes if share[d] > 0]
        total = sum(share.values())
        # a size whose work is under one group's worth of GPUs gives way (not the largest,
        # which the longest sequences may need), as do any while the groups do not fit
        small = [d for d in used[:-1] if share[d] / total * world < d]
        if sum(used) <= world and not small:
            break
        sizes.remove(min(small or used, key=lambda d: (share[d] / d, -d)))
    kind_of = {d: kinds[max(votes[d], key=votes[d].get)] for d in used}
    count = {d: max(1, int(share[d] / total * world / d)) for d in used}
    while sum(d * c for d, c in count.items()) > world:  # rounding: shrink the most generous
        d = max((d for d in used if count[d] > 1), key=lambda d: count[d] * d / share[d])
        count[d] -= 1
    while True:
        room = world - sum(d * c for d, c in count.items())
        grow = [d for d in used if d <= room and count[d] < topology.max_groups(d)]
        if not grow:
            break
        d = max(grow, key=lambda d: (share[d] / (count[d] * d), -d))
        count[d] += 1
    specs = [kind_of[d] for d in used for _ in range(count[d])]
    if place_groups([k.size for k in specs], topology) is None:
        return None
    pack = Packing(lengths, cost, specs, passes=passes)
    if pack.lpt(range(len(s))):  # longest first, each onto the group it finishes earliest on
        return None
    pack.improve(improve_rounds, deadline)
    return pack


_TARGETS = 3
"""Makespan targets :func:`proportional_best` tries besides none."""


def proportional_best(
    lengths: np.ndarray,
    cost: CostModel,
    improve_rounds: int,
    deadline: float | None = None,
    passes: bool = False,
) -> Packing | None:
    """The best of :func:`proportional` without a cap and, where the longest sequence alone
    takes most of that layout's makespan, with caps at up to ``_TARGETS`` of its times on
    faster kinds (a target makespan for moldable jobs: every sequence on its cheapest kind
    that meets it); the local search runs on the winner only. Work-cheapest kinds put a long
    document on a group that runs it slowly (a 300,000-token document on 32 of 256 GPUs:
    2.6 s), while a bigger group finishes it sooner and the shorter ones fill the rest."""
    best = proportional(lengths, cost, 0, deadline, passes)
    if best is None or len(lengths) < 2:
        return _improved(best, improve_rounds, deadline)
    i = int(np.argmax(lengths))
    g = int(best.where[i])
    now = float(best.times[g, i]) + float(best.fixed[g])  # the longest one where it runs
    if now < 0.8 * best.makespan:
        return _improved(best, improve_rounds, deadline)  # the longest does not set it
    s = float(lengths[i])
    faster = sorted(
        {
            k.fixed_s + k.seq_time(s)
            for k in _layout_kinds(cost)
            if s <= k.max_tokens and k.fixed_s + k.seq_time(s) < 0.98 * now
        }
    )
    step = (len(faster) - 1) / max(1, _TARGETS - 1)
    picks = sorted({faster[round(j * step)] for j in range(_TARGETS)}) if faster else []
    for cap in picks:
        if deadline is not None and time.perf_counter() > deadline:
            break
        pack = proportional(lengths, cost, 0, deadline, passes, cap_s=cap)
        if pack is not None and pack.makespan < best.makespan:
            best = pack
    return _improved(best, improve_rounds, deadline)


def _improved(pack: Packing | None, rounds: int, deadline: float | None) -> Packing | None:
    if pack is not None:
        pack.improve(rounds, deadline)
    return pack
