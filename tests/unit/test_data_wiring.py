"""[data] config: bad values name the key; the configured dataset, tokenizer and sampler are
what training gets."""

import json

import pytest

from hetero_sp.config import ConfigError, DataConfig, load_config
from hetero_sp.data.discover import discover_sources
from hetero_sp.data.open_corpus import open_corpus
from hetero_sp.data.prepare import prepare
from hetero_sp.data.samplers import ConcatChunkSampler, DDSampler, MixedSampler, build_sampler
from hetero_sp.data.tokenizer import ByteTokenizer


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["data.sampler=random"],
            r"data\.sampler: got 'random'; allowed values: mixed, dd, concat_chunk",
        ),
        (
            ["data.sampler=dd", "data.max_seq_len=3000"],
            r"data\.max_seq_len: the dd sampler's buckets need a power of two",
        ),
        (
            ["data.sampler=dd", "data.min_seq_len=48"],
            r"data\.min_seq_len: the dd sampler's buckets need a power of two",
        ),
        (
            ["data.sampler=mixed", "data.mixed_source=chunks", "data.min_seq_len=4096"],
            r"data\.min_seq_len: must not exceed max_seq_len=2048",
        ),
        (
            ["data.sampler=dd", "data.tokens_per_step=3000"],
            r"data\.tokens_per_step: dd needs a multiple of max_seq_len=2048",
        ),
        (
            ["data.sampler=concat_chunk", "data.max_seq_len=1000"],
            r"data\.tokens_per_step: concat_chunk needs a multiple",
        ),
        (["data.tokens_per_step=1024"], r"data\.tokens_per_step: must be >= max_seq_len=2048"),
        (["data.curriculum=grow_p2"], r"data\.curriculum: only the dd sampler has a curriculum"),
        (
            ["data.curriculum_cycles=8"],
            r"data\.curriculum_cycles: only the dd sampler has curriculum cycles",
        ),
        (
            ["data.sampler=dd", "data.curriculum=odds", "data.curriculum_odds=[1, 2]"],
            r"data\.curriculum_odds: needs 6 positive values \(buckets 64\.\.2048",
        ),
        (
            ["data.sampler=dd", "data.curriculum_odds=[1, 2, 3, 4, 5, 6]"],
            r"data\.curriculum_odds: is only used with data\.curriculum=odds",
        ),
        (
            ["data.curriculum=linear"],
            r"data\.curriculum: got 'linear'; allowed values: uniform, grow_p2, odds",
        ),
        (
            ["data.tokenizer=gpt2"],
            r"data\.tokenizer: got 'gpt2'; use byte or the path of a tokenizer\.json",
        ),
        (["data.seed=-1"], r"data\.seed: must be >= 0"),
        (["data.dataset=''"], r"data\.dataset: give embedded or a prepared dataset folder"),
    ],
)
def test_bad_data_values_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_good_curriculum_configs_load():
    cfg = load_config(
        None, ["data.sampler=dd", "data.curriculum=grow_p2", "data.curriculum_cycles=8"]
    )
    assert cfg.data.curriculum_cycles == 8
    cfg = load_config(
        None, ["data.sampler=dd", "data.curriculum=odds", "data.curriculum_odds=[6, 5, 4, 3, 2, 1]"]
    )
    assert cfg.data.curriculum_odds == (6.0, 5.0, 4.0, 3.0, 2.0, 1.0)


@pytest.fixture
def small_dataset(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(json.dumps({"text": "word " * (37 * i % 300)}) + "\n" for i in range(1, 200))
    )
    prepare(discover_sources([str(src)]), tmp_path / "ds", ByteTokenizer(), progress=False)
    return tmp_path / "ds"


def test_config_selects_dataset_and_sampler(small_dataset):
    base = dict(dataset=str(small_dataset), tokens_per_step=1024, max_seq_len=256, min_seq_len=16)
    corpus = open_corpus(DataConfig(**base))
    assert corpus.num_docs == 199
    for sampler, cls in (
        ("mixed", MixedSampler),
        ("dd", DDSampler),
        ("concat_chunk", ConcatChunkSampler),
    ):
        s = build_sampler(DataConfig(**base, sampler=sampler), corpus)
        assert isinstance(s, cls) and s.next_batch().num_tokens == 1024
    s = build_sampler(
        DataConfig(**base, sampler="dd", curriculum="grow_p2", curriculum_cycles=2), corpus
    )
    assert (s.cycles, s.odds) == (2, [16.0, 8.0, 4.0, 2.0, 1.0])


def test_dataset_and_tokenizer_mismatches_are_config_errors(small_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.dataset: .* is not a prepared dataset"):
        open_corpus(DataConfig(dataset=str(tmp_path / "missing")))
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")).save(str(tmp_path / "t.json"))
    with pytest.raises(
        ConfigError, match=r"data\.tokenizer: .* is not the tokenizer .* prepared with"
    ):
        open_corpus(DataConfig(dataset=str(small_dataset), tokenizer=str(tmp_path / "t.json")))
