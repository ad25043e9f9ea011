"""Running independent tasks in-process or on any ``concurrent.futures.Executor`` (a process pool, Dask).

The task function must be a module-level function and its arguments plain
data and tensors, so that the executor can ship them; models travel as
checkpoint paths, never as pickled closures. Results come back in task order,
so the outcome never depends on how many workers ran them or in what order
they finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, as_completed
from typing import Any

from tqdm.auto import tqdm


def run_tasks(
    function: Callable[[Any], Any],
    tasks: Sequence[Any],
    executor: Executor | None = None,
    progress: bool = False,
    desc: str = "tasks",
) -> list:
    """``[function(task) for task in tasks]``, on ``executor`` when given (results in task order)."""
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress, mininterval=0.5)
    try:
        if executor is None:
            results = []
            for task in tasks:
                results.append(function(task))
                bar.update()
            return results
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(
                f"executor must be a concurrent.futures.Executor (e.g. client.get_executor() of a "
                f"Dask client), got {type(executor).__name__}"
            )
        futures = {executor.submit(function, task): index for index, task in enumerate(tasks)}
        results: list = [None] * len(tasks)
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return results
    finally:
        bar.close()
