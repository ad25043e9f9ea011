"""Where :func:`enumerate_regions` runs its batches: in this process, a local process pool, or any
``concurrent.futures.Executor`` (Dask's ``client.get_executor()`` among them).

The runner hands out futures; the driver always waits for the oldest one and decides what to
submit next only from results it has consumed, so the batches (and therefore the result) are
the same whichever executor ran them and however long each took.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from manifold_ext.relu_geometry._checks import as_float, as_int


class _Deferred:
    """A future computed in this process when its result is first asked for.

    It runs on one intra-op thread, as the pool's workers do: a batch is many small ops
    (region systems of a few dozen rows, the 2-D op), and on a busy machine waking a second
    OpenMP thread for each costs far more than the op (measured on the shared 2-core machine:
    region_system of 256 patterns of a 3x25 net, 7 ms on one thread, 185 ms on two). The
    setting is restored afterwards; only the driver's thread runs these."""

    def __init__(self, fn, args):
        self._fn, self._args, self._done, self._value = fn, args, False, None

    def result(self):
        if not self._done:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._value, self._done = self._fn(*self._args), True
            finally:
                torch.set_num_threads(threads)
            self._fn = self._args = None
        return self._value

    def cancel(self) -> bool:
        return True


def _single_threaded_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already


class BatchRunner:
    """Submits batches where ``executor`` says (see :func:`enumerate_regions`)."""

    MODES = ("auto", "process", "inline")

    def __init__(self, executor, pool_after, workers):
        if isinstance(executor, Executor):
            self.mode, self.executor = "given", executor
        elif executor is None or (isinstance(executor, str) and executor in self.MODES):
            self.mode, self.executor = executor or "inline", None
        else:
            raise ValueError(
                f"enumerate_regions: executor must be a concurrent.futures.Executor, None or one of "
                f"{self.MODES}, got {executor!r}"
            )
        self.pool_after = as_float(pool_after, "enumerate_regions: pool_after")
        if self.pool_after < 0:
            raise ValueError(f"enumerate_regions: pool_after must be >= 0 seconds, got {pool_after}")
        workers = None if workers is None else as_int(workers, "enumerate_regions: workers", minimum=1)
        self.workers = workers or os.cpu_count() or 1
        self.started = time.perf_counter()
        self.own_pool: ProcessPoolExecutor | None = None
        self.pool_broke = False
        self.used_executor = False

    def _use_executor(self) -> bool:
        if self.mode == "given" or (self.executor is not None and self.mode != "inline"):
            return True
        if self.mode == "inline" or self.workers < 2:
            return False
        return self.mode == "process" or time.perf_counter() - self.started >= self.pool_after

    def _pool(self) -> Executor:
        if self.executor is None:
            # spawn: forking a process whose torch/OpenMP threads are running is unsafe.
            self.own_pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_single_threaded_worker
            )
            self.executor = self.own_pool
        return self.executor

    def submit(self, fn, *args):
        if not self._use_executor():
            return _Deferred(fn, args)
        self.used_executor = True
        return self._pool().submit(fn, *args)

    def result(self, future, fn, *args):
        """The future's result; if the local pool broke, the batch is run here instead."""
        try:
            return future.result()
        except BrokenProcessPool as error:
            if self.own_pool is None and not self.pool_broke:
                raise
            if self.pool_broke:  # the other batches that were in the broken pool
                return _Deferred(fn, args).result()
            # E.g. a script without an `if __name__ == "__main__":` guard, whose spawned workers
            # re-run it on import: finish in this process instead of failing.
            warnings.warn(
                f"enumerate_regions: the local process pool failed ({error}; a script without an "
                "`if __name__ == '__main__':` guard?); continuing in this process",
                RuntimeWarning,
                stacklevel=3,
            )
            self.close()
            self.mode, self.pool_broke = "inline", True
            return _Deferred(fn, args).result()

    def close(self) -> None:
        if self.own_pool is not None:
            self.own_pool.shutdown(cancel_futures=True)
            self.own_pool = None
            self.executor = None
