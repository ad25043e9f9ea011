"""Region counts of many small networks: in the box and in all of R^d (Algorithm 1), with the units
that never switch in the box and the active bits (facets) of every region.

Two ways to spread the work, chosen by :class:`RegionCounter`:

* locally (default): one network per task on a process pool (``--workers``
  processes, one per core by default), each enumeration running in its
  worker. Table 1's networks have tens to a few thousand regions each, so a
  network is the natural unit of work: no traversal wave waits for another
  process;
* on a Dask cluster (``--scheduler``): the networks are enumerated one after
  another from this process and each traversal's batches of regions go to the
  cluster through ``enumerate_regions(..., executor=client.get_executor())``
  (issue 19: the frontier is processed by the workers).

The result does not depend on the route (enumeration is deterministic).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch

from manifold_ext.ops.relu_patterns import unpack_patterns
from manifold_ext.relu_geometry import ReLUNetwork, enumerate_regions

BOX = (-1.0, 1.0)


@dataclasses.dataclass
class NetRegions:
    """What one network's enumerations found (``patterns_*``: packed patterns, kept for figures)."""

    stats: dict
    patterns_box: np.ndarray
    patterns_everywhere: np.ndarray | None
    bounded: np.ndarray | None


def _bits(network: ReLUNetwork, patterns: np.ndarray) -> np.ndarray:
    return unpack_patterns(torch.from_numpy(np.ascontiguousarray(patterns)), network.num_units).numpy()


def never_switching_units(network: ReLUNetwork, box_patterns: np.ndarray) -> int:
    """Units whose bit is the same in every region meeting the box: their hyperplane misses the box
    (the enumeration is exact, so this is exact too)."""
    bits = _bits(network, box_patterns)
    return int(np.sum(bits.all(axis=0) | (~bits).all(axis=0)))


def _distribution(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def region_statistics(
    network: ReLUNetwork, box=BOX, *, everywhere: bool = True, executor: Executor | str | None = None
) -> NetRegions:
    """Enumerate ``network``'s regions in ``box`` and (if ``everywhere``) in all of R^d.

    The regions of R^d meeting the box with an interior are exactly the box's regions, so the box
    patterns must all be among those of R^d: checked, and a mismatch raises (never a silent count).
    Active bits per region are the facets found by the R^d traversal (Eq. 6 without a box).
    """
    torch.set_num_threads(1)
    cpu_started = time.process_time()  # CPU seconds: comparable across machine loads, unlike wall time
    in_box = enumerate_regions(network, box=box, executor=executor, progress=False)
    stats = {
        "regions_box": len(in_box),
        "never_switching_units_in_box": never_switching_units(network, in_box.patterns),
        "units": network.num_units,
        "failed_lps": len(in_box.failures),
        "empty_candidates": in_box.empty_candidates,
        "seconds_box": round(in_box.seconds, 3),
    }
    result = NetRegions(stats, in_box.patterns, None, None)
    if not everywhere:
        stats["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
        return result
    plane = enumerate_regions(network, executor=executor, progress=False)
    missing = int(np.sum(plane.index_of(in_box.patterns) < 0))
    if missing:
        raise RuntimeError(
            f"region_statistics: {missing} of the {len(in_box)} regions found in the box are not "
            f"among the {len(plane)} regions found in R^{network.input_dim}; the enumeration is "
            "not exact for this network"
        )
    stats.update(
        {
            "regions_everywhere": len(plane),
            "bounded": plane.num_bounded,
            "unbounded": plane.num_unbounded,
            "active_bits": _distribution(plane.num_facets),
            "failed_lps": stats["failed_lps"] + len(plane.failures),
            "empty_candidates": stats["empty_candidates"] + plane.empty_candidates,
            "seconds_everywhere": round(plane.seconds, 3),
            "cpu_seconds": round(time.process_time() - cpu_started, 3),
        }
    )
    result.patterns_everywhere = plane.patterns
    result.bounded = plane.bounded
    return result


def _single_threaded_worker() -> None:
    torch.set_num_threads(1)  # one process per core already


class RegionCounter:
    """Runs :func:`region_statistics` for many networks, locally on a process pool or on a Dask cluster."""

    def __init__(self, workers: int | None = None, cluster_executor: Executor | None = None):
        if workers is not None and workers < 1:
            raise ValueError(f"RegionCounter: workers must be >= 1, got {workers}")
        self.cluster_executor = cluster_executor
        if cluster_executor is not None:
            # Each traversal's batches go to the cluster; one driver thread walks the networks so
            # that training can go on meanwhile.
            self.pool: Executor = ThreadPoolExecutor(1)
        else:
            # spawn: forking a process whose torch/OpenMP threads are running is unsafe.
            self.pool = ProcessPoolExecutor(
                workers or os.cpu_count() or 1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_single_threaded_worker,
            )

    @property
    def route(self) -> str:
        return (
            "dask: enumerate_regions(executor=client.get_executor())"
            if self.cluster_executor is not None
            else "local process pool, one network per task"
        )

    def submit(self, network: ReLUNetwork, box=BOX, *, everywhere: bool = True) -> Future:
        executor = self.cluster_executor if self.cluster_executor is not None else None
        return self.pool.submit(region_statistics, network, box, everywhere=everywhere, executor=executor)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_summary(values) -> dict:
    """Mean, SD (ddof 1), median, min, max of a list of counts (Table 1's columns)."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "median": float(np.median(values)),
        "min": int(values.min()),
        "max": int(values.max()),
        "n": len(values),
    }
