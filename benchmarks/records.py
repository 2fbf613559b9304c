"""The one description of the machine every benchmark writes into its results JSON.

``machine_record(note)`` gives the same keys everywhere: the device (the CUDA card's name, or
the CPU and its cores), platform, Python, torch and Triton versions, and the 1-minute load
average when the record is taken (these machines are often shared), plus a free-text ``note``
on how the benchmark used it (ranks, backends).
"""

from __future__ import annotations

import importlib.util
import os
import platform


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(__import__(module), "__version__", None)


def machine_record(note: str = "", **extra) -> dict:
    device = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name()
    record = {
        "device": device,
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "triton": _version("triton"),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "note": note,
    }
    record.update(extra)
    return record
