"""Shared pytest configuration: devices, slow reproductions, seeding, hypothesis profiles."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

import manifold_ext  # noqa: F401  (registers torch.ops.manifold_ext.*)

# Property tests (python_tests/op_contract/test_properties.py). The default profile is fixed and bounded, so the
# suite is deterministic and fast; `pytest --hypothesis-profile=thorough` searches deeper with fresh examples.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=6,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="run the full-size reproductions marked slow (default: their short versions only)",
    )


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="full-size reproduction: run with --runslow")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one intra-op thread. Tests of tiny models opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``: their ops are too small to
    split, and on a shared, loaded machine a second OpenMP thread mostly waits
    (measured here: one 8x8 conv-net step 11 ms on one thread, over 1 s on two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
