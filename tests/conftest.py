"""Shared fixtures: one embedded Ray cluster for the whole session (starting Ray costs seconds), and
one torch thread in the test process (tiny matmuls: extra threads only add sync overhead, and stall
badly when other jobs share the CPU)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# address="local": a new Ray of our own, even when another cluster on the machine left its address behind
LOCAL_RAY = {"address": "local", "num_cpus": 4, "include_dashboard": False, "logging_level": "WARNING"}


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(**LOCAL_RAY)
    yield ray
    ray.shutdown()
