"""Inputs of ``hetero-sp prepare``: each source file is a numbered stream of records.

Record numbers start at 1 (a jsonl record's number is its line number; a parquet or Hugging
Face dataset record's number is its row + 1; a text file is one record). A record is a
document's text, or a problem (reason, message) when it cannot be one. Sources read lazily,
one jsonl line, one parquet row group or one 1,024-row slice of a ``datasets`` table at a time,
and can start after any record, which is how an interrupted ``prepare`` resumes.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

UNREADABLE, CORRUPT, MISSING = "unreadable_file", "corrupt_record", "missing_field"
EMPTY, TOO_SHORT = "empty_document", "too_short"
EMPTY_FILE = "empty_file"
"""A file with no content: skipped and counted whatever ``--on-error`` says (it holds no record
to lose, and folders of text files often hold a few)."""


@dataclass(frozen=True)
class Record:
    number: int
    payload: str | bytes | None
    """The document; None for a blank jsonl line (not a record) or a problem."""
    problem: tuple[str, str] | None = None
    """(reason, message) when the record cannot be used."""
    nbytes: int = 0
    """Input bytes this record stands for (for the progress bar)."""


def sha256_file(path: Path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stat_entry(path: Path) -> dict:
    try:
        st = path.stat()
        return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError as err:
        return {"path": str(path), "error": str(err)}


def field_value(value, field: str) -> tuple[str | bytes | None, tuple[str, str] | None]:
    if isinstance(value, str | bytes):
        return value, None
    what = "null" if value is None else f"a {type(value).__name__}"
    return None, (MISSING, f"field {field!r} is {what}, not a string")


class Source(ABC):
    kind: str

    def __init__(self, path: str | Path, field: str = "text") -> None:
        self.path, self.field = Path(path).resolve(), field

    def key(self) -> dict:
        """What must not change between an interrupted run and its resumption."""
        return {"kind": self.kind, "field": self.field, **stat_entry(self.path)}

    def size(self) -> int:
        return self.key().get("bytes", 0)

    def entry(self) -> dict:
        """The manifest's record of this source: what it was and its content hash."""
        out = {"kind": self.kind, "path": str(self.path)}
        try:
            out.update(bytes=self.path.stat().st_size, sha256=sha256_file(self.path))
        except OSError as err:
            out["error"] = str(err)
        return out

    @abstractmethod
    def records(self, after: int = 0) -> Iterator[Record]:
        """The records numbered above ``after``."""

    def _empty_file(self, after: int) -> Record | None:
        """The one record of a 0-byte file (an unreadable file is reported when it is read)."""
        try:
            empty = self.path.stat().st_size == 0
        except OSError:
            return None
        return Record(1, None, (EMPTY_FILE, "is an empty file")) if empty and after == 0 else None


class JsonlSource(Source):
    kind = "jsonl"

    def records(self, after: int = 0) -> Iterator[Record]:
        if (empty := self._empty_file(after)) is not None:
            yield empty
            return
        number = after
        try:
            with open(self.path, "rb") as f:
                for number, line in enumerate(f, 1):
                    if number <= after:
                        continue
                    yield self._parse(number, line)
        except OSError as err:
            yield Record(number + 1, None, (UNREADABLE, f"cannot be read: {err}"))

    def _parse(self, number: int, line: bytes) -> Record:
        if not line.strip():
            return Record(number, None, nbytes=len(line))
        array = line.lstrip().startswith(b"[")
        hint = (
            "; the file looks like one JSON array, not JSON lines (one object per line): "
            f"convert it, e.g. jq -c '.[]' {self.path.name} > {self.path.stem}.jsonl"
            if array
            else ""
        )
        try:
            obj = json.loads(line)
        except ValueError as err:
            return Record(number, None, (CORRUPT, f"is not valid JSON ({err}){hint}"), len(line))
        if not isinstance(obj, dict):
            problem = (
                MISSING,
                f"is a JSON {type(obj).__name__}, not an object with {self.field!r}{hint}",
            )
            return Record(number, None, problem, len(line))
        if self.field not in obj:
            fields = ", ".join(sorted(obj)[:8]) or "none"
            problem = (MISSING, f"has no field {self.field!r} (fields: {fields})")
            return Record(number, None, problem, len(line))
        payload, problem = field_value(obj[self.field], self.field)
        return Record(number, payload, problem, len(line))


class ParquetSource(Source):
    kind = "parquet"

    def records(self, after: int = 0) -> Iterator[Record]:
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("parquet input needs pyarrow: pip install 'hetero-sp[data]'") from err
        if (empty := self._empty_file(after)) is not None:
            yield empty
            return
        try:
            pf = pq.ParquetFile(self.path)
            meta = pf.metadata
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError and more for bad files
            yield Record(after + 1, None, (UNREADABLE, f"is not a readable parquet file: {err}"))
            return
        per_row = max(self.size() // max(meta.num_rows, 1), 1)
        names = pf.schema_arrow.names
        first = 0
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            if first + rows <= after:
                first += rows
                continue
            if self.field not in names:
                missing = (MISSING, f"has no column {self.field!r} (columns: {', '.join(names)})")
                values = None
            else:
                try:
                    values = pf.read_row_group(group, columns=[self.field]).column(0).to_pylist()
                except Exception as err:
                    problem = (UNREADABLE, f"row group {group} cannot be read: {err}")
                    yield Record(max(first, after) + 1, None, problem)
                    return
            for row in range(max(after - first, 0), rows):
                if values is None:
                    yield Record(first + row + 1, None, missing, per_row)
                    continue
                payload, problem = field_value(values[row], self.field)
                yield Record(first + row + 1, payload, problem, per_row)
            first += rows


class TextSource(Source):
    """One plain file = one document; its bytes are taken as they are."""

    kind = "text"

    def records(self, after: int = 0) -> Iterator[Record]:
        if after >= 1:
            return
        try:
            data = self.path.read_bytes()
        except OSError as err:
            yield Record(1, None, (UNREADABLE, f"cannot be read: {err}"))
            return
        if not data.strip():
            yield Record(1, None, (EMPTY_FILE, "is empty or only whitespace"), len(data))
            return
        yield Record(1, data, None, len(data))
