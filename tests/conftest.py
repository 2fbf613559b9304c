import os

import pytest
import torch

from hetero_sp.engine.deepspeed_ops import use_environment_dir
from tests.rank_pool import shutdown_pools

# Triton kernels run on CPU only in the interpreter, which is chosen when a kernel module is
# imported (decorated); setting it here, before any test module imports one, makes the choice
# independent of test order. CUDA machines run the kernels natively.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# DeepSpeed's compiled op, for the runs the tests start: this environment's own folder unless
# TORCH_EXTENSIONS_DIR is set, so test sessions of two checkouts never rebuild each other's.
use_environment_dir()


TIERS = ("unit", "distributed", "integration")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier (the folder it lives in), so ``-m unit`` and the like pick
    one; a test file outside the tier folders is an error."""
    for item in items:
        tier = item.path.parent.name
        if tier not in TIERS:
            raise pytest.UsageError(
                f"{item.path}: tests live in tests/unit, tests/distributed or tests/integration"
            )
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", autouse=True)
def _stop_rank_pools():
    yield
    shutdown_pools()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
