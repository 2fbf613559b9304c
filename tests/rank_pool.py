"""Run a function on P CPU processes joined by gloo, and fail loudly when any of them does.

``run_ranks(fn, world_size, *args, timeout=...)`` calls ``fn(rank, world_size, *args)`` on every
rank and returns the list of results (rank order). ``fn`` must be importable by name (a
module-level function of a test module) and its results picklable; tensors are fine.

Workers are kept in one pool per world size and reused across tests: starting a process and
importing torch costs seconds, and the suite runs hundreds of multi-rank calls. The process
group is created once per pool over a FileStore (no listening TCP socket) with gloo bound to
loopback. If a rank raises, the test fails with that rank's traceback; if any rank is still
busy after ``timeout`` seconds (a hang in a collective, a deadlock), the whole pool is killed
and the test fails naming the ranks that did not finish. A new pool is started for the next
test.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection, wait

import torch

DEFAULT_TIMEOUT_S = 180.0
MAX_THREADS = 256
"""A pool whose busiest worker holds more native threads than this after a call is replaced
before the next one. Every gloo process group a test creates (and does not destroy) leaves two
threads per peer behind in the long-lived workers, and their run loops poll: after a few hundred
tests the workers held ~1,300 threads each and kept the load average in the hundreds."""


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: no count, never replaced for it
        return 0


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def _worker(rank: int, world_size: int, store_path: str, conn: Connection) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # What torchrun would export; DeepSpeed reads them when it starts inside a worker.
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    store = dist.FileStore(store_path, world_size)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=300)
    )
    while True:
        message = conn.recv_bytes()
        if message == b"stop":
            break
        try:
            fn, args, kwargs = _loads(message)
            result = fn(rank, world_size, *args, **kwargs)
            reply = _dumps(("ok", result, _native_threads()))
        except BaseException:  # noqa: BLE001 - every failure must reach the test
            reply = _dumps(("error", traceback.format_exc()))
        conn.send_bytes(reply)
    dist.destroy_process_group()
    conn.close()
    os._exit(0)


class _Pool:
    def __init__(self, world_size: int) -> None:
        ctx = mp.get_context("spawn")
        self.world_size = world_size
        self._tmp = tempfile.TemporaryDirectory(prefix="hsp-store-")
        store_path = os.path.join(self._tmp.name, "store")
        self.conns: list[Connection] = []
        self.procs = []
        for rank in range(world_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(rank, world_size, store_path, child), daemon=True
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def run(self, fn, args, kwargs, timeout: float) -> list:
        message = _dumps((fn, args, kwargs))
        for conn in self.conns:
            conn.send_bytes(message)
        replies: dict[int, tuple] = {}
        pending = {conn: rank for rank, conn in enumerate(self.conns)}
        deadline = time.monotonic() + timeout
        error_seen_at = None
        while pending:
            now = time.monotonic()
            # Once a rank has failed, its peers are likely blocked in a collective: give them a
            # short grace period to report their own errors, then stop waiting.
            limit = deadline if error_seen_at is None else min(deadline, error_seen_at + 5.0)
            if now >= limit:
                break
            for conn in wait(list(pending), timeout=limit - now):
                rank = pending.pop(conn)
                try:
                    replies[rank] = _loads(conn.recv_bytes())
                except (EOFError, OSError):
                    replies[rank] = ("error", f"rank {rank} exited without replying")
                if replies[rank][0] == "error" and error_seen_at is None:
                    error_seen_at = time.monotonic()
        errors = {r: rep[1] for r, rep in sorted(replies.items()) if rep[0] == "error"}
        if errors or pending:
            self.kill()
            lines = [f"{fn.__module__}.{fn.__qualname__} on {self.world_size} ranks failed."]
            for rank, tb in errors.items():
                lines.append(f"--- rank {rank} raised:\n{tb}")
            if pending:
                lines.append(
                    f"--- ranks {sorted(pending.values())} did not finish within {timeout:.0f} s"
                    + (" (after another rank failed)" if errors else " (hang or deadlock)")
                )
            raise AssertionError("\n".join(lines))
        self.threads = max(rep[2] for rep in replies.values())
        return [replies[r][1] for r in range(self.world_size)]

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send_bytes(b"stop")
        for proc in self.procs:
            proc.join(timeout=10)
        self.kill()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(timeout=10)
        self._tmp.cleanup()


_POOLS: dict[int, _Pool] = {}


def run_ranks(fn, world_size: int, *args, timeout: float = DEFAULT_TIMEOUT_S, **kwargs) -> list:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` gloo ranks."""
    pool = _POOLS.get(world_size)
    if pool is None or not pool.alive():
        pool = _POOLS[world_size] = _Pool(world_size)
    try:
        results = pool.run(fn, args, kwargs, timeout)
    except AssertionError:
        _POOLS.pop(world_size, None)
        raise
    if pool.threads > MAX_THREADS:
        _POOLS.pop(world_size, None)
        pool.stop()
    return results


def shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.stop()
    _POOLS.clear()
