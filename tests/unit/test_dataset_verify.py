"""Damaged shards are found: an index whose offsets go backwards when the dataset is opened,
token ids outside the vocabulary or contents that do not match the manifest's sha256 on a
shard's first read, and every problem by ``hetero-sp verify``, one line each. Each error names
the dataset folder and the shard file and says to run ``hetero-sp verify`` and prepare again."""

import json
import re

import numpy as np
import pytest

from hetero_sp.cli import main as cli_main
from hetero_sp.data.batch import GlobalBatch
from hetero_sp.data.dataset import DatasetError, load_dataset
from hetero_sp.data.discover import discover_sources
from hetero_sp.data.prepare import prepare
from hetero_sp.data.tokenizer import ByteTokenizer
from tests.unit.test_prepare import TEXTS, write_jsonl


@pytest.fixture
def dataset(tmp_path):
    """A byte-token dataset of 40 documents in about 11 shards of at most 300 tokens."""
    source = discover_sources([str(write_jsonl(tmp_path / "a.jsonl", TEXTS))])
    prepare(source, tmp_path / "ds", ByteTokenizer(), shard_tokens=300, progress=False)
    return tmp_path / "ds"


def _first_doc(folder, shard: int) -> int:
    manifest = json.loads((folder / "manifest.json").read_text())
    return sum(s["docs"] for s in manifest["shards"][:shard])


def _shift_offset(folder, shard: int, entry: int, to: int) -> None:
    path = folder / f"shard_{shard:05d}.idx.npy"
    offsets = np.load(path)
    offsets[entry] = to
    np.save(path, offsets)


def _names_the_fix(folder, shard_file: str) -> str:
    """A pattern for an error naming the folder and shard file and saying what to run."""
    return f"{re.escape(str(folder))}.*{re.escape(shard_file)}.*hetero-sp verify.*hetero-sp prepare"


def test_token_ids_outside_the_vocabulary_are_refused_on_read(dataset):
    """The shard keeps its size, so opening the dataset (which reads no tokens) succeeds."""
    path = dataset / "shard_00001.bin"
    path.write_bytes(np.full(path.stat().st_size // 2, 60_000, dtype=np.uint16).tobytes())
    corpus = load_dataset(dataset)
    assert corpus.doc(0).tolist() == ByteTokenizer().encode(TEXTS[0]).tolist()  # shard 0 is fine
    doc = _first_doc(dataset, 1)
    with pytest.raises(DatasetError, match=_names_the_fix(dataset, "shard_00001.bin")) as err:
        corpus.doc(doc)
    assert "token id 60000" in str(err.value) and "vocabulary of 258" in str(err.value)
    # Training reads through batches: the same error, never an IndexError later.
    batch = GlobalBatch(1, (((doc, 0, 3),),), load_dataset(dataset))
    with pytest.raises(DatasetError, match="shard_00001.bin holds token id 60000"):
        batch.tokens(0)


def test_an_offset_shifted_backwards_is_refused_at_open(dataset):
    offsets = np.load(dataset / "shard_00002.idx.npy")
    _shift_offset(dataset, 2, 1, int(offsets[2]) + 1)
    with pytest.raises(DatasetError, match=_names_the_fix(dataset, "shard_00002.idx.npy")) as err:
        load_dataset(dataset)
    assert "do not increase" in str(err.value)


def test_an_offset_shifted_in_order_is_caught_on_the_shards_first_read(dataset):
    offsets = np.load(dataset / "shard_00002.idx.npy")
    _shift_offset(dataset, 2, 1, int(offsets[1]) + 1)  # documents still increase
    corpus = load_dataset(dataset)
    corpus.doc(0)
    with pytest.raises(DatasetError, match=_names_the_fix(dataset, "shard_00002.idx.npy")) as err:
        corpus.doc(_first_doc(dataset, 2))
    assert "sha256" in str(err.value)


def test_verify_reports_every_problem_on_one_line(dataset, capsys):
    assert cli_main(["verify", str(dataset), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("every file matches manifest.json") and str(dataset) in out

    flipped = dataset / "shard_00003.bin"
    data = bytearray(flipped.read_bytes())
    data[4] ^= 1  # the low bit of token 2 (uint16, little-endian): still a valid id
    flipped.write_bytes(bytes(data))
    offsets = np.load(dataset / "shard_00005.idx.npy")
    _shift_offset(dataset, 5, 1, int(offsets[1]) + 1)
    cut = dataset / "shard_00007.bin"
    cut.write_bytes(cut.read_bytes()[:-2])
    (dataset / "shard_00008.idx.npy").write_bytes(b"not an index")

    assert cli_main(["verify", str(dataset), "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith(f"{dataset / 'shard_00003.bin'} or ") and "sha256" in lines[0]
    assert lines[1].startswith(f"{dataset / 'shard_00005.bin'} or ") and "sha256" in lines[1]
    assert lines[2].startswith(f"{dataset / 'shard_00007.bin'} is missing or not ")
    assert lines[3].startswith(f"{dataset / 'shard_00008.idx.npy'} cannot be read")
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "4 problems" in err[0]
    assert "hetero-sp prepare" in err[0]


def test_verify_of_a_folder_without_a_dataset_is_one_error(tmp_path, capsys):
    assert cli_main(["verify", str(tmp_path), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "not a prepared dataset" in captured.err
