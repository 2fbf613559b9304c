"""Solve step i+1's plan in the background while step i trains.

Where: a thread (``worker="thread"``) or a separate process (``worker="process"``, driven by
that thread). The solver's Python (bucketing, building the MILP, local search) holds the
interpreter lock, so on a thread it slows a training loop whose own Python dispatches the
step's kernels; a process leaves the loop alone wherever the host has a core to spare. The
process is spawned once (imports take a second or two, paid by the first plan) and keeps the
solve function; each step sends only the lengths and receives the plan.

Choice: the plan is solved on ONE rank (rank 0) and broadcast, not solved deterministically on
every rank. The MILP runs under a time limit, and the incumbent HiGHS (or CBC) holds when the
limit strikes depends on how fast that machine happens to be at that moment (other processes,
clock speed, the training step sharing its cores): two ranks given the same lengths can return
different, equally valid plans, and ranks disagreeing on their groups deadlock in the first
collective. Only rank 0 solves; at ``get(step)`` every rank calls ``share`` (a broadcast of the
plan's JSON, see :func:`broadcast_share`), a few kilobytes once per step, from the main thread
so it never interleaves with the step's own collectives. Without ``share`` (one process, or
tests) the local plan is returned.

Engine use (issue 7)::

    ahead = PlanAhead(planner, is_solver=rank == 0, share=broadcast_share(cpu_group))
    ahead.submit(0, sampler.lengths(0))
    for step in range(start, steps):
        if step + 1 < steps:
            ahead.submit(step + 1, sampler.lengths(step + 1))   # returns at once
        plan = ahead.get(step)                                   # ready: solved during step - 1
        ... train step with plan ...
    ahead.close()
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from hetero_sp.core.errors import error_record, peer_error
from hetero_sp.core.names import AheadWorker, values
from hetero_sp.planner.plan import Plan


@dataclass(frozen=True)
class AheadTiming:
    """When the worker started and finished a step's plan, and how long ``get`` waited for it
    (``time.perf_counter`` seconds)."""

    submitted: float
    started: float
    finished: float
    wait_s: float


WORKERS = values(AheadWorker)

_INSTALLED: Callable[[Sequence[int]], Plan] | None = None
"""The solve function of a worker process, installed once when it starts."""


def _install(solve: Callable[[Sequence[int]], Plan]) -> None:
    global _INSTALLED
    _INSTALLED = solve


def _solve_installed(lengths: list[int]) -> Plan:
    return _INSTALLED(lengths)


class PlanAhead:
    """A one-thread worker queue of plans keyed by step (the thread solves, or waits on the
    worker process that does)."""

    def __init__(
        self,
        solve: Callable[[Sequence[int]], Plan],
        *,
        is_solver: bool = True,
        share: Callable[[Plan | BaseException | None], Plan] | None = None,
        worker: str = "thread",
    ) -> None:
        if not is_solver and share is None:
            raise ValueError("a rank that does not solve needs `share` to receive the plan")
        if worker not in WORKERS:
            raise ValueError(f"worker {worker!r} is unknown; allowed: {', '.join(WORKERS)}")
        self._pool = None
        if is_solver and worker == "process":
            if multiprocessing.current_process().daemon:
                raise ValueError(
                    "worker='process' cannot start a process from this daemonic process (a "
                    "multiprocessing pool worker, for example); use worker='thread'"
                )
            try:
                pickle.dumps(solve)
            except Exception as err:
                raise ValueError(
                    f"worker='process' sends the solve function to another process, and "
                    f"{solve!r} cannot be pickled ({err}); use a module-level function, a "
                    "functools.partial of one, or a Planner, or worker='thread'"
                ) from err
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),  # no fork of a CUDA process
                initializer=_install,
                initargs=(solve,),
            )
        self._solve, self._is_solver, self._share = solve, is_solver, share
        self._jobs: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._done: dict[int, tuple[Plan | None, BaseException | None]] = {}
        self._times: dict[int, list[float]] = {}
        self._submitted: set[int] = set()
        self.timings: dict[int, AheadTiming] = {}
        self._closed = False
        self._thread = None
        if is_solver:
            self._thread = threading.Thread(target=self._run, name="plan-ahead", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            step, lengths = job
            started = time.perf_counter()
            with self._cond:
                self._times[step].append(started)
            plan, error = None, None
            try:
                if self._pool is None:
                    plan = self._solve(lengths)
                else:
                    plan = self._pool.submit(_solve_installed, lengths).result()
            except BaseException as err:  # noqa: BLE001 - handed to the caller of get()
                error = err
            with self._cond:
                self._times[step].append(time.perf_counter())
                self._done[step] = (plan, error)
                self._cond.notify_all()

    def submit(self, step: int, lengths: Sequence[int]) -> None:
        """Queue step ``step``'s plan; returns at once. Every rank may call it (non-solving
        ranks only record the step)."""
        if self._closed:
            raise ValueError("PlanAhead is closed")
        if step in self._submitted:
            raise ValueError(f"step {step} was already submitted")
        self._submitted.add(step)
        if self._is_solver:
            with self._cond:
                self._times[step] = [time.perf_counter()]
            self._jobs.put((step, list(lengths)))

    def started(self, step: int) -> bool:
        """Whether the worker has begun solving ``step``."""
        with self._cond:
            return len(self._times.get(step, ())) >= 2

    def get(self, step: int, timeout: float | None = None) -> Plan:
        """The plan of ``step``: waits for the worker, then shares it with every rank.
        Re-raises the solver's exception (on the solving rank)."""
        if step not in self._submitted:
            raise ValueError(f"step {step} was never submitted; call submit({step}, lengths)")
        plan = None
        if self._is_solver:
            begin = time.perf_counter()
            with self._cond:
                if not self._cond.wait_for(lambda: step in self._done, timeout=timeout):
                    raise TimeoutError(f"the plan of step {step} was not ready in {timeout} s")
                plan, error = self._done.pop(step)
                submitted, started, finished = self._times.pop(step)
            waited = time.perf_counter() - begin
            self.timings[step] = AheadTiming(submitted, started, finished, waited)
            self._submitted.discard(step)
            if error is not None:
                if self._share is not None:
                    self._share(error)  # let the other ranks fail too instead of hanging
                raise error
        self._submitted.discard(step)
        return plan if self._share is None else self._share(plan)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PlanAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def broadcast_share(group=None, src: int = 0) -> Callable[[Plan | BaseException | None], Plan]:
    """A ``share`` function: rank ``src`` broadcasts the plan's JSON (or its error) over
    ``group`` (a gloo group for CPU objects when training on NCCL). The one place the planner
    touches ``torch.distributed``; every rank calls ``get`` from its main thread in step order."""
    import torch.distributed as dist

    def share(plan: Plan | BaseException | None) -> Plan:
        if isinstance(plan, Plan):
            box = [("plan", plan.to_json())]
        else:
            box = [("error", error_record(plan))]
        dist.broadcast_object_list(box, src=src, group=group)
        kind, payload = box[0]
        if kind == "error":
            if isinstance(plan, BaseException):
                raise plan  # the solving rank: its own error, unchanged
            raise peer_error(src, payload, what="failed to plan")
        return Plan.from_json(payload)

    return share
