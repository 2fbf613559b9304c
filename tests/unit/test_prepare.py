"""``prepare``: every input format gives the documents back exactly, the output is deterministic,
an interrupted run resumes to byte-identical output, and the embedded corpus goes through it."""

import json
from pathlib import Path

import numpy as np
import pytest

from hetero_sp.data import embedded as embedded_mod
from hetero_sp.data import prepare as prepare_mod
from hetero_sp.data.dataset import DatasetError, load_dataset
from hetero_sp.data.discover import discover_sources
from hetero_sp.data.embedded import embedded_dataset, stdlib_source_files
from hetero_sp.data.prepare import prepare
from hetero_sp.data.tokenizer import ByteTokenizer, HFTokenizer

TEXTS = [f"document {i}: " + "héllo wörld " * (i % 7) + "x" * (i * 13 % 50) for i in range(40)]


def write_jsonl(path: Path, texts, field="text") -> Path:
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def write_parquet(path: Path, texts, rows_per_group=7) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts}), path, row_group_size=rows_per_group)
    return path


def write_hf(path: Path, texts) -> Path:
    import datasets

    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    return path


def _docs(folder) -> list[np.ndarray]:
    corpus = load_dataset(folder)
    return [np.asarray(corpus.doc(i)) for i in range(corpus.num_docs)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "text", "hf"])
def test_each_input_format_gives_the_documents_back(tmp_path, fmt):
    if fmt == "jsonl":
        inputs = [
            write_jsonl(tmp_path / "a.jsonl", TEXTS[:25]),
            write_jsonl(tmp_path / "b.jsonl", TEXTS[25:]),
        ]
    elif fmt == "parquet":
        inputs = [write_parquet(tmp_path / "a.parquet", TEXTS)]
    elif fmt == "text":
        (tmp_path / "txt" / "sub").mkdir(parents=True)
        for i, t in enumerate(
            TEXTS
        ):  # sorted path order: 00..39, the sub folder's after 'sub' < ...
            (tmp_path / "txt" / f"{i:02d}.txt").write_text(t)
        (tmp_path / "txt" / "ignored.md").write_text("not matched by the glob")
        inputs = [tmp_path / "txt"]
    else:
        inputs = [write_hf(tmp_path / "hf", TEXTS)]
    sources = discover_sources([str(p) for p in inputs])
    assert {s.kind for s in sources} == {fmt}
    result = prepare(sources, tmp_path / "out", ByteTokenizer(), shard_tokens=300, progress=False)
    tok = ByteTokenizer()
    got = _docs(tmp_path / "out")
    assert len(got) == len(TEXTS) and result["documents"] == len(TEXTS)
    assert all(np.array_equal(g, tok.encode(t)) for g, t in zip(got, TEXTS))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_tokens"] == sum(len(tok.encode(t)) for t in TEXTS) == result["tokens"]
    assert len(manifest["shards"]) == result["shards"] > 1  # 300-token shards
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    assert manifest["dtype"] == "uint16" and manifest["skipped"] == {}


def test_hugging_face_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "again": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    texts = ["hello world", "world hello again again", "hello something"]
    src = discover_sources([str(write_jsonl(tmp_path / "in.jsonl", texts))])
    hf = HFTokenizer(tmp_path / "tokenizer.json")
    prepare(src, tmp_path / "out", hf, progress=False)
    assert [d.tolist() for d in _docs(tmp_path / "out")] == [[1, 2], [2, 1, 3, 3], [1, 0]]
    manifest = load_dataset(tmp_path / "out").manifest
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["vocab_size"] == 4


def test_same_inputs_give_byte_identical_output(tmp_path):
    inputs = [
        str(write_jsonl(tmp_path / "a.jsonl", TEXTS)),
        str(write_parquet(tmp_path / "b.parquet", TEXTS)),
    ]
    for out in ("one", "two"):
        prepare(
            discover_sources(inputs),
            tmp_path / out,
            ByteTokenizer(),
            shard_tokens=500,
            progress=False,
        )
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert not (tmp_path / "one" / "progress.json").exists()


@pytest.mark.parametrize(
    "stop_after, written",
    [(0, "nothing"), (0, "partial"), (2, "nothing"), (2, "partial"), (5, "all")],
)
def test_resume_after_interruption_gives_byte_identical_output(
    tmp_path, monkeypatch, stop_after, written
):
    """The run is stopped while writing shard ``stop_after`` (before its files, half way through
    one, or after they reached the disk but before the progress file lists them), then started
    again."""
    inputs = [
        str(write_jsonl(tmp_path / "a.jsonl", TEXTS)),
        str(write_parquet(tmp_path / "b.parquet", TEXTS)),
    ]
    args = dict(shard_tokens=400, progress=False)
    prepare(discover_sources(inputs), tmp_path / "clean", ByteTokenizer(), **args)

    real_write = prepare_mod._write_shard

    def interrupted(out, index, docs, dtype):
        if index == stop_after:
            if written == "partial":
                (out / f"shard_{index:05d}.bin.tmp").write_bytes(b"half a shard")
            if written == "all":
                real_write(out, index, docs, dtype)
            raise KeyboardInterrupt
        return real_write(out, index, docs, dtype)

    monkeypatch.setattr(prepare_mod, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(discover_sources(inputs), tmp_path / "resumed", ByteTokenizer(), **args)
    with pytest.raises(DatasetError, match="interrupted"):
        load_dataset(tmp_path / "resumed")
    monkeypatch.setattr(prepare_mod, "_write_shard", real_write)
    result = prepare(discover_sources(inputs), tmp_path / "resumed", ByteTokenizer(), **args)
    assert result["resumed"] == (stop_after > 0)
    assert _files(tmp_path / "resumed") == _files(tmp_path / "clean")


def test_embedded_corpus_is_prepared_once_into_the_cache(tmp_path, monkeypatch):
    corpus = embedded_dataset(max_files=40, cache_dir=tmp_path)
    tok = ByteTokenizer()
    expected = [
        tok.encode(p.read_bytes()) for p in stdlib_source_files()[:40] if p.read_bytes().strip()
    ]
    assert corpus.num_docs == len(expected)
    assert all(np.array_equal(corpus.doc(i), e) for i, e in enumerate(expected))
    assert [p.name for p in tmp_path.iterdir()] == [corpus.path.name]

    def no_prepare(*args, **kwargs):
        raise AssertionError("the cached embedded corpus was prepared again")

    monkeypatch.setattr(embedded_mod, "prepare", no_prepare)
    again = embedded_dataset(max_files=40, cache_dir=tmp_path)
    assert again.fingerprint == corpus.fingerprint


def test_a_damaged_dataset_folder_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="hetero-sp prepare"):
        load_dataset(tmp_path)
    prepare(
        discover_sources([str(write_jsonl(tmp_path / "a.jsonl", TEXTS))]),
        tmp_path / "out",
        ByteTokenizer(),
        progress=False,
    )
    shard = tmp_path / "out" / "shard_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DatasetError, match="shard_00000.bin is missing or not"):
        load_dataset(tmp_path / "out")


def test_prepare_memory_does_not_grow_with_the_input(tmp_path):
    """Records stream through bounded buffers: 8x the input, same peak of traced memory
    (numpy registers its buffers with tracemalloc)."""
    import tracemalloc

    peaks = {}
    for docs in (500, 4000):  # 1 MB and 8 MB of jsonl
        path = write_jsonl(tmp_path / f"in{docs}.jsonl", ["x" * 2000] * docs)
        tracemalloc.start()
        try:
            prepare(
                discover_sources([str(path)]),
                tmp_path / f"out{docs}",
                ByteTokenizer(),
                shard_tokens=50_000,
                progress=False,
            )
            peaks[docs] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[4000] < 1.5 * peaks[500], peaks
    assert peaks[4000] < 8e6 / 2, peaks  # well under the input's size
