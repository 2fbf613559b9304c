"""``hetero-sp prepare``: input records -> token shards, a document index and a manifest.

A dataset folder holds:

- ``shard_00000.bin``: the token ids of whole documents back to back, raw ``dtype`` (uint16, or
  uint32 for vocabularies above 65,536), memory-mapped at training time;
- ``shard_00000.idx.npy``: int64 offsets of its documents (documents + 1 entries, from 0);
- ``manifest.json``: tokenizer, dtype, every source (path, bytes, sha256), every shard
  (documents, tokens, sha256), counts, skipped records by reason with the first examples, and a
  fingerprint of the data. It is written last: a folder without it is unfinished.
- ``progress.json`` while unfinished: what is done so far, rewritten after every shard.

Memory stays bounded by one shard (``shard_tokens``, default 2**26 tokens) plus one document:
records stream in, and a shard is written once the next document would overflow it. Shards are
written to ``*.tmp`` and renamed, then ``progress.json`` records them together with the input
position after their last record, so an interrupted run resumes there: shard files the progress
does not list are deleted and redone. Shard boundaries depend only on the inputs, the tokenizer
and ``shard_tokens``, and nothing written depends on time, so the same inputs give the same
bytes whether the run was interrupted or not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hetero_sp.core.errors import UserError
from hetero_sp.data.sources import CORRUPT, EMPTY, EMPTY_FILE, TOO_SHORT, Source
from hetero_sp.data.tokenizer import ByteTokenizer, HFTokenizer, token_dtype

FORMAT, VERSION = "hetero_sp.dataset", 1
DEFAULT_SHARD_TOKENS = 1 << 26
MAX_EXAMPLES = 20
"""Skipped records listed in the manifest per reason (all are counted)."""


class PrepareError(UserError):
    """An input problem under ``--on-error stop``, or an output folder that cannot be used."""


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _our_files(out: Path) -> list[Path]:
    names = ("manifest.json", "progress.json", "manifest.json.tmp", "progress.json.tmp")
    return sorted(p for p in out.iterdir() if p.name.startswith("shard_") or p.name in names)


def _write_shard(out: Path, index: int, docs: list[np.ndarray], dtype: np.dtype) -> dict:
    name = f"shard_{index:05d}"
    tokens = np.concatenate(docs).astype(dtype, copy=False)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    h = hashlib.sha256(tokens)
    h.update(offsets)
    for suffix, write in ((".bin", tokens.tofile), (".idx.npy", lambda f: np.save(f, offsets))):
        tmp = out / f"{name}{suffix}.tmp"
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / f"{name}{suffix}")
    return {"name": name, "docs": len(docs), "tokens": int(offsets[-1]), "sha256": h.hexdigest()}


def _fresh_state(params: dict) -> dict:
    return {
        "version": VERSION,
        "params": params,
        "next": [0, 0],
        "shards": [],
        "sources_done": [],
        "records": 0,
        "skipped": {},
        "skipped_examples": [],
    }


def _with_path(key: dict) -> dict:
    """A source key with its ``path``. Earlier progress files recorded a ``datasets`` folder by
    its files only; the folder is their common parent (``save_to_disk`` writes at its top)."""
    if "path" in key or not key.get("files"):
        return key
    return {**key, "path": os.path.commonpath([f["path"] for f in key["files"]])}


def _resumable(old: dict, params: dict) -> str | None:
    """Why an unfinished run cannot be resumed with these params, or None."""
    if old.get("version") != VERSION:
        return "it was written by another version of prepare"
    for key in ("tokenizer", "dtype", "shard_tokens"):
        if old["params"][key] != params[key]:
            return f"its {key} was {old['params'][key]!r}, now {params[key]!r}"
    before, now = [_with_path(s) for s in old["params"]["sources"]], params["sources"]
    if [(s["kind"], s["path"]) for s in before] != [(s["kind"], s["path"]) for s in now]:
        return "its list of inputs was different"
    src, rec = old["next"]
    for i in range(min(src + (rec > 0), len(now))):  # sources already (partly) in shards
        if before[i] != now[i]:
            return f"{now[i]['path']} changed after part of it was written"
    return None


def _start(out: Path, params: dict, overwrite: bool) -> dict:
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out} is a file; give a folder for the dataset")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in _our_files(out):
            p.unlink()
    if (out / "manifest.json").exists():
        raise PrepareError(
            f"{out} already holds a prepared dataset; choose another --out or pass --overwrite"
        )
    progress = out / "progress.json"
    if not progress.exists():
        if any(out.iterdir()):
            raise PrepareError(f"{out} is not empty and holds no dataset; give an empty folder")
        return _fresh_state(params)
    old = json.loads(progress.read_text())
    why = _resumable(old, params)
    if why is not None:
        raise PrepareError(
            f"{out} holds an unfinished prepare that cannot be resumed: {why}; "
            "pass --overwrite to start over"
        )
    keep = {f"{s['name']}{x}" for s in old["shards"] for x in (".bin", ".idx.npy")}
    for p in _our_files(out):
        if p.name.startswith("shard_") and p.name not in keep:
            p.unlink()  # the shard being written when the run stopped
    old["params"] = params
    return old


class _Run:
    def __init__(self, out, tokenizer, on_error, shard_tokens, state, bar) -> None:
        self.out, self.tok, self.on_error, self.limit = out, tokenizer, on_error, shard_tokens
        self.state, self.bar = state, bar
        self.dtype = np.dtype(state["params"]["dtype"])
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.source_index = 0

    def problem(self, src: Source, number: int, reason: str, message: str) -> None:
        if self.on_error == "stop" and reason != EMPTY_FILE:
            raise PrepareError(
                f"{src.path}, record {number}: {message} [{reason}]. Fix the input, or rerun with "
                "--on-error skip to skip and count such records; a rerun resumes after the last "
                "finished shard"
            )
        skipped = self.state["skipped"]
        skipped[reason] = skipped.get(reason, 0) + 1
        if skipped[reason] <= MAX_EXAMPLES:
            self.state["skipped_examples"].append(
                {"source": str(src.path), "record": number, "reason": reason, "message": message}
            )

    def add(self, src: Source, number: int, payload: str | bytes) -> None:
        if not payload.strip():
            return self.problem(src, number, EMPTY, "is empty or only whitespace")
        try:
            ids = self.tok.encode(payload)
        except UnicodeDecodeError as err:
            return self.problem(src, number, CORRUPT, f"is not valid UTF-8 ({err})")
        if len(ids) < 2:
            return self.problem(src, number, TOO_SHORT, f"has {len(ids)} token; a document needs 2")
        if self.pending and self.pending_tokens + len(ids) > self.limit:
            self.flush([self.source_index, number - 1])
        self.pending.append(ids)
        self.pending_tokens += len(ids)

    def flush(self, position: list[int]) -> None:
        if self.pending:
            shard = _write_shard(self.out, len(self.state["shards"]), self.pending, self.dtype)
            self.state["shards"].append(shard)
            self.pending, self.pending_tokens = [], 0
        self.state["next"] = position
        write_json_atomic(self.out / "progress.json", self.state)
        docs = sum(s["docs"] for s in self.state["shards"])
        self.bar.set_postfix(docs=docs, shards=len(self.state["shards"]))

    def run(self, sources: list[Source]) -> None:
        first, after = self.state["next"]
        for i in range(first, len(sources)):
            src = sources[i]
            self.source_index = i
            for rec in src.records(after if i == first else 0):
                self.bar.update(rec.nbytes)
                if rec.problem is not None:
                    self.problem(src, rec.number, *rec.problem)
                elif rec.payload is not None:
                    self.add(src, rec.number, rec.payload)
                # Counted after add(), whose shard flush commits the records before this one.
                self.state["records"] += rec.problem is not None or rec.payload is not None
            self.state["sources_done"].append(src.entry())
        self.flush([len(sources), 0])


def prepare(
    sources: list[Source],
    out_dir: str | Path,
    tokenizer: ByteTokenizer | HFTokenizer,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    on_error: str = "stop",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Tokenize ``sources`` into a dataset folder (resuming an unfinished one); returns the summary."""
    if on_error not in ("stop", "skip"):
        raise UserError(f"on_error must be stop or skip, got {on_error!r}")
    if shard_tokens < 1:
        raise UserError(f"shard_tokens must be positive, got {shard_tokens}")
    out = Path(out_dir)
    params = {
        "tokenizer": tokenizer.identity,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "shard_tokens": shard_tokens,
        "sources": [s.key() for s in sources],
    }
    state = _start(out, params, overwrite)
    write_json_atomic(out / "progress.json", state)  # marks the folder as an unfinished dataset
    resumed = bool(state["shards"]) or state["next"] != [0, 0]
    done_bytes = sum(s.size() for s in sources[: state["next"][0]])
    with tqdm(
        total=sum(s.size() for s in sources),
        initial=done_bytes,
        unit="B",
        unit_scale=True,
        desc="prepare",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        _Run(out, tokenizer, on_error, shard_tokens, state, bar).run(sources)
    if not state["shards"]:
        raise PrepareError(
            f"no document came out of {len(sources)} input(s) ({state['records']} records, "
            f"skipped: {state['skipped'] or 'none'}); check the inputs and --text-field"
        )
    manifest = _manifest(state)
    write_json_atomic(out / "manifest.json", manifest)
    (out / "progress.json").unlink()
    return summary(manifest, out, resumed)


def fingerprint(dtype: str, tokenizer: dict, shards: list[dict]) -> str:
    """The manifest's ``fingerprint``: sha256 of the dtype, the tokenizer and every shard entry
    (each with the sha256 of its tokens and offsets)."""
    identity = {"dtype": dtype, "tokenizer": tokenizer, "shards": shards}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _manifest(state: dict) -> dict:
    shards = state["shards"]
    identity = {"dtype": state["params"]["dtype"], "tokenizer": state["params"]["tokenizer"]}
    return {
        "format": FORMAT,
        "version": VERSION,
        **identity,
        "vocab_size": state["params"]["tokenizer"]["vocab_size"],
        "shard_tokens": state["params"]["shard_tokens"],
        "num_docs": sum(s["docs"] for s in shards),
        "num_tokens": sum(s["tokens"] for s in shards),
        "num_records": state["records"],
        "sources": state["sources_done"],
        "shards": shards,
        "skipped": state["skipped"],
        "skipped_examples": state["skipped_examples"],
        "fingerprint": fingerprint(identity["dtype"], identity["tokenizer"], shards),
    }


def summary(manifest: dict, out: Path, resumed: bool = False) -> dict:
    return {
        "out_dir": str(out),
        "documents": manifest["num_docs"],
        "tokens": manifest["num_tokens"],
        "shards": len(manifest["shards"]),
        "records": manifest["num_records"],
        "skipped": dict(manifest["skipped"]),
        "resumed": resumed,
    }
