"""The JSONL files of a run folder (``metrics.jsonl``, ``plans.jsonl``): one JSON object with an
integer ``"step"`` per line, appended by rank 0 while it trains.

A crash mid-write leaves a last line without its newline. Writers call
:func:`repair_partial_line` before appending, so a resumed run starts a new line instead of
merging its first record into the cut one; readers skip such a line with a warning and report
any other line that is not a record as an error naming the file and the line. No torch here:
``hetero-sp plot`` reads these files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hetero_sp.core.errors import UserError
from hetero_sp.log import get_logger

logger = get_logger(__name__)

_BLOCK = 1 << 16  # bytes read at a time while looking back for the last newline


class RunFileError(UserError):
    """A line of a run's JSONL file that is not a record; the message names the file and line."""


def _parse_record(line: str | bytes) -> dict:
    """One line as a record; ``ValueError`` says why not."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:  # its own "line 1 column N" would read as the file's
        raise ValueError(f"not valid JSON at column {err.colno} ({err.msg})") from err
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError('not a JSON object with an integer "step"')
    return record


def _last_line_start(f, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        f.seek(start)
        i = f.read(end - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def repair_partial_line(path: str | Path) -> None:
    """Make ``path`` end with a newline before it is appended to: a last line without one (a
    write cut short by a crash) gets its newline when it is a whole record and is cut off
    otherwise, with a warning. A missing or empty file, or one that ends with a newline, is
    left as it is (one byte read)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start = _last_line_start(f, size)
        f.seek(start)
        tail = f.read(size - start)
        try:
            _parse_record(tail)
        except ValueError:
            f.truncate(start)
            repaired = f"cut off a partial last line of {size - start} bytes"
        else:
            f.seek(size)
            f.write(b"\n")
            repaired = "added the newline its last record lacked"
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: %s (a write cut short by a crash)", path, repaired)


def read_records(path: str | Path) -> dict[int, dict]:
    """The records of a run's JSONL file by step; a later record of a step replaces an earlier
    one (a resumed run writes again the steps since its checkpoint)."""
    lines = Path(path).read_text(errors="replace").split("\n")
    by_step: dict[int, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = _parse_record(line)
        except ValueError as err:
            if number == len(lines):  # no newline after it: a write cut short by a crash
                logger.warning(
                    "%s, line %d: skipping a partial last line (a write cut short by a crash)",
                    path,
                    number,
                )
                continue
            raise RunFileError(
                f"{path}, line {number}: {err}; the file was damaged or edited: delete or fix "
                "that line"
            ) from err
        by_step[record["step"]] = record
    return by_step
