"""The embedded corpus: the Python standard library's own source files, one document each.

Every machine that runs HeteroSP has them, so the demo and the tests train on real text with a
real long-tailed length distribution (a few hundred bytes to most of a megabyte) without any
download. Files are taken in sorted path order, so the corpus is the same on every rank.

It goes through the same pipeline as any dataset: on first use the files are prepared (text
sources, byte tokens by default; unreadable and blank files are skipped and counted) into a
cache folder, ``$HETERO_SP_CACHE`` or ``$XDG_CACHE_HOME/hetero_sp`` or ``~/.cache/hetero_sp``,
named after a fingerprint of the file list (path, size, mtime of each file), the tokenizer and
the dataset format. A cache rather than the run folder: it takes a few seconds and about 60 MB
once per Python installation and is then shared by every run and test on the machine, and a
changed standard library or tokenizer gets a new folder instead of stale data. It is prepared
into a private temporary folder and renamed into place, so concurrent first uses are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
from pathlib import Path

from hetero_sp.data.dataset import ShardedCorpus, load_dataset
from hetero_sp.data.prepare import VERSION, prepare
from hetero_sp.data.sources import TextSource
from hetero_sp.data.tokenizer import load_tokenizer
from hetero_sp.log import get_logger

logger = get_logger(__name__)


def stdlib_source_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(root):
        # Installed packages are not the standard library (and can be large to walk).
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages")]
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(files)


def cache_root() -> Path:
    if os.environ.get("HETERO_SP_CACHE"):
        return Path(os.environ["HETERO_SP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hetero_sp"


def _file_key(path: Path) -> list:
    try:
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError as err:
        return [str(path), str(err)]


def embedded_dataset(
    tokenizer: str = "byte",
    max_files: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> ShardedCorpus:
    """The embedded corpus, prepared into the cache on first use (the first ``max_files`` files)."""
    files = stdlib_source_files()[:max_files]
    if not files:
        raise RuntimeError("found no standard-library source files to build the embedded corpus")
    tok = load_tokenizer(tokenizer)
    key = {"version": VERSION, "tokenizer": tok.identity, "files": [_file_key(p) for p in files]}
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"embedded-{digest}"
    if not (final / "manifest.json").is_file():
        logger.info("preparing the embedded corpus (%d files) into %s, once", len(files), final)
        tmp = root / f"embedded-{digest}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        prepare([TextSource(p) for p in files], tmp, tok, on_error="skip", progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished it first
    return load_dataset(final)
