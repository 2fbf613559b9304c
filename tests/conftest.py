import os

import pytest
import torch

from tests.distributed import shutdown_pools

# Triton kernels run on CPU only in the interpreter, which is chosen when a kernel module is
# imported (decorated); setting it here, before any test module imports one, makes the choice
# independent of test order. CUDA machines run the kernels natively.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _stop_rank_pools():
    yield
    shutdown_pools()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
