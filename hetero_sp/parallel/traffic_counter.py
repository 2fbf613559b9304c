"""The run-time byte counter the SP strategies add to as they communicate; the formulas they
must agree with are in :mod:`hetero_sp.core.traffic`."""

from __future__ import annotations

import threading
from collections import defaultdict


class CommCounter:
    """Run-time byte counter, keyed by ``<strategy>/<fwd|bwd>_<send|recv>``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: dict[str, int] = defaultdict(int)

    def add(self, strategy: str, direction: str, send: int, recv: int) -> None:
        with self._lock:
            self._bytes[f"{strategy}/{direction}_send"] += int(send)
            self._bytes[f"{strategy}/{direction}_recv"] += int(recv)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bytes)

    def reset(self) -> None:
        with self._lock:
            self._bytes.clear()

    def total(self) -> int:
        with self._lock:
            return sum(self._bytes.values())


COMM = CommCounter()
"""The process-wide counter the strategies add to; the engine reads and resets it every step
(metrics ``comm/bytes``). It is the one piece of global state: it only observes traffic."""
