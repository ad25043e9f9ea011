"""Dask distributed as the cluster engine: one place that turns a scheduler address into an Executor.

Work over many independent items (regions, likelihood shards) goes through a
``concurrent.futures.Executor``; Dask's ``Client.get_executor()`` is one, so
the same code runs on a local pool or a cluster.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Executor

from manifold_ext._optional import require


def dask_client(scheduler: str, timeout: float = 30.0):
    """A ``distributed.Client`` connected to an existing scheduler at ``scheduler`` (e.g. ``tcp://host:8786``).

    Raises MissingOptionalDependency (an ImportError) naming ``pip install 'manifold_ext[distributed]'``
    when Dask distributed is not installed, and ValueError for an empty address.
    """
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise ValueError(
            f"scheduler must be a Dask scheduler address such as 'tcp://127.0.0.1:8786', got {scheduler!r}"
        )
    distributed = require("distributed", feature="running on a Dask cluster (--scheduler)")
    return distributed.Client(scheduler, timeout=timeout)


def dask_executor(scheduler: str, timeout: float = 30.0) -> tuple[Executor, object]:
    """``(executor, client)`` for the scheduler at ``scheduler``; close the client when done."""
    client = dask_client(scheduler, timeout=timeout)
    return client.get_executor(), client


@contextlib.contextmanager
def local_cluster(workers: int, feature: str = "a local Dask cluster") -> Iterator[object]:
    """A ``distributed.Client`` of a loopback ``LocalCluster`` of ``workers`` single-threaded process workers.

    What the tests and the scale-out measurements run on: process workers (as on a real cluster, each
    imports the package itself), one thread each, no dashboard; the cluster is closed on exit.
    """
    distributed = require("distributed", feature=feature)
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
