import pytest
import torch

from tests.distributed import shutdown_pools


@pytest.fixture(scope="session", autouse=True)
def _stop_rank_pools():
    yield
    shutdown_pools()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
