import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (oracles.py)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (starting one costs 5-10 s). Four logical CPUs on this
    two-core machine, so data tasks are never starved by training workers."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
