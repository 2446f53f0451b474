import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers: `from support.videos import ...`


def pytest_collection_modifyitems(config, items):
    """Every test that uses the session's Ray (directly or through a fixture) is in the `ray` tier, so
    `-m "not ray and not train and not cluster"` is exactly the tests that need no Ray at all."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.ray)


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
    import os

    import ray

    # Ray Train's controller polls its workers this often: the end of a run and a dead worker are noticed
    # sooner (read by the raylet this starts, so set before it)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits(ray_local, tmp_path_factory) -> Path:
    """The session's moving-digits shards (48 clips of 8 frames at 32x32, captioned; 36 train, 12 val), shared
    by every test that trains: read-only (a test that writes next to them copies them first)."""
    from support.videos import digit_shards

    return digit_shards(tmp_path_factory.mktemp("digits"), num_clips=48)
