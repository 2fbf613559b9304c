"""The document lengths of a corpus, for questions that need nothing else (``hetero-sp
simulate``): a prepared dataset folder (its index only, no token is read) or a text file with
one length per line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hetero_sp.data.dataset import DatasetError, load_dataset


def corpus_lengths(path: str | Path) -> np.ndarray:
    """Tokens per document of the dataset folder or lengths file at ``path``; blank lines of a
    lengths file are skipped. DatasetError for a missing path, a line that is not a whole
    number of at least 1, or a corpus without documents."""
    path = Path(path)
    if path.is_dir():
        lengths = load_dataset(path).lengths()
    elif path.is_file():
        values = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if not text:
                    continue
                try:
                    value = int(text)
                except ValueError:
                    value = 0
                if value < 1:
                    raise DatasetError(
                        f"{path} line {number}: {text[:40]!r} is not a length; a lengths file "
                        "holds one whole number of tokens (at least 1) per line"
                    )
                values.append(value)
        lengths = np.asarray(values, dtype=np.int64)
    else:
        raise DatasetError(
            f"{path} does not exist; give a dataset folder written by `hetero-sp prepare` or a "
            "text file with one document length per line"
        )
    if lengths.size == 0:
        raise DatasetError(f"{path} holds no documents")
    return lengths
