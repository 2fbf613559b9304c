"""``prepare`` on bad input: each case stops with its file and record number, or under
``--on-error skip`` is skipped, counted by reason and listed; misuse of the output folder is
refused with what to do; the ``hetero-sp prepare`` command reports both."""

import json
import re

import pytest

from hetero_sp.cli import main as cli_main
from hetero_sp.data.discover import discover_sources
from hetero_sp.data.prepare import PrepareError, prepare
from hetero_sp.data.tokenizer import ByteTokenizer, HFTokenizer
from tests.unit.test_prepare import write_hf, write_jsonl, write_parquet


def _hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tok.json"))
    return HFTokenizer(tmp_path / "tok.json")


def _case(tmp_path, name):
    """(input path, tokenizer, reason, record number, message pattern) of one bad-input case."""
    byte = ByteTokenizer()
    if name == "bad_json":
        p = tmp_path / "a.jsonl"
        p.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": "cut off\n{"text": "ok"}\n')
        return p, byte, "corrupt_record", 3, "is not valid JSON"
    if name == "json_array":
        p = tmp_path / "a.json"
        p.write_text('[\n  {"text": "ok"}\n]\n')
        return (
            p,
            byte,
            "corrupt_record",
            1,
            r"is not valid JSON .*one JSON array, not JSON lines .*jq -c '\.\[\]' a\.json",
        )
    if name == "no_field":
        p = tmp_path / "a.jsonl"
        p.write_text('{"text": "ok"}\n{"body": "x", "id": 1}\n')
        return p, byte, "missing_field", 2, r"has no field 'text' \(fields: body, id\)"
    if name == "not_a_string":
        p = tmp_path / "a.jsonl"
        p.write_text('{"text": 42}\n{"text": "ok"}\n')
        return p, byte, "missing_field", 1, "field 'text' is a int, not a string"
    if name == "empty":
        p = tmp_path / "a.jsonl"
        p.write_text('{"text": "ok"}\n\n{"text": " \\n "}\n')  # line 2 is blank: not a record
        return p, byte, "empty_document", 3, "is empty or only whitespace"
    if name == "corrupt_parquet":
        p = tmp_path / "a.parquet"
        p.write_bytes(b"PAR1 this is not really parquet")
        return p, byte, "unreadable_file", 1, "is not a readable parquet file"
    if name == "parquet_null":
        return (
            write_parquet(tmp_path / "a.parquet", ["ok", None, "ok"]),
            byte,
            "missing_field",
            2,
            "field .text. is null",
        )
    if name == "parquet_no_column":
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = tmp_path / "a.parquet"
        pq.write_table(pa.table({"body": ["x", "y"]}), p)
        return p, byte, "missing_field", 1, r"has no column 'text' \(columns: body\)"
    if name == "hf_no_column":
        import datasets

        datasets.Dataset.from_dict({"body": ["x", "y"]}).save_to_disk(str(tmp_path / "hf2"))
        return tmp_path / "hf2", byte, "missing_field", 1, "has no column 'text'"
    if name == "not_utf8":
        p = tmp_path / "a.txt"
        p.write_bytes(b"a a \xff\xfe a")
        return p, _hf_tokenizer(tmp_path), "corrupt_record", 1, "is not valid UTF-8"
    raise AssertionError(name)


CASES = [
    "bad_json",
    "json_array",
    "no_field",
    "not_a_string",
    "empty",
    "corrupt_parquet",
    "parquet_null",
    "parquet_no_column",
    "hf_no_column",
    "not_utf8",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_stops_with_file_and_record(tmp_path, name):
    path, tok, reason, record, message = _case(tmp_path, name)
    sources = discover_sources([str(path)])
    where = re.escape(f"{sources[0].path}, record {record}: ")
    with pytest.raises(PrepareError, match=f"{where}{message}.*\\[{reason}\\].*--on-error skip"):
        prepare(sources, tmp_path / "out", tok, progress=False)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_skipped_and_counted(tmp_path, name):
    path, tok, reason, record, _ = _case(tmp_path, name)
    good = write_jsonl(tmp_path / "good.jsonl", ["a a a"])
    sources = discover_sources([str(path), str(good)])
    result = prepare(sources, tmp_path / "out", tok, on_error="skip", progress=False)
    assert reason in result["skipped"] and set(result["skipped"]) == {reason}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    first = manifest["skipped_examples"][0]
    assert (first["source"], first["record"], first["reason"]) == (
        str(sources[0].path),
        record,
        reason,
    )
    assert result["documents"] >= 1  # the good file went through


def test_a_file_that_vanishes_is_unreadable(tmp_path):
    sources = discover_sources(
        [
            str(write_jsonl(tmp_path / "a.jsonl", ["x"])),
            str(write_jsonl(tmp_path / "b.jsonl", ["y"])),
        ]
    )
    (tmp_path / "a.jsonl").unlink()
    with pytest.raises(PrepareError, match=r"a\.jsonl, record 1: cannot be read"):
        prepare(sources, tmp_path / "out", ByteTokenizer(), progress=False)
    result = prepare(sources, tmp_path / "out2", ByteTokenizer(), on_error="skip", progress=False)
    assert result["skipped"] == {"unreadable_file": 1} and result["documents"] == 1


def test_cli_prepare_reports_skips_and_errors(tmp_path, capsys):
    path, _, _, _, _ = _case(tmp_path, "no_field")
    out = tmp_path / "out"
    assert cli_main(["prepare", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a.jsonl, record 2: has no field 'text'" in err
    # The stopped run left its progress; the same command with skip resumes and finishes it.
    assert (
        cli_main(["prepare", str(path), "--out", str(out), "--no-progress", "--on-error", "skip"])
        == 0
    )
    stdout = capsys.readouterr().out
    assert "prepared 1 documents" in stdout and "skipped 1 records (missing_field 1)" in stdout
    assert cli_main(["prepare", str(path), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a prepared dataset" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "prepare",
                str(path),
                "--out",
                str(out),
                "--no-progress",
                "--overwrite",
                "--on-error",
                "skip",
                "--text-field",
                "body",
            ]
        )
        == 0
    )
    assert "skipped 1 records (missing_field 1)" in capsys.readouterr().out
    assert cli_main(["prepare", str(tmp_path / "nope*.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_output_folder_misuse_is_refused_and_fixed_inputs_resume(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ["x" * 50] * 4)  # 52 tokens each: one shard per document
    b = tmp_path / "b.jsonl"
    b.write_text('{"body": 1}\n')
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not empty and holds no dataset"):
        prepare(discover_sources([str(a)]), foreign, ByteTokenizer(), progress=False)

    def run(out, **kw):
        sources = discover_sources([str(a), str(b)])
        return prepare(
            sources, tmp_path / out, ByteTokenizer(), shard_tokens=60, progress=False, **kw
        )

    for out in ("fix_b", "change_a"):
        with pytest.raises(PrepareError, match=r"b\.jsonl, record 1"):
            run(out)
    # The input that stopped the run is not in any shard yet: fix it and the same call resumes.
    write_jsonl(b, ["y"])
    assert run("fix_b")["resumed"]
    run("fresh")
    assert {p.name: p.read_bytes() for p in (tmp_path / "fix_b").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "fresh").iterdir()
    }
    # An input already (partly) in shards must not change under an unfinished run.
    write_jsonl(a, ["z" * 51] * 4)
    with pytest.raises(
        PrepareError, match=r"a\.jsonl changed after part of it was written.*--overwrite"
    ):
        run("change_a")
    assert run("change_a", overwrite=True)["documents"] == 5


def test_dataset_splits_are_chosen_or_refused(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["one", "two"]}),
            "test": datasets.Dataset.from_dict({"text": ["three"]}),
        }
    ).save_to_disk(str(folder))
    with pytest.raises(ValueError, match="holds the splits train, test; choose one with --split"):
        prepare(discover_sources([str(folder)]), tmp_path / "o1", ByteTokenizer(), progress=False)
    result = prepare(
        discover_sources([str(folder)], split="test"),
        tmp_path / "o2",
        ByteTokenizer(),
        progress=False,
    )
    assert result["documents"] == 1
    plain = write_hf(tmp_path / "plain", ["x", "y"])
    with pytest.raises(ValueError, match="holds one dataset without splits; drop --split train"):
        prepare(
            discover_sources([str(plain)], split="train"),
            tmp_path / "o3",
            ByteTokenizer(),
            progress=False,
        )
