"""The enumeration of all regions (paper 001, Algorithm 1, traversal and pruning).

Starting from the region of one point, every region is analysed once: its facets (active
bits, Eq. 6) are found, and the pattern across each facet (its bits flipped, settled layer by
layer in degenerate networks: :mod:`manifold_ext.relu_geometry.facets`) is a neighbour.
Patterns are deduplicated on the driver in a hash set of their packed bytes. Within a box the
traversal stays inside it (facets of region ∩ box, box faces excluded) and counts the regions
whose intersection with the box has an interior; without a box it covers all of R^d and
reports which regions are bounded.

The frontier is cut into batches analysed by workers (:mod:`._analysis`): the exact 2-D op
for 2-D input, the LP paths otherwise. Batches go through any ``concurrent.futures.Executor``
(``ProcessPoolExecutor``, Dask's ``client.get_executor()``, ...). The driver keeps up to
``max_in_flight`` batches submitted, always consumes the oldest one first and forms new
batches only from what it has consumed, so the batches, and the regions in the order found,
are the same whichever executor ran them, with however many workers; only ``batch_size`` and
``max_in_flight`` change the order (never the set). By default (``executor="auto"``) batches
run in this process until the enumeration has taken ``pool_after`` seconds, and the rest go to
a local process pool: a small network never pays for starting workers, a large one gets every
core. With ``out_dir`` the regions are streamed to NumPy shards (:mod:`.results`) instead of
being kept.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Executor

import numpy as np
from tqdm.auto import tqdm

from manifold_ext.relu_geometry._analysis import analyse_batch
from manifold_ext.relu_geometry._checks import as_int
from manifold_ext.relu_geometry._executors import BatchRunner, _Deferred
from manifold_ext.relu_geometry.facets import flip_units, neighbours, point_across_facet  # noqa: F401 (re-export)
from manifold_ext.relu_geometry.lp import DEFAULT_TOL, METHODS, Box, RegionLPError, as_box, check_tol
from manifold_ext.relu_geometry.network import ReLUNetwork
from manifold_ext.relu_geometry.results import EnumerationResult, EnumerationShards, MemorySink, ShardSink

# Default batch sizes: the 2-D op analyses a region in microseconds, an LP path in milliseconds.
DEFAULT_BATCH_SIZE = {"clip": 256, "highs": 32, "cvxpy": 8}
# Candidate points tried around the start when its own region has no interior (e.g. the origin of a
# bias-free network, which lies on every first-layer hyperplane).
SEED_RADII = (1e-6, 1e-3, 1e-1, 1.0)
SEED_POINTS = 16


def enumerate_regions(
    network: ReLUNetwork,
    box=None,
    *,
    start=None,
    tol: float = DEFAULT_TOL,
    method: str = "auto",
    executor: Executor | str | None = "auto",
    scheduler: str | None = None,
    pool_after: float = 2.0,
    workers: int | None = None,
    batch_size: int | None = None,
    max_in_flight: int = 32,
    max_regions: int | None = None,
    out_dir=None,
    shard_size: int = 100_000,
    progress: bool = True,
) -> EnumerationResult | EnumerationShards:
    """All linear regions of ``network``, in ``box`` or in all of R^d (Algorithm 1).

    Args:
        network: a :class:`ReLUNetwork`.
        box: ``None`` for all of R^d (then ``bounded`` is reported per region), or ``(lo, hi)``
            (see :func:`~manifold_ext.relu_geometry.as_box`) to enumerate the regions meeting the box
            with an interior.
        start: point(s) ``[d]`` or ``[n, d]`` whose regions seed the traversal (default: the box
            centre, or the origin). The regions of a box are connected, so one seed suffices; if no
            start point's region has an interior (a point on a hyperplane of a degenerate network),
            points around it are tried, and if none has one either the call raises.
        tol: distance tolerance (see :mod:`manifold_ext.relu_geometry.lp`).
        method: how regions are analysed: ``"auto"`` (default: ``"clip"`` for 2-D input, else
            ``"highs"``), ``"clip"`` (exact polygon clipping in C++, 2-D only), ``"highs"`` or
            ``"cvxpy"`` (the LP paths). All give the same regions.
        executor: where batches are analysed: any ``concurrent.futures.Executor`` (Dask:
            ``client.get_executor()``); ``"auto"`` (default): in this process until the enumeration
            has run ``pool_after`` seconds, then in a local process pool; ``"process"``: a local
            process pool from the start; ``None`` or ``"inline"``: always in this process.
        scheduler: the address of a running Dask scheduler (e.g. ``"tcp://10.0.0.1:8786"``): the
            batches run on its cluster (needs ``pip install 'manifold_ext[distributed]'``); the
            client is closed at the end. Not together with an ``executor``.
        pool_after: seconds before ``"auto"`` starts its pool.
        workers: processes of the local pool (default: ``os.cpu_count()``).
        batch_size: regions per task (default 256 for ``"clip"``, 32 for ``"highs"``, 8 for ``"cvxpy"``).
        max_in_flight: batches submitted ahead of the one being consumed (the parallelism an
            executor can use). With ``batch_size`` it fixes the order of the regions found.
        max_regions: stop after this many regions (``truncated`` is then set); at least 1.
        out_dir: a new or empty folder: stream the regions to NumPy shards there and return an
            :class:`EnumerationShards` (driver memory then holds only the visited patterns).
        shard_size: regions per shard file with ``out_dir``.
        progress: show a tqdm progress bar.

    Returns:
        :class:`EnumerationResult` (in memory) or, with ``out_dir``, :class:`EnumerationShards`.
    """
    t0 = time.perf_counter()
    d = network.input_dim
    box = as_box(box, d)
    tol = check_tol(tol, box, "enumerate_regions")
    method = _resolve_method(method, d)
    batch_size = (
        DEFAULT_BATCH_SIZE[method]
        if batch_size is None
        else as_int(batch_size, "enumerate_regions: batch_size", minimum=1)
    )
    max_in_flight = as_int(max_in_flight, "enumerate_regions: max_in_flight", minimum=1)
    if max_regions is not None:
        max_regions = as_int(max_regions, "enumerate_regions: max_regions", minimum=1)
    shard_size = as_int(shard_size, "enumerate_regions: shard_size", minimum=1)
    start = _start_points(start, box, d)
    client = None
    if scheduler is not None:
        if executor != "auto":
            raise ValueError("enumerate_regions: pass either executor= or scheduler=, not both")
        from manifold_ext._distributed import dask_executor

        executor, client = dask_executor(scheduler)
    runner = BatchRunner(executor, pool_after, workers)
    check_bounded = box is None
    box_array = None if box is None else box.as_array()
    sink = (
        MemorySink(network.num_words, d, check_bounded)
        if out_dir is None
        else ShardSink(out_dir, network.num_words, d, check_bounded, shard_size)
    )
    traversal = _Traversal(
        network, runner, sink, (box_array, tol, check_bounded, method), batch_size, max_in_flight, max_regions
    )
    bar = tqdm(desc="enumerating regions", unit="region", disable=not progress, mininterval=0.5)
    traversal.bar = bar
    try:
        traversal.seed(start, box)
        traversal.run()
    finally:
        bar.close()
        runner.close()
        if client is not None:
            client.close()
    seconds = time.perf_counter() - t0
    stats = dict(
        box=box,
        empty_candidates=traversal.empty,
        failures=traversal.failures,
        n_lps=traversal.n_lps,
        seconds=seconds,
        truncated=traversal.truncated,
        used_executor=runner.used_executor,
        method=method,
        fallbacks=traversal.fallbacks,
        num_batches=traversal.batches,
    )
    if out_dir is None:
        patterns, points, radii, facets, bounded = sink.arrays()
        return EnumerationResult(
            patterns=patterns, interior_points=points, radii=radii, num_facets=facets, bounded=bounded, **stats
        )
    sink.flush()
    num_bounded = sink.num_bounded if check_bounded else None
    num_unbounded = sink.count - sink.num_bounded if check_bounded else None
    sink.write_manifest(
        {
            "complete": True,
            "network": repr(network),
            "words": network.num_words,
            "dim": d,
            "tol": tol,
            "box": None if box is None else [box.lo.tolist(), box.hi.tolist()],
            "num_regions": sink.count,
            "num_bounded": num_bounded,
            "num_unbounded": num_unbounded,
            "empty_candidates": traversal.empty,
            "failures": traversal.failures,
            "n_lps": traversal.n_lps,
            "seconds": seconds,
            "truncated": traversal.truncated,
            "used_executor": runner.used_executor,
            "method": method,
            "fallbacks": traversal.fallbacks,
            "batch_size": batch_size,
            "max_in_flight": max_in_flight,
            "num_batches": traversal.batches,
        }
    )
    return EnumerationShards(
        directory=sink.directory,
        num_regions=sink.count,
        num_bounded=num_bounded,
        num_unbounded=num_unbounded,
        shard_files=[f["file"] for f in sink.files],
        **stats,
    )


def _resolve_method(method: str, d: int) -> str:
    if method == "auto":
        return "clip" if d == 2 else "highs"
    if method not in METHODS:
        raise ValueError(f"enumerate_regions: method must be 'auto' or one of {METHODS}, got {method!r}")
    if method == "clip" and d != 2:
        raise ValueError(
            f"enumerate_regions: method='clip' (exact polygon clipping) needs a 2-D input space, got dimension {d}"
        )
    return method


def _start_points(start, box: Box | None, d: int) -> np.ndarray:
    if start is None:
        return (box.centre if box is not None else np.zeros(d))[None]
    points = np.asarray(start.detach().cpu() if hasattr(start, "detach") else start, dtype=np.float64)
    if points.ndim == 1:
        points = points[None]
    if points.ndim != 2 or points.shape[1] != d or len(points) == 0:
        raise ValueError(
            f"enumerate_regions: start must be a point [{d}] or points [n, {d}], got shape {np.shape(start)}"
        )
    if not np.all(np.isfinite(points)):
        raise ValueError("enumerate_regions: the start points must be finite")
    if box is not None and not np.all(box.contains(points)):
        raise ValueError("enumerate_regions: the start points must lie inside the box")
    return points


def _keys(patterns: np.ndarray) -> list:
    """Hashable keys of packed patterns ``[n, words]``: Python ints for one word, else their bytes."""
    if patterns.shape[1] == 1:
        return patterns[:, 0].tolist()
    return np.ascontiguousarray(patterns).view(f"V{8 * patterns.shape[1]}").ravel().tolist()


class _Traversal:
    """The driver's state: visited patterns, the pending frontier, batches in flight, counts."""

    def __init__(self, network, runner, sink, analysis_args, batch_size, max_in_flight, max_regions):
        self.network, self.runner, self.sink = network, runner, sink
        self.args = analysis_args
        self.batch_size, self.max_in_flight, self.max_regions = batch_size, max_in_flight, max_regions
        self.seen: set = set()
        self.pending: deque = deque()  # chunks [k, words] of patterns waiting for a batch
        self.pending_count = 0
        self.in_flight: deque = deque()  # (patterns, future)
        self.empty = self.n_lps = self.fallbacks = self.batches = 0
        self.failures: list[str] = []
        self.truncated = False
        self.bar = None

    def seed(self, start: np.ndarray, box: Box | None) -> None:
        """Analyse the start points' regions here; if none has an interior, points around the first."""
        candidates = [start]
        rng = np.random.default_rng(0)
        scale = box.half_width if box is not None else 1.0 + np.abs(start[0])
        for radius in SEED_RADII:
            around = start[0] + radius * scale * rng.uniform(-1, 1, size=(SEED_POINTS, len(start[0])))
            candidates.append(around if box is None else np.clip(around, box.lo, box.hi))
        for points in candidates:
            patterns = self.network.patterns(points).numpy()
            _, first = np.unique(patterns, axis=0, return_index=True)
            fresh = [p for p in patterns[np.sort(first)] if _keys(p[None])[0] not in self.seen]
            if not fresh:
                continue
            batch = np.stack(fresh)
            self.seen.update(_keys(batch))
            self._consume(batch, _Deferred(analyse_batch, (self.network, batch, *self.args)).result())
            if self.sink.count:
                return
        raise RegionLPError(
            f"enumerate_regions: no region with an interior (Chebyshev radius > tol = {self.args[1]}) at the start "
            f"point(s) or at {SEED_POINTS * len(SEED_RADII)} points around them; "
            + (
                f"LP failures: {self.failures[:3]}"
                if self.failures
                else "is the box inside a single flat region of a degenerate network?"
            )
        )

    def run(self) -> None:
        self._fill()
        while self.in_flight and not self.truncated:
            batch, future = self.in_flight.popleft()
            self._consume(batch, self.runner.result(future, analyse_batch, self.network, batch, *self.args))
            self._fill()
        for _, future in self.in_flight:
            future.cancel()

    def _fill(self) -> None:
        """Submit batches while fewer than max_in_flight are out (partial batches too: keep workers busy)."""
        while not self.truncated and self.pending_count and len(self.in_flight) < self.max_in_flight:
            take, parts = min(self.batch_size, self.pending_count), []
            while take:
                chunk = self.pending.popleft()
                if len(chunk) > take:
                    parts.append(chunk[:take])
                    self.pending.appendleft(chunk[take:])
                    take = 0
                else:
                    parts.append(chunk)
                    take -= len(chunk)
            batch = np.concatenate(parts)
            self.pending_count -= len(batch)
            self.in_flight.append((batch, self.runner.submit(analyse_batch, self.network, batch, *self.args)))

    def _consume(self, batch: np.ndarray, result) -> None:
        self.batches += 1
        kept = batch[result.keep]
        n = len(kept)
        if self.max_regions is not None and self.sink.count + n >= self.max_regions:
            n = self.max_regions - self.sink.count
            self.truncated = True
        bounded = None if result.bounded is None else result.bounded[:n]
        self.sink.add(kept[:n], result.points[:n], result.radii[:n], result.num_facets[:n], bounded)
        self.empty += int((~result.keep).sum())
        self.n_lps += result.n_lps
        self.fallbacks += result.fallbacks
        self.failures += result.failures
        if self.bar is not None:
            self.bar.update(n)
        if self.truncated or not len(result.neighbours):
            return
        fresh = np.zeros(len(result.neighbours), dtype=bool)
        seen = self.seen
        for i, key in enumerate(_keys(result.neighbours)):
            if key not in seen:
                seen.add(key)
                fresh[i] = True
        if fresh.any():
            self.pending.append(result.neighbours[fresh])
            self.pending_count += int(fresh.sum())


def sample_patterns(
    network: ReLUNetwork, box, n: int, *, seed: int = 0, grid: bool = False, chunk: int = 1 << 16
) -> np.ndarray:
    """Distinct packed patterns seen at ``n`` points of ``box`` (uniform random, or a grid of about
    ``n`` points when ``grid``). Sampling can only find a subset of the regions an exact
    enumeration finds; the demos and tests use it to check :func:`enumerate_regions`."""
    box = as_box(box, network.input_dim)
    if box is None:
        raise ValueError("sample_patterns: needs a box (lo, hi) to sample from, got None")
    n = as_int(n, "sample_patterns: n", minimum=1)
    chunk = as_int(chunk, "sample_patterns: chunk", minimum=1)
    d = network.input_dim
    rng = np.random.default_rng(as_int(seed, "sample_patterns: seed"))
    if grid:
        per_dim = max(2, int(round(n ** (1.0 / d))))
        axes = [np.linspace(box.lo[k], box.hi[k], per_dim) for k in range(d)]
        points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    else:
        points = box.sample(n, rng)
    unique = []
    for i in range(0, len(points), chunk):
        p = network.patterns(points[i : i + chunk]).numpy()
        unique.append(np.unique(p, axis=0))
    return np.unique(np.concatenate(unique), axis=0)
