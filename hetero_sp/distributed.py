"""Process-group start-up for training runs launched by torchrun.

NCCL on CUDA machines, gloo otherwise. When the rendezvous address is loopback, gloo is bound
to the loopback interface too, so a single-machine run opens no socket on other interfaces
for its collectives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def _attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store, with keys scoped to this torchrun restart attempt.

    torchrun's agent keeps its store across worker restarts, so the addresses the previous
    attempt's ranks published are still there; a restarted rank reading one of those would try
    to connect to a process that is gone. A prefix per attempt keeps each attempt's keys apart.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host,
        port,
        world_size,
        is_master=rank == 0 and not agent_hosts,
        timeout=timeout,
        multi_tenant=True,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"hetero_sp/attempt_{attempt}", store)


def init_distributed(timeout_s: int = 600) -> DistInfo:
    """Join the process group that torchrun set up through the environment (or a single rank)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
        if os.environ["MASTER_ADDR"] in _LOOPBACK:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            backend,
            store=_attempt_store(rank, world, timeout),
            rank=rank,
            world_size=world,
            timeout=timeout,
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def shutdown_distributed() -> None:
    """Tear down the process group so workers exit without aborting in gloo's destructors."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
