"""``prepare`` resumes an interrupted run to byte-identical output whatever the inputs are: jsonl,
parquet, a text folder and a Hugging Face ``datasets`` folder in one run, stopped in each of them,
and a progress file written before ``datasets`` folders were recorded by path."""

import json
from pathlib import Path

import pytest

from hetero_sp.data import prepare as prepare_mod
from hetero_sp.data.discover import discover_sources
from hetero_sp.data.prepare import prepare
from hetero_sp.data.tokenizer import ByteTokenizer
from tests.unit.test_prepare import TEXTS, write_hf, write_jsonl, write_parquet

ARGS = dict(shard_tokens=300, progress=False)


def _inputs(tmp_path: Path) -> list[str]:
    """Ten documents of each input kind, in the order jsonl, parquet, text folder, datasets."""
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, text in enumerate(TEXTS[20:30]):
        (folder / f"{i:02d}.txt").write_text(text)
    return [
        str(write_jsonl(tmp_path / "a.jsonl", TEXTS[:10])),
        str(write_parquet(tmp_path / "b.parquet", TEXTS[10:20], rows_per_group=3)),
        str(folder),
        str(write_hf(tmp_path / "hf", TEXTS[30:])),
    ]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _interrupt_at(monkeypatch, stop_after: int, written: str) -> None:
    """Make shard ``stop_after`` stop the run: before its files, or once they are on disk but
    before the progress file lists them."""
    real_write = prepare_mod._write_shard

    def interrupted(out, index, docs, dtype):
        if index == stop_after:
            if written == "all":
                real_write(out, index, docs, dtype)
            raise KeyboardInterrupt
        return real_write(out, index, docs, dtype)

    monkeypatch.setattr(prepare_mod, "_write_shard", interrupted)


def _source_of_each_shard(clean: Path) -> list[str]:
    """The kind of input the last document of each shard of the clean run came from."""
    manifest = json.loads((clean / "manifest.json").read_text())
    ends = []
    for shard in manifest["shards"]:
        ends.append(shard["docs"] + (ends[-1] if ends else 0))
    return [("jsonl", "parquet", "text", "hf")[(end - 1) // 10] for end in ends]


@pytest.mark.parametrize("written", ["nothing", "all"])
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "text", "hf"])
def test_interrupted_in_each_input_kind_resumes_to_the_same_bytes(
    tmp_path, monkeypatch, kind, written
):
    inputs = _inputs(tmp_path)
    prepare(discover_sources(inputs), tmp_path / "clean", ByteTokenizer(), **ARGS)
    kinds = _source_of_each_shard(tmp_path / "clean")
    # The first shard that ends inside this kind's input, but not the very first shard.
    stop_after = max(kinds.index(kind), 1)
    assert kinds.count(kind) >= 2, kinds  # the shard size splits every input

    _interrupt_at(monkeypatch, stop_after, written)
    with pytest.raises(KeyboardInterrupt):
        prepare(discover_sources(inputs), tmp_path / "resumed", ByteTokenizer(), **ARGS)
    monkeypatch.undo()
    result = prepare(discover_sources(inputs), tmp_path / "resumed", ByteTokenizer(), **ARGS)
    assert result["resumed"]
    assert _files(tmp_path / "resumed") == _files(tmp_path / "clean")


def test_progress_file_of_an_older_prepare_with_a_datasets_folder_resumes(tmp_path, monkeypatch):
    """Before this fix a ``datasets`` folder was recorded by its files only (no ``path``), and
    resuming such a run failed with ``KeyError: 'path'``."""
    inputs = _inputs(tmp_path)
    prepare(discover_sources(inputs), tmp_path / "clean", ByteTokenizer(), **ARGS)
    stop_after = _source_of_each_shard(tmp_path / "clean").index("hf") + 1
    _interrupt_at(monkeypatch, stop_after, "nothing")
    with pytest.raises(KeyboardInterrupt):
        prepare(discover_sources(inputs), tmp_path / "resumed", ByteTokenizer(), **ARGS)
    monkeypatch.undo()
    progress_path = tmp_path / "resumed" / "progress.json"
    progress = json.loads(progress_path.read_text())
    assert progress["next"][0] == len(progress["params"]["sources"]) - 1  # inside the datasets
    for key in progress["params"]["sources"]:
        if key["kind"] == "hf":
            key.pop("path", None)
    progress_path.write_text(json.dumps(progress, indent=1, sort_keys=True))

    result = prepare(discover_sources(inputs), tmp_path / "resumed", ByteTokenizer(), **ARGS)
    assert result["resumed"]
    assert _files(tmp_path / "resumed") == _files(tmp_path / "clean")
