"""Shared pytest configuration: devices, slow reproductions, seeding."""
from __future__ import annotations

import pytest
import torch

import manifold_ext  # noqa: F401  (registers torch.ops.manifold_ext.*)


def pytest_addoption(parser):
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="run the full-size reproductions marked slow (default: their short versions only)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="full-size reproduction: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


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


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
