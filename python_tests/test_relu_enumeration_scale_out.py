"""Region enumeration past one process (issue 19): a real Dask cluster (LocalCluster, 2 process
workers on loopback, started and closed here), the local process pool, and disk shards; every
run gives exactly the in-process result."""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import numpy as np
import pytest
from relu_geometry_cases import spread_network

from manifold_ext._distributed import local_cluster
from manifold_ext.relu_geometry import EnumerationShards, enumerate_regions, load_regions


def _same(a, b):
    assert np.array_equal(a.patterns, b.patterns)  # same regions, same order
    np.testing.assert_array_equal(a.radii, b.radii)
    np.testing.assert_array_equal(a.interior_points, b.interior_points)
    np.testing.assert_array_equal(a.num_facets, b.num_facets)
    assert (a.bounded is None and b.bounded is None) or np.array_equal(a.bounded, b.bounded)
    assert a.empty_candidates == b.empty_candidates and a.n_lps == b.n_lps


CASES = [  # (network, box, method): the exact 2-D op and the LP path, in a box and in all of R^d
    (lambda: spread_network([12, 12], 2, 0), (-1.0, 1.0), "clip"),
    (lambda: spread_network([8, 8], 2, 1), None, "clip"),
    (lambda: spread_network([6, 6], 3, 2), (-1.0, 1.0), "highs"),
]


@pytest.fixture(scope="module")
def dask_client():
    pytest.importorskip("distributed")
    with local_cluster(2) as client:
        yield client


@pytest.mark.parametrize("make,box,method", CASES, ids=["2d-box", "2d-R2", "3d-box"])
def test_dask_cluster_gives_the_in_process_result(dask_client, make, box, method):
    net = make()
    local = enumerate_regions(net, box=box, method=method, executor=None, batch_size=8, progress=False)
    remote = enumerate_regions(
        net, box=box, method=method, executor=dask_client.get_executor(), batch_size=8, progress=False
    )
    assert remote.used_executor and len(local) > 20
    _same(local, remote)


def test_dask_scheduler_address(dask_client, tmp_path):
    """scheduler= opens its own client through manifold_ext._distributed.dask_executor; with out_dir the
    regions stream to shards that load back to the in-process result."""
    net = spread_network([12, 12], 2, 3)
    local = enumerate_regions(net, box=(-1.0, 1.0), executor=None, batch_size=16, progress=False)
    shards = enumerate_regions(
        net,
        box=(-1.0, 1.0),
        scheduler=dask_client.scheduler.address,
        batch_size=16,
        out_dir=tmp_path / "run",
        shard_size=40,
        progress=False,
    )
    assert isinstance(shards, EnumerationShards) and shards.used_executor
    assert len(shards) == len(local) and len(shards.shard_files) > 1
    _same(local, load_regions(tmp_path / "run").load())


def test_threads_and_forked_processes_give_the_in_process_result():
    """(Spawned local pools: test_relu_geometry.py::test_default_moves_long_enumerations_to_a_local_process_pool.)"""
    net = spread_network([6, 6], 3, 4)
    inline = enumerate_regions(net, box=(-1, 1), executor=None, batch_size=4, progress=False)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        _same(inline, enumerate_regions(net, box=(-1, 1), executor=pool, batch_size=4, progress=False))
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        _same(inline, enumerate_regions(net, box=(-1, 1), executor=pool, batch_size=4, progress=False))


def test_batching_changes_the_order_never_the_set():
    net = spread_network([10, 10], 2, 5)
    a = enumerate_regions(net, executor=None, batch_size=3, max_in_flight=2, progress=False)
    b = enumerate_regions(net, executor=None, batch_size=500, progress=False)
    assert a.keys() == b.keys() and a.num_bounded == b.num_bounded


def test_shards_stream_and_load(tmp_path):
    net = spread_network([10, 10], 2, 6)
    memory = enumerate_regions(net, executor=None, progress=False)
    shards = enumerate_regions(net, executor=None, out_dir=tmp_path / "r2", shard_size=25, progress=False)
    assert (shards.num_regions, shards.num_bounded, shards.num_unbounded) == (
        len(memory),
        memory.num_bounded,
        memory.num_unbounded,
    )
    parts = list(load_regions(tmp_path / "r2").iter_shards())
    assert [len(p) for p in parts[:-1]] == [25] * (len(parts) - 1) or all(len(p) >= 25 for p in parts[:-1])
    assert sum(len(p) for p in parts) == len(memory)
    _same(memory, shards.load())
    with pytest.raises(FileExistsError, match="is not empty"):
        enumerate_regions(net, executor=None, out_dir=tmp_path / "r2", progress=False)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_regions(tmp_path)


def test_scale_out_model_caps_at_the_serial_driver_and_max_in_flight():
    from manifold_ext.benchmark.relu_scale_out import markdown, model

    measured = {
        "case": "3d",
        "network": "net",
        "batch_size": 10,
        "regions": 1000,
        "tasks": 100,
        "inline_s": 11.0,
        "driver_s_per_region_us": 1000.0,
        "overhead_per_task_ms": 10.0,
        "max_in_flight": 4,
        "bytes_per_region": 1.0,
        "in_memory_driver_peak_MB": 1.0,
        "streamed_driver_peak_MB": 1.0,
    }
    # w = 10 ms of work per region, serial part 1 s (driver) + 1 s (tasks)
    two = model(measured, 2)
    assert two["wall_s"] == pytest.approx(5.0) and not two["driver_bound"]
    many = model(measured, 100)  # 4 batches in flight: 2.5 s of parallel work, above the 2 s serial part
    assert many["wall_s"] == pytest.approx(2.5) and not many["driver_bound"]
    measured["max_in_flight"] = 1000
    assert model(measured, 100)["wall_s"] == pytest.approx(2.0) and model(measured, 100)["driver_bound"]
    assert model(measured, 100)["max_speedup"] == pytest.approx(5.5)
    assert "| model: 100 workers | 2.0 s, 5.5x in-process (driver-bound) |" in markdown(measured)
