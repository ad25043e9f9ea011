"""Neighbours and the enumeration of all regions (paper 001, Algorithm 1, traversal and pruning).

Starting from the region of one point, every region is analysed once: its
facets (active bits, Eq. 6) are found, and flipping each facet's bits gives a
neighbour sharing that facet. Patterns are deduplicated by hashing their packed
bytes (a set lookup, not a scan). Within a box the traversal stays inside it
(facets of region ∩ box, box faces excluded) and counts the regions whose
intersection with the box has an interior; without a box it covers all of R^d
and reports which regions are bounded.

Regions are analysed in batches through any ``concurrent.futures.Executor``
(``ProcessPoolExecutor``, Dask's ``client.get_executor()``, Ray's executor, ...);
each wave of the traversal is one round of ``executor.submit`` calls. By
default (``executor="auto"``) batches run in this process until the enumeration
has taken ``pool_after`` seconds, and the rest goes to a local process pool: a
small network never pays for starting workers, a large one gets every core.
Batches are combined in submission order, so the result does not depend on
where they ran.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from manifold_ext.relu_geometry.lp import DEFAULT_TOL, Box, active_set, as_box, is_bounded
from manifold_ext.relu_geometry.network import Region, ReLUNetwork


def flip_units(pattern: np.ndarray, units: Iterable[int]) -> np.ndarray:
    """A copy of a packed pattern ``[words]`` with the bits of ``units`` flipped."""
    flipped = np.array(pattern, dtype=np.int64, copy=True).view(np.uint64)
    for unit in units:
        flipped[int(unit) // 64] ^= np.uint64(1) << np.uint64(int(unit) % 64)
    return flipped.view(np.int64)


def neighbours(region: Region, box=None, *, tol: float = DEFAULT_TOL) -> np.ndarray:
    """Packed patterns ``[q, words]`` of the regions sharing a facet with ``region`` (within ``box``).

    Each facet's bits are flipped together (one bit, unless several units share the
    facet's hyperplane, e.g. duplicated units).
    """
    groups = active_set(region, box, tol=tol).groups
    if not groups:
        return np.zeros((0, len(region.pattern)), dtype=np.int64)
    return np.stack([flip_units(region.pattern, g) for g in groups])


@dataclasses.dataclass
class RegionAnalysis:
    """What the traversal learns about one candidate pattern."""

    empty: bool
    groups: list[np.ndarray]
    interior_point: np.ndarray | None
    radius: float
    bounded: bool | None
    n_lps: int
    failures: list[str]


def analyse_patterns(network: ReLUNetwork, patterns: np.ndarray, box: Box | None, tol: float,
                     check_bounded: bool) -> list[RegionAnalysis]:
    """Facets, interior point and boundedness of each packed pattern. Runs in worker processes."""
    A, c, _, _ = network.systems(torch.from_numpy(np.ascontiguousarray(patterns)))
    out = []
    for i in range(len(patterns)):
        act = active_set((A[i], c[i]), box, tol=tol, on_failure="report")
        bounded = None
        failures = list(act.failures)
        if check_bounded and not act.empty:
            # The recession cone only needs the facets (redundant rows do not change the region).
            rows = act.bits if len(act.bits) else np.arange(A.shape[1])
            try:
                bounded = is_bounded((A[i][rows], c[i][rows]), tol=tol)
            except Exception as error:  # reported, never guessed
                failures.append(f"boundedness LP failed: {error}")
        out.append(RegionAnalysis(act.empty, act.groups, act.interior_point, act.radius, bounded, act.n_lps,
                                  failures))
    return out


def _single_threaded_worker() -> None:
    torch.set_num_threads(1)  # one process per core already


class _BatchRunner:
    """Runs the batches of each wave where ``executor`` says (see :func:`enumerate_regions`)."""

    MODES = ("auto", "process", "inline")

    def __init__(self, executor, pool_after: float, workers: int | None):
        if isinstance(executor, Executor):
            self.mode, self.executor = "given", executor
        elif executor is None or executor in self.MODES:
            self.mode, self.executor = executor or "inline", None
        else:
            raise ValueError(f"enumerate_regions: executor must be a concurrent.futures.Executor, None or one of "
                             f"{self.MODES}, got {executor!r}")
        if pool_after < 0:
            raise ValueError(f"enumerate_regions: pool_after must be >= 0 seconds, got {pool_after}")
        if workers is not None and workers < 1:
            raise ValueError(f"enumerate_regions: workers must be >= 1, got {workers}")
        self.pool_after = pool_after
        self.workers = workers or os.cpu_count() or 1
        self.started = time.perf_counter()
        self.own_pool: ProcessPoolExecutor | None = None
        self.used_executor = False

    def _pool(self) -> Executor:
        if self.executor is None:
            # spawn: forking a process whose torch/OpenMP threads are running is unsafe.
            self.own_pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_single_threaded_worker)
            self.executor = self.own_pool
        return self.executor

    def _use_pool(self, remaining: int) -> bool:
        if self.mode == "given":
            return True
        if self.mode == "inline":
            return False
        if self.executor is not None:  # the local pool is running: keep using it
            return True
        if remaining < 2 or self.workers < 2:  # nothing to run side by side
            return False
        return self.mode == "process" or time.perf_counter() - self.started >= self.pool_after

    def run(self, network, batches: list, *args) -> Iterable:
        """The analyses of each batch, in order."""
        i = 0
        while i < len(batches):
            if not self._use_pool(len(batches) - i):
                yield _analyse_batch(network, batches[i], *args)
                i += 1
                continue
            futures = [self._pool().submit(_analyse_batch, network, b, *args) for b in batches[i:]]
            self.used_executor = True
            try:
                for future in futures:
                    yield future.result()
                    i += 1
            except BrokenProcessPool as error:
                if self.own_pool is None:
                    raise
                # E.g. a script without an `if __name__ == "__main__":` guard, which spawned
                # workers re-run on import: finish in this process instead of failing.
                warnings.warn(f"enumerate_regions: the local process pool failed ({error}; a script without "
                              "an `if __name__ == '__main__':` guard?); continuing in this process",
                              RuntimeWarning, stacklevel=2)
                self.close()
                self.mode = "inline"

    def close(self) -> None:
        if self.own_pool is not None:
            self.own_pool.shutdown(cancel_futures=True)
            self.own_pool = None
            self.executor = None



def _analyse_batch(network, patterns, box_bounds, tol, check_bounded):
    box = None if box_bounds is None else Box(np.asarray(box_bounds[0]), np.asarray(box_bounds[1]))
    return analyse_patterns(network, patterns, box, tol, check_bounded)


@dataclasses.dataclass
class EnumerationResult:
    """All regions found by :func:`enumerate_regions`, in traversal order."""

    patterns: np.ndarray  # int64 [R, words]
    interior_points: np.ndarray  # [R, d] a point inside each region (Chebyshev centre within the box)
    radii: np.ndarray  # [R] Chebyshev radius within the box (capped at 1 without a box)
    num_facets: np.ndarray  # [R]
    bounded: np.ndarray | None  # [R] bool, without a box only
    box: Box | None
    empty_candidates: int  # flipped patterns whose region had no interior (degenerate hyperplanes)
    failures: list[str]  # failed LPs, with the region they belong to
    n_lps: int
    seconds: float
    truncated: bool  # stopped at max_regions
    used_executor: bool = False  # some batches ran through an executor (the one given, or the local pool)

    def __len__(self) -> int:
        return len(self.patterns)

    @property
    def num_bounded(self) -> int | None:
        return None if self.bounded is None else int(self.bounded.sum())

    @property
    def num_unbounded(self) -> int | None:
        return None if self.bounded is None else int((~self.bounded).sum())

    def keys(self) -> set[bytes]:
        return {p.tobytes() for p in self.patterns}

    def index_of(self, patterns) -> np.ndarray:
        """Position of each packed pattern ``[P, words]`` in this result, or -1 if absent."""
        lookup = {p.tobytes(): i for i, p in enumerate(self.patterns)}
        patterns = np.asarray(patterns, dtype=np.int64)
        return np.array([lookup.get(p.tobytes(), -1) for p in patterns], dtype=np.int64)

    def regions(self, network: ReLUNetwork) -> list[Region]:
        return network.regions(torch.from_numpy(self.patterns))


def enumerate_regions(network: ReLUNetwork, box=None, *, start=None, tol: float = DEFAULT_TOL,
                      executor: Executor | str | None = "auto", pool_after: float = 2.0,
                      workers: int | None = None, batch_size: int = 64, max_regions: int | None = None,
                      progress: bool = True) -> EnumerationResult:
    """All linear regions of ``network``, in ``box`` or in all of R^d (Algorithm 1).

    Args:
        network: a :class:`ReLUNetwork`.
        box: ``None`` for all of R^d (then ``bounded`` is reported per region), or ``(lo, hi)``
            (scalars or per-dimension) to enumerate the regions meeting the box with an interior.
        start: point(s) ``[d]`` or ``[n, d]`` whose regions seed the traversal (default: the box
            centre, or the origin). The regions of a box are connected, so one seed suffices.
        tol: distance tolerance of the LPs (see :mod:`manifold_ext.relu_geometry.lp`).
        executor: where batches of regions are analysed: any ``concurrent.futures.Executor``
            (used for every wave); ``"auto"`` (default): in this process until the enumeration
            has run ``pool_after`` seconds, then in a local process pool started for the rest
            (small networks finish before a worker would have started); ``"process"``: a local
            process pool from the first wave with two or more batches; ``None`` or ``"inline"``:
            always in this process.
        pool_after: seconds before ``"auto"`` starts its pool.
        workers: processes of the local pool (default: ``os.cpu_count()``).
        batch_size: regions per task.
        max_regions: stop after this many regions (``truncated`` is then set).
        progress: show a tqdm progress bar.
    """
    if batch_size < 1:
        raise ValueError(f"enumerate_regions: batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    d = network.input_dim
    box = as_box(box, d)
    if start is None:
        start = box.centre if box is not None else np.zeros(d)
    start = np.atleast_2d(np.asarray(start, dtype=np.float64))
    if box is not None and not np.all(box.contains(start)):
        raise ValueError("enumerate_regions: the start points must lie inside the box")
    seeds = network.patterns(start).numpy()
    seen: set[bytes] = set()
    frontier = []
    for p in seeds:
        if p.tobytes() not in seen:
            seen.add(p.tobytes())
            frontier.append(p)
    box_bounds = None if box is None else box.as_tuple()
    check_bounded = box is None
    patterns, points, radii, facets, bounded, failures = [], [], [], [], [], []
    empty = 0
    n_lps = 0
    truncated = False
    runner = _BatchRunner(executor, pool_after, workers)
    bar = tqdm(desc="enumerating regions", unit="region", disable=not progress, mininterval=0.5)
    try:
        while frontier and not truncated:
            batches = [np.stack(frontier[i:i + batch_size]) for i in range(0, len(frontier), batch_size)]
            results = runner.run(network, batches, box_bounds, tol, check_bounded)
            next_frontier = []
            for batch, analyses in zip(batches, results):
                for pattern, res in zip(batch, analyses):
                    n_lps += res.n_lps
                    failures += [f"region {pattern.tolist()}: {msg}" for msg in res.failures]
                    if res.empty:
                        empty += 1
                        continue
                    patterns.append(pattern)
                    points.append(res.interior_point)
                    radii.append(res.radius)
                    facets.append(len(res.groups))
                    bounded.append(res.bounded)
                    bar.update(1)
                    for group in res.groups:
                        flipped = flip_units(pattern, group)
                        key = flipped.tobytes()
                        if key not in seen:
                            seen.add(key)
                            next_frontier.append(flipped)
                    if max_regions is not None and len(patterns) >= max_regions:
                        truncated = True
                        break
                if truncated:
                    break
            frontier = next_frontier
    finally:
        bar.close()
        runner.close()
    words = network.num_words
    return EnumerationResult(
        patterns=np.array(patterns, dtype=np.int64).reshape(-1, words),
        interior_points=np.array(points, dtype=np.float64).reshape(-1, d),
        radii=np.array(radii, dtype=np.float64),
        num_facets=np.array(facets, dtype=np.int64),
        bounded=None if box is not None else np.array([bool(b) for b in bounded], dtype=bool),
        box=box, empty_candidates=empty, failures=failures, n_lps=n_lps,
        seconds=time.perf_counter() - t0, truncated=truncated, used_executor=runner.used_executor,
    )


def sample_patterns(network: ReLUNetwork, box, n: int, *, seed: int = 0, grid: bool = False,
                    chunk: int = 1 << 16) -> np.ndarray:
    """Distinct packed patterns seen at ``n`` points of ``box`` (uniform random, or a grid of about
    ``n`` points when ``grid``). Sampling can only find a subset of the regions an exact
    enumeration finds; the demos and tests use it to check :func:`enumerate_regions`."""
    box = as_box(box, network.input_dim)
    d = network.input_dim
    rng = np.random.default_rng(seed)
    if grid:
        per_dim = max(2, int(round(n ** (1.0 / d))))
        axes = [np.linspace(box.lo[k], box.hi[k], per_dim) for k in range(d)]
        points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    else:
        points = box.sample(n, rng)
    unique = []
    for i in range(0, len(points), chunk):
        p = network.patterns(points[i:i + chunk]).numpy()
        unique.append(np.unique(p, axis=0))
    if not unique:
        return np.zeros((0, network.num_words), dtype=np.int64)
    return np.unique(np.concatenate(unique), axis=0)
