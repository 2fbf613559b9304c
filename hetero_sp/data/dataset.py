"""A prepared dataset folder, memory-mapped: the corpus samplers read at training time.

Only the document index (three integers per document) is loaded into memory; token shards are
memory-mapped, so a rank that reads a few sequences touches only their pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hetero_sp.config import ConfigError, DataConfig
from hetero_sp.core.errors import UserError
from hetero_sp.data.corpus import Corpus
from hetero_sp.data.prepare import FORMAT, VERSION
from hetero_sp.data.tokenizer import load_tokenizer


class DatasetError(UserError):
    """A folder that is not a complete prepared dataset."""


class ShardedCorpus:
    """Documents of a prepared dataset: ``doc(i)`` is a read-only view into a memory map."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            hint = (
                "its prepare was interrupted: run the same `hetero-sp prepare` again to finish it"
                if (self.path / "progress.json").is_file()
                else "make one with `hetero-sp prepare INPUT... --out DIR`"
            )
            raise DatasetError(f"{self.path} is not a prepared dataset (no manifest.json); {hint}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{manifest_path} is corrupt ({err})") from err
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise DatasetError(
                f"{self.path} was written by another version of prepare "
                f"({manifest.get('format')} v{manifest.get('version')}); prepare it again"
            )
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        self.vocab_size: int | None = manifest["vocab_size"]
        self.tokenizer: dict = manifest["tokenizer"]
        self.dtype = np.dtype(manifest["dtype"])
        self._shard_files, starts, lengths, shard_of = [], [], [], []
        for k, shard in enumerate(manifest["shards"]):
            bin_path = self.path / f"{shard['name']}.bin"
            offsets = self._offsets(shard)
            expected = shard["tokens"] * self.dtype.itemsize
            if not bin_path.is_file() or bin_path.stat().st_size != expected:
                raise DatasetError(f"{bin_path} is missing or not {expected} bytes; prepare again")
            self._shard_files.append(bin_path)
            starts.append(offsets[:-1])
            lengths.append(np.diff(offsets))
            shard_of.append(np.full(len(offsets) - 1, k, dtype=np.int32))
        self._start = np.concatenate(starts)
        self._lengths = np.concatenate(lengths)
        self._shard_of = np.concatenate(shard_of)
        self._maps: dict[int, np.memmap] = {}

    def _offsets(self, shard: dict) -> np.ndarray:
        path = self.path / f"{shard['name']}.idx.npy"
        try:
            offsets = np.load(path)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path} cannot be read ({err}); prepare again") from err
        if len(offsets) != shard["docs"] + 1 or offsets[-1] != shard["tokens"]:
            raise DatasetError(f"{path} does not match manifest.json; prepare again")
        return offsets

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
            self._maps[k] = np.memmap(self._shard_files[k], dtype=self.dtype, mode="r")
        start = int(self._start[i])
        return self._maps[k][start : start + int(self._lengths[i])]


def load_dataset(path: str | Path) -> ShardedCorpus:
    """The prepared dataset in folder ``path`` (see :mod:`hetero_sp.data.prepare`)."""
    return ShardedCorpus(path)


def open_corpus(cfg: DataConfig) -> Corpus:
    """The corpus ``[data]`` names, checked against ``data.tokenizer``.

    ``embedded`` is prepared into the cache on first use (see :mod:`hetero_sp.data.embedded`);
    under several ranks let one rank call this first, then the others.
    """
    from hetero_sp.data.embedded import embedded_dataset  # embedded builds on this module

    if cfg.dataset == "embedded":
        return embedded_dataset(cfg.tokenizer)
    try:
        corpus = load_dataset(cfg.dataset)
    except DatasetError as err:
        raise ConfigError(f"data.dataset: {err}") from err
    wanted = load_tokenizer(cfg.tokenizer).identity
    if corpus.tokenizer != wanted:
        raise ConfigError(
            f"data.tokenizer: {cfg.tokenizer!r} ({wanted}) is not the tokenizer {cfg.dataset} was "
            f"prepared with ({corpus.tokenizer}); set data.tokenizer to that one"
        )
    return corpus
