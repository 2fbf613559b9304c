"""Which sources the inputs of ``hetero-sp prepare`` name."""

from __future__ import annotations

import glob as globlib
from pathlib import Path

from hetero_sp.core.errors import UserError
from hetero_sp.data.hf_source import HFDiskSource
from hetero_sp.data.sources import JsonlSource, ParquetSource, Source, TextSource

FORMATS = ("auto", "jsonl", "parquet", "text", "hf")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


_BY_SUFFIX = {
    ".jsonl": JsonlSource,
    ".ndjson": JsonlSource,
    ".json": JsonlSource,
    ".parquet": ParquetSource,
    ".pq": ParquetSource,
}
_BY_FORMAT = {"jsonl": JsonlSource, "parquet": ParquetSource, "text": TextSource}


def _file_source(path: Path, fmt: str, field: str) -> Source:
    cls = _BY_FORMAT.get(fmt) or _BY_SUFFIX.get(path.suffix.lower(), TextSource)
    return cls(path, field)


def discover_sources(
    inputs: list[str],
    fmt: str = "auto",
    field: str = "text",
    pattern: str = "**/*.txt",
    split: str | None = None,
) -> list[Source]:
    """Sources of the inputs, in the order given; a folder's files in sorted path order.

    An input is a file (jsonl/parquet by suffix, else text), a ``save_to_disk`` folder, another
    folder (its files matching ``pattern``) or a glob.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown input format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if not inputs:
        raise UserError("give at least one input file, folder or glob")
    sources: list[Source] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir() and (
            fmt == "hf" or (fmt == "auto" and any((path / m).is_file() for m in _HF_MARKERS))
        ):
            sources.append(HFDiskSource(path, field, split))
            continue
        if fmt == "hf":
            raise UserError(f"{text} is not a folder written by datasets' save_to_disk")
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.glob(pattern) if p.is_file())
        else:
            files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            where = (
                f"folder {text} has no file matching {pattern!r}"
                if path.is_dir()
                else (f"input {text} does not exist and matches no file")
            )
            raise UserError(f"{where}; check the path (or --glob)")
        sources += [_file_source(p, fmt, field) for p in files]
    return sources
