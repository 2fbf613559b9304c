"""Hugging Face ``datasets`` folders written by ``save_to_disk`` as a source of ``prepare``.

``datasets`` is optional (the ``data`` extra) and imported only when such a folder is read.
Rows are read 1,024 at a time from the memory-mapped Arrow files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from hetero_sp.core.errors import UserError
from hetero_sp.data.sources import (
    MISSING,
    UNREADABLE,
    Record,
    Source,
    field_value,
    sha256_file,
    stat_entry,
)

_SLICE_ROWS = 1024


class SplitError(UserError):
    """A dataset folder with several splits and no (or an unknown) --split."""


class HFDiskSource(Source):
    """A Hugging Face ``datasets`` folder written by ``save_to_disk`` (one split)."""

    kind = "hf"

    def __init__(self, path: str | Path, field: str = "text", split: str | None = None) -> None:
        super().__init__(path, field)
        self.split = split

    def _files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file())

    def key(self) -> dict:
        files = [stat_entry(p) for p in self._files()]
        return {
            "kind": self.kind,
            "path": str(self.path),
            "field": self.field,
            "split": self.split,
            "files": files,
        }

    def size(self) -> int:
        return sum(f.get("bytes", 0) for f in self.key()["files"])

    def entry(self) -> dict:
        h = hashlib.sha256()
        for p in self._files():
            h.update(str(p.relative_to(self.path)).encode() + b"\0")
            sha256_file(p, h)
        return {
            "kind": self.kind,
            "path": str(self.path),
            "split": self.split,
            "bytes": self.size(),
            "sha256": h.hexdigest(),
        }

    def _open(self):
        try:
            import datasets
        except ImportError as err:
            raise ImportError(
                "Hugging Face dataset folders need the `datasets` package: "
                "pip install 'hetero-sp[data]' (or pip install datasets)"
            ) from err
        ds = datasets.load_from_disk(str(self.path))
        if isinstance(ds, datasets.DatasetDict):
            if self.split is None and len(ds) == 1:
                return next(iter(ds.values()))
            if self.split not in ds:
                raise SplitError(
                    f"{self.path} holds the splits {', '.join(ds)}; choose one with --split"
                )
            return ds[self.split]
        if self.split is not None:
            raise SplitError(
                f"{self.path} holds one dataset without splits; drop --split {self.split}"
            )
        return ds

    def records(self, after: int = 0) -> Iterator[Record]:
        try:
            ds = self._open()
        except (ImportError, SplitError):
            raise
        except Exception as err:  # datasets/pyarrow raise many kinds for a damaged folder
            yield Record(after + 1, None, (UNREADABLE, f"is not a readable dataset folder: {err}"))
            return
        per_row = max(self.size() // max(len(ds), 1), 1)
        if self.field not in ds.column_names:
            problem = (
                MISSING,
                f"has no column {self.field!r} (columns: {', '.join(ds.column_names)})",
            )
            for row in range(after, len(ds)):
                yield Record(row + 1, None, problem, per_row)
            return
        column = ds.select_columns([self.field])
        for begin in range(after, len(ds), _SLICE_ROWS):
            try:
                values = column[begin : begin + _SLICE_ROWS][self.field]
            except Exception as err:  # a damaged arrow file fails only when its rows are read
                yield Record(
                    begin + 1, None, (UNREADABLE, f"rows from {begin + 1} cannot be read: {err}")
                )
                return
            for row, value in enumerate(values, begin):
                payload, problem = field_value(value, self.field)
                yield Record(row + 1, payload, problem, per_row)
