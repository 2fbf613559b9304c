"""Tokenizers: byte-level by default, or a Hugging Face ``tokenizers`` JSON file.

Both turn one document (``str`` or ``bytes``) into a 1-D array of token ids and say which
on-disk dtype holds their ids (uint16 up to 65,536 ids, uint32 beyond).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from hetero_sp.core.errors import UserError


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ByteTokenizer:
    """Every UTF-8 byte is a token, plus <bos> and <eos>."""

    vocab_size = 258
    bos_id = 256
    eos_id = 257
    spec = "byte"
    identity = {"kind": "byte", "vocab_size": 258}

    def encode(self, data: bytes | str) -> np.ndarray:
        """<bos> + bytes + <eos> as uint16 token ids (bytes are taken as they are, never decoded)."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        ids = np.empty(len(raw) + 2, dtype=np.uint16)
        ids[0], ids[-1] = self.bos_id, self.eos_id
        ids[1:-1] = np.frombuffer(raw, dtype=np.uint8)
        return ids

    def decode(self, ids: np.ndarray | list[int]) -> str:
        body = bytes(int(i) for i in ids if int(i) < 256)
        return body.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` JSON file (its post-processor adds any <bos>/<eos>)."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ImportError(
                "a tokenizer JSON file needs the `tokenizers` package: "
                "pip install 'hetero-sp[data]' (or pip install tokenizers)"
            ) from err
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer file {str(path)!r} does not exist; give a tokenizer.json")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a plain Exception on any parse error
            raise UserError(f"{path} is not a Hugging Face tokenizers JSON file: {err}") from err
        self.spec = str(path)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.identity = {"kind": "hf", "sha256": digest, "vocab_size": self.vocab_size}

    def encode(self, data: bytes | str) -> np.ndarray:
        """Token ids of one document; ``bytes`` must be UTF-8 (UnicodeDecodeError otherwise)."""
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return np.asarray(self._tok.encode(text).ids, dtype=token_dtype(self.vocab_size))

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str) -> ByteTokenizer | HFTokenizer:
    """``"byte"`` or the path of a Hugging Face ``tokenizer.json``."""
    if spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)
