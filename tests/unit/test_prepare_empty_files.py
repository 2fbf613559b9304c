"""Empty input files are skipped and counted (reason ``empty_file``) under either ``--on-error``,
and ``hetero-sp prepare`` reports them in its summary; an empty record inside a file still
follows ``--on-error``."""

import json

import pytest

from hetero_sp.cli import main as cli_main
from hetero_sp.data.discover import discover_sources
from hetero_sp.data.prepare import PrepareError, prepare
from hetero_sp.data.tokenizer import ByteTokenizer
from tests.unit.test_prepare import write_jsonl, write_parquet


def _folder(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("first document")
    (folder / "b.txt").write_bytes(b"")
    (folder / "c.txt").write_text(" \n\t\n")
    (folder / "d.txt").write_text("second document")
    return folder


@pytest.mark.parametrize("on_error", ["stop", "skip"])
def test_empty_files_of_a_folder_are_skipped_and_counted(tmp_path, on_error):
    folder = _folder(tmp_path)
    sources = discover_sources([str(folder)])
    result = prepare(sources, tmp_path / "out", ByteTokenizer(), on_error=on_error, progress=False)
    assert result["documents"] == 2 and result["records"] == 4
    assert result["skipped"] == {"empty_file": 2}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [(e["source"], e["reason"]) for e in manifest["skipped_examples"]] == [
        (str((folder / "b.txt").resolve()), "empty_file"),
        (str((folder / "c.txt").resolve()), "empty_file"),
    ]


def test_empty_jsonl_and_parquet_files_are_skipped(tmp_path):
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    good = write_parquet(tmp_path / "good.parquet", ["one", "two"])
    inputs = [str(tmp_path / "empty.parquet"), str(tmp_path / "empty.jsonl"), str(good)]
    result = prepare(discover_sources(inputs), tmp_path / "out", ByteTokenizer(), progress=False)
    assert result["documents"] == 2 and result["skipped"] == {"empty_file": 2}
    # An empty record is bad input, not an empty file: it still stops the run.
    path = write_jsonl(tmp_path / "a.jsonl", ["ok", ""])
    with pytest.raises(PrepareError, match=r"record 2: is empty .*\[empty_document\]"):
        prepare(discover_sources([str(path)]), tmp_path / "out2", ByteTokenizer(), progress=False)


def test_cli_prepare_reports_the_empty_files(tmp_path, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["prepare", str(folder), "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "prepared 2 documents" in stdout
    assert "skipped 2 records (empty_file 2)" in stdout
