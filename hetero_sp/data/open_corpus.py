"""The corpus a run's ``[data]`` section names: the embedded one (prepared on first use) or a
prepared folder, checked against ``data.tokenizer``. Above both :mod:`~hetero_sp.data.dataset`
and :mod:`~hetero_sp.data.embedded`, so neither imports the other back."""

from __future__ import annotations

from hetero_sp.config import ConfigError, DataConfig
from hetero_sp.data.corpus import Corpus
from hetero_sp.data.dataset import DatasetError, load_dataset
from hetero_sp.data.embedded import embedded_dataset
from hetero_sp.data.tokenizer import load_tokenizer


def open_corpus(cfg: DataConfig) -> Corpus:
    """The corpus ``[data]`` names, checked against ``data.tokenizer``.

    ``embedded`` is prepared into the cache on first use (see :mod:`hetero_sp.data.embedded`);
    under several ranks let one rank call this first, then the others.
    """
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
