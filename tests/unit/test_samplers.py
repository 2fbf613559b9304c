"""Samplers: constant tokens per step, sampling without replacement within an epoch, the
curriculum's bucket odds (a martingale bound), identical batches after resuming mid-epoch
from a JSON state, and lazy reading of only the sequences a rank asks for."""

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hetero_sp.data.batch import GlobalBatch
from hetero_sp.data.corpus import TokenCorpus
from hetero_sp.data.samplers import (
    ConcatChunkSampler,
    DDSampler,
    MixedSampler,
    SamplerStateError,
)


def positional_corpus(lengths) -> TokenCorpus:
    """Token id = position in the whole corpus, so a token id says exactly where it came from."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenCorpus.from_docs(
        [np.arange(offsets[i], offsets[i + 1]) for i in range(len(lengths))]
    )


corpora = st.lists(st.integers(1, 700), min_size=3, max_size=40).map(positional_corpus)


def make(kind: str, corpus, seed: int, tokens: int, lo: int, hi: int, cycles: int = 1):
    if kind == "dd":
        return DDSampler(corpus, tokens, seed, lo, hi, curriculum="grow_p2", cycles=cycles)
    if kind == "mixed_docs":
        return MixedSampler(corpus, tokens, seed, hi, "documents")
    if kind == "mixed_chunks":
        return MixedSampler(corpus, tokens, seed, hi, "chunks", lo)
    return ConcatChunkSampler(corpus, tokens, seed, hi)


def _refs_in_documents(batch: GlobalBatch, corpus) -> None:
    lengths = corpus.lengths()
    for segs in batch.refs:
        for d, start, stop in segs:
            assert 0 <= start < stop <= lengths[d]


@settings(max_examples=60, deadline=None)
@given(
    corpus=corpora,
    seed=st.integers(0, 2**32),
    lo=st.sampled_from([2, 4, 8]),
    hi=st.sampled_from([8, 16, 32, 64]),
    per_step=st.integers(1, 3),
    cycles=st.integers(1, 3),
)
def test_dd_steps_hold_constant_tokens_of_one_length_without_reuse(
    corpus, seed, lo, hi, per_step, cycles
):
    assume(lo <= hi)
    try:
        s = DDSampler(corpus, hi * per_step, seed, lo, hi, curriculum="grow_p2", cycles=cycles)
    except ValueError:
        assume(False)  # too little data for one step
    used = set()
    for step in range(2 * s.steps_per_epoch):
        if step == s.steps_per_epoch:
            used = set()
        b = s.next_batch()
        assert b.num_tokens == hi * per_step
        assert len(set(b.lengths)) == 1 and b.lengths[0] in [1 << i for i in range(10)]
        assert lo <= b.lengths[0] <= hi
        _refs_in_documents(b, corpus)
        chunks = {segs[0][:2] for segs in b.refs}
        assert len(chunks) == len(b) and not chunks & used, "a chunk is used twice in one epoch"
        used |= chunks
        tokens = b.materialize(range(len(b)))
        assert all(np.array_equal(t, np.arange(t[0], t[0] + len(t))) for t in tokens)


@settings(max_examples=60, deadline=None)
@given(
    corpus=corpora,
    seed=st.integers(0, 2**32),
    hi=st.sampled_from([4, 16, 64]),
    budget=st.integers(64, 300),
)
def test_mixed_trains_every_token_of_an_epoch_once_at_a_constant_budget(corpus, seed, hi, budget):
    try:
        s = MixedSampler(corpus, budget, seed, hi, "documents")
    except ValueError:
        assume(False)
    targets = []
    for _ in range(s.steps_per_epoch):
        b = s.next_batch()
        assert b.num_tokens == budget and max(b.lengths) <= hi
        _refs_in_documents(b, corpus)
        targets += [t[1:] for t in b.materialize(range(len(b)))]
    targets = np.concatenate(targets)
    assert len(np.unique(targets)) == len(targets), "a target token is trained twice in one epoch"
    firsts = set(corpus.offsets[:-1].tolist())
    assert not firsts & set(targets.tolist()), "a document's first token is used as a target"
    total = int(np.maximum(corpus.lengths() - 1, 0).sum())
    assert total - len(targets) < budget, "an epoch leaves out more than one step of tokens"


@settings(max_examples=40, deadline=None)
@given(
    corpus=corpora,
    seed=st.integers(0, 2**32),
    seq=st.sampled_from([8, 32]),
    per_step=st.integers(1, 4),
)
def test_concat_chunk_cuts_the_shuffled_stream_into_fixed_lengths(corpus, seed, seq, per_step):
    try:
        s = ConcatChunkSampler(corpus, seq * per_step, seed, seq)
    except ValueError:
        assume(False)
    stream = []
    for _ in range(s.steps_per_epoch):
        b = s.next_batch()
        assert b.lengths == [seq] * per_step
        for t in b.materialize(range(len(b))):
            if stream:
                assert stream[-1] == t[0], "consecutive sequences must share one token"
                stream.pop()
            stream += t.tolist()
    assert len(stream) == len(set(stream)), "a token appears twice in one epoch's stream"
    # Documents appear whole and in one piece: each starts at its own first token.
    assert set(stream) <= set(range(int(corpus.lengths().sum())))


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["dd", "mixed_docs", "mixed_chunks", "concat"]),
    corpus=corpora,
    seed=st.integers(0, 2**32),
    stop_at=st.integers(0, 40),
)
def test_resuming_from_a_json_state_reproduces_the_batches(kind, corpus, seed, stop_at):
    try:
        first = make(kind, corpus, seed, 64, 4, 32, cycles=2)
    except ValueError:
        assume(False)
    for _ in range(stop_at):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["step"] == stop_at
    assert (state["epoch"], state["position"]) == divmod(stop_at, first.steps_per_epoch)
    expected = [first.next_batch() for _ in range(2 * first.steps_per_epoch + 3)]
    resumed = make(kind, corpus, seed, 64, 4, 32, cycles=2)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        assert got == want  # same step and the same references
        assert all(
            np.array_equal(a, b)
            for a, b in zip(got.materialize(range(len(got))), want.materialize(range(len(want))))
        )


def test_sampler_state_from_other_data_or_options_is_refused():
    corpus = positional_corpus([300] * 20)
    s = DDSampler(corpus, 64, 1, 4, 32)
    s.next_batch()
    state = s.state_dict()
    with pytest.raises(SamplerStateError, match="seed"):
        DDSampler(corpus, 64, 2, 4, 32).load_state_dict(state)
    with pytest.raises(SamplerStateError, match="options"):
        DDSampler(corpus, 64, 1, 4, 32, curriculum="grow_p2").load_state_dict(state)
    with pytest.raises(SamplerStateError, match="corpus_fingerprint"):
        DDSampler(positional_corpus([301] * 20), 64, 1, 4, 32).load_state_dict(state)
    with pytest.raises(SamplerStateError, match="sampler"):
        MixedSampler(corpus, 64, 1, 32).load_state_dict(state)


def test_epochs_reshuffle_and_seeds_fix_the_order():
    corpus = positional_corpus([500] * 30)
    s = MixedSampler(corpus, 256, 5, 64)
    epoch0 = [s.batch(i).refs for i in range(s.steps_per_epoch)]
    epoch1 = [s.batch(s.steps_per_epoch + i).refs for i in range(s.steps_per_epoch)]
    assert epoch0 != epoch1
    assert MixedSampler(corpus, 256, 5, 64).batch(3) == s.batch(3)
    assert MixedSampler(corpus, 256, 6, 64).batch(3).refs != s.batch(3).refs


def _bucket_odds_deviation(sampler, test_odds, epochs):
    """M_i = sum over the first half of every cycle of (1[step draws bucket i] - p_i), with
    p_i = o_i b_i / sum_j o_j b_j over the buckets j with batches left in the cycle (b: the
    cycle's batches per bucket): the observed bucket frequencies minus what the odds predict.
    Under the right odds it is a martingale with increments in [-1, 1], so Azuma's inequality
    bounds it: P(|M_i| >= a) <= 2 exp(-a^2 / 2n)."""
    buckets = sorted(sampler.batches_per_epoch)
    dev, n, step = np.zeros(len(buckets)), 0, 0
    for _ in range(epochs):
        for cycle in range(sampler.cycles):
            per_cycle = np.array(
                [
                    b * (cycle + 1) // sampler.cycles - b * cycle // sampler.cycles
                    for b in (sampler.batches_per_epoch[i] for i in buckets)
                ]
            )
            left = per_cycle.copy()
            size = int(left.sum())
            for t in range(size):
                drawn = buckets.index(sampler.batch(step).lengths[0].bit_length() - 1)
                step += 1
                if t < size // 2:
                    w = test_odds * per_cycle * (left > 0)
                    dev += (np.arange(len(buckets)) == drawn) - w / w.sum()
                    n += 1
                left[drawn] -= 1
    return dev, n


@pytest.mark.parametrize(
    "curriculum, odds, cycles",
    [
        ("grow_p2", [8, 4, 2, 1], 1),
        ("grow_p2", [8, 4, 2, 1], 4),
        ("odds", [1, 5, 2, 3], 2),
        ("uniform", [1, 1, 1, 1], 2),
    ],
)
def test_dd_bucket_frequencies_follow_the_curriculum_odds(curriculum, odds, cycles):
    # Buckets 4..32 (one step: 8 x 4, 4 x 8, 2 x 16 or 1 x 32 tokens), unequal batches per epoch.
    lengths = [5] * 800 + [9] * 240 + [17] * 280 + [33] * 40
    corpus = TokenCorpus.from_docs([np.zeros(n, dtype=np.int64) for n in lengths])
    s = DDSampler(
        corpus,
        32,
        11,
        4,
        32,
        curriculum=curriculum,
        cycles=cycles,
        odds=odds if curriculum == "odds" else None,
    )
    assert s.batches_per_epoch == {2: 100, 3: 60, 4: 140, 5: 40}
    epochs = 40
    dev, n = _bucket_odds_deviation(s, np.array(odds, float), epochs)
    # Union over 4 buckets at a false-alarm rate of 1e-9 (the seed is fixed: no flakes).
    bound = math.sqrt(2 * n * math.log(2 * 4 / 1e-9))
    assert np.abs(dev).max() < bound, (
        f"bucket frequencies deviate {dev} from the odds (bound {bound:.0f})"
    )
    # The test can fail: the same draws judged against other odds are far outside the bound.
    other = np.ones(4) if curriculum != "uniform" else np.array([8.0, 4, 2, 1])
    wrong, _ = _bucket_odds_deviation(s, other, epochs)
    assert np.abs(wrong).max() > bound
    # Every epoch uses every batch of every bucket exactly once.
    drawn = [s.batch(i).lengths[0] for i in range(s.steps_per_epoch)]
    assert [drawn.count(x) for x in (4, 8, 16, 32)] == [100, 60, 140, 40]


class CountingCorpus:
    """A corpus that records which documents are read."""

    def __init__(self, inner):
        self.inner, self.read = inner, []
        self.fingerprint, self.vocab_size = inner.fingerprint, inner.vocab_size

    @property
    def num_docs(self):
        return self.inner.num_docs

    def lengths(self):
        return self.inner.lengths()

    def doc(self, i):
        self.read.append(i)
        return self.inner.doc(i)


def test_batches_are_derived_without_reading_and_ranks_read_only_their_sequences():
    corpus = CountingCorpus(positional_corpus([400] * 50))
    for s in (
        DDSampler(corpus, 128, 0, 4, 32),
        MixedSampler(corpus, 128, 0, 32),
        ConcatChunkSampler(corpus, 128, 0, 32),
    ):
        b = s.batch(7)
        assert corpus.read == [] and b.num_tokens == 128
        b.materialize([1])
        assert corpus.read == [d for d, _, _ in b.refs[1]]
        corpus.read.clear()


def test_batch_from_arrays():
    b = GlobalBatch.from_arrays(3, [np.arange(5), np.arange(10, 13)])
    assert b.lengths == [4, 2] and b.num_tokens == 6 and b.step == 3
    assert b.tokens(1).tolist() == [10, 11, 12] and b.tokens(1).dtype == np.int64
