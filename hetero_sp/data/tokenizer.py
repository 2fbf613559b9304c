"""Byte-level tokenizer: every UTF-8 byte is a token, plus <bos> and <eos>."""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    vocab_size = 258
    bos_id = 256
    eos_id = 257

    def encode(self, data: bytes | str) -> np.ndarray:
        """<bos> + bytes + <eos> as uint16 token ids."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        ids = np.empty(len(raw) + 2, dtype=np.uint16)
        ids[0], ids[-1] = self.bos_id, self.eos_id
        ids[1:-1] = np.frombuffer(raw, dtype=np.uint8)
        return ids

    def decode(self, ids: np.ndarray | list[int]) -> str:
        body = bytes(int(i) for i in ids if int(i) < 256)
        return body.decode("utf-8", errors="replace")
