"""A prepared dataset folder, memory-mapped: the corpus samplers read at training time.

Only the document index (three integers per document) is loaded into memory; token shards are
memory-mapped. Opening checks every index; a process reads a shard in full once, to check its
token ids and sha256, the first time it reads from it (see :class:`ShardedCorpus`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from hetero_sp.core.errors import UserError
from hetero_sp.data.prepare import FORMAT, VERSION


class DatasetError(UserError):
    """A folder that is not a complete prepared dataset."""


def read_manifest(folder: Path) -> dict:
    """The manifest of a prepared dataset folder; DatasetError when it has none it can use."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        hint = (
            "its prepare was interrupted: run the same `hetero-sp prepare` again to finish it"
            if (folder / "progress.json").is_file()
            else "make one with `hetero-sp prepare INPUT... --out DIR`"
        )
        raise DatasetError(f"{folder} is not a prepared dataset (no manifest.json); {hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{manifest_path} is corrupt ({err})") from err
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DatasetError(
            f"{folder} was written by another version of prepare "
            f"({manifest.get('format')} v{manifest.get('version')}); prepare it again"
        )
    return manifest


def _reprepare_hint(folder: Path) -> str:
    return (
        f"run `hetero-sp verify {folder}` to check every shard, then prepare the dataset again "
        f"(`hetero-sp prepare INPUT... --out {folder} --overwrite`; manifest.json lists its inputs)"
    )


Problem = tuple[str, str]
"""(file name in the dataset folder, what is wrong with it: a predicate after the name)."""


def _index_problem(offsets: np.ndarray, shard: dict) -> str | None:
    if offsets.ndim != 1 or offsets.dtype != np.int64:
        return f"is not a 1-D int64 array (it is {offsets.dtype} of shape {offsets.shape})"
    if len(offsets) != shard["docs"] + 1:
        return (
            f"has {len(offsets)} offsets; manifest.json says {shard['docs']} documents "
            f"({shard['docs'] + 1} offsets)"
        )
    if offsets[0] != 0 or offsets[-1] != shard["tokens"]:
        return (
            f"runs from {offsets[0]} to {offsets[-1]}; manifest.json says from 0 to "
            f"{shard['tokens']} tokens"
        )
    backwards = np.flatnonzero(offsets[1:] <= offsets[:-1])
    if backwards.size:
        j = int(backwards[0]) + 1
        return f"has offsets that do not increase (entry {j}: {offsets[j]} after {offsets[j - 1]})"
    return None


def open_shard(
    folder: Path, shard: dict, dtype: np.dtype
) -> tuple[np.ndarray | None, list[Problem]]:
    """A shard's offsets (None when unusable) and the problems of its index and of its token
    file's size; reads the index only (8 bytes per document), not the tokens."""
    name, problems = shard["name"], []
    bin_path = folder / f"{name}.bin"
    expected = shard["tokens"] * dtype.itemsize
    size = bin_path.stat().st_size if bin_path.is_file() else None
    if size != expected:
        has = "" if size is None else f"; it has {size}"
        problems.append(
            (
                f"{name}.bin",
                f"is missing or not {expected} bytes ({shard['tokens']} tokens of {dtype}){has}",
            )
        )
    try:  # read_array, not np.load, which takes a file without the .npy header for a pickle
        with open(folder / f"{name}.idx.npy", "rb") as f:
            offsets = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError) as err:
        return None, [*problems, (f"{name}.idx.npy", f"cannot be read ({err})")]
    why = _index_problem(offsets, shard)
    if why is not None:
        return None, [*problems, (f"{name}.idx.npy", why)]
    return offsets, problems


_BLOCK_BYTES = 1 << 20
"""Bytes hashed at a time: a multiple of every token dtype's size."""


def check_tokens(
    folder: Path, shard: dict, dtype: np.dtype, offsets: np.ndarray, vocab_size: int | None
) -> list[Problem]:
    """The problems of a shard's tokens, read once in full (about 0.7 GB/s): an id outside the
    vocabulary, or tokens and offsets whose sha256 is not the one prepare recorded."""
    name = shard["name"]
    h, largest = hashlib.sha256(), 0
    try:
        with open(folder / f"{name}.bin", "rb") as f:
            for block in iter(lambda: f.read(_BLOCK_BYTES), b""):
                h.update(block)
                ids = np.frombuffer(block, dtype=dtype)
                largest = max(largest, int(ids.max()) if ids.size else 0)
    except OSError as err:
        return [(f"{name}.bin", f"cannot be read ({err})")]
    h.update(np.ascontiguousarray(offsets, dtype=np.int64))
    problems = []
    if vocab_size is not None and largest >= vocab_size:
        problems.append(
            (f"{name}.bin", f"holds token id {largest}, outside the vocabulary of {vocab_size} ids")
        )
    if h.hexdigest() != shard["sha256"]:
        problems.append(
            (
                f"{name}.bin",
                f"or {name}.idx.npy changed after prepare: together they do not match the "
                "sha256 in manifest.json",
            )
        )
    return problems


class ShardedCorpus:
    """Documents of a prepared dataset: ``doc(i)`` is a read-only view into a memory map.

    Opening checks every index against the manifest (its offsets must increase) and every
    token file's size. A shard's tokens are checked (ids within the vocabulary, sha256 against
    the manifest) the first time a process reads from it: each process reads each shard it
    uses once in full, about 0.2 s per shard of 2**26 tokens.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        self.vocab_size: int | None = manifest["vocab_size"]
        self.tokenizer: dict = manifest["tokenizer"]
        self.dtype = np.dtype(manifest["dtype"])
        self._shard_files, starts, lengths, shard_of = [], [], [], []
        for k, shard in enumerate(manifest["shards"]):
            offsets, problems = open_shard(self.path, shard, self.dtype)
            if problems:
                raise self._error(problems[0])
            self._shard_files.append(self.path / f"{shard['name']}.bin")
            starts.append(offsets[:-1])
            lengths.append(np.diff(offsets))
            shard_of.append(np.full(len(offsets) - 1, k, dtype=np.int32))
        self._start = np.concatenate(starts)
        self._lengths = np.concatenate(lengths)
        self._shard_of = np.concatenate(shard_of)
        self._first_doc = np.cumsum([0] + [s["docs"] for s in manifest["shards"]])
        self._maps: dict[int, np.memmap] = {}  # the shards this process has checked

    def _error(self, problem: Problem) -> DatasetError:
        file, what = problem
        return DatasetError(f"dataset {self.path}: {file} {what}; {_reprepare_hint(self.path)}")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # memory maps are reopened, never pickled

    @property
    def num_docs(self) -> int:
        return len(self._lengths)

    @property
    def num_tokens(self) -> int:
        return int(self._lengths.sum())

    def lengths(self) -> np.ndarray:
        return self._lengths

    def doc(self, i: int) -> np.ndarray:
        k = int(self._shard_of[i])
        if k not in self._maps:
            shard = self.manifest["shards"][k]
            first, end = self._first_doc[k], self._first_doc[k + 1]
            offsets = np.append(self._start[first:end], shard["tokens"])
            problems = check_tokens(self.path, shard, self.dtype, offsets, self.vocab_size)
            if problems:
                raise self._error(problems[0])
            self._maps[k] = np.memmap(self._shard_files[k], dtype=self.dtype, mode="r")
        start = int(self._start[i])
        return self._maps[k][start : start + int(self._lengths[i])]


def load_dataset(path: str | Path) -> ShardedCorpus:
    """The prepared dataset in folder ``path`` (see :mod:`hetero_sp.data.prepare`)."""
    return ShardedCorpus(path)
