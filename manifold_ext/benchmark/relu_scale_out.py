"""Region enumeration on a Dask LocalCluster with 1, 2, ... process workers (issue 19, item 4).

    python -m manifold_ext.benchmark.relu_scale_out --case 3d --workers 1 2 [--out scale.json]

Measures, on one large enumeration (>= 10,000 regions): the in-process time; the wall time on
a LocalCluster with each number of workers (same batches, results asserted identical); the
overhead per task; the driver's own cost per region (deduplication and recording, the part that
does not scale out); the driver's peak Python memory in memory and streamed to shards; and the
bytes a task ships (arguments and result). ``docs/guides/scale_out_enumeration.md`` turns these into a model
of what more workers give (``--out X.json`` also writes ``X.md``, the table that page includes).
Needs ``pip install 'manifold_ext[distributed]'``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from manifold_ext._distributed import local_cluster
from manifold_ext._machine import machine_record

CASES = {  # name -> (input dim, widths, box, batch size): both give >= 10,000 regions in all of R^d
    "2d": (2, [40, 40, 40], None, 256),  # exact 2-D op: cheap tasks, the driver's limits show
    "3d": (3, [12, 12, 12], None, 32),  # LP path: tasks worth shipping
}


def _peak_python_mb(fn):
    tracemalloc.start()
    try:
        value = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return value, peak / 1e6


def measure(case: str, workers: list[int]) -> dict:
    from manifold_ext.relu_geometry import ReLUNetwork, enumerate_regions
    from manifold_ext.relu_geometry import enumerate as enumerate_module
    from manifold_ext.relu_geometry._analysis import analyse_batch

    d, widths, box, batch = CASES[case]
    net = ReLUNetwork.random(d, widths, seed=0)
    out = {
        "case": case,
        "network": repr(net),
        "batch_size": batch,
        "threads_per_process": 1,
        "max_in_flight": inspect.signature(enumerate_regions).parameters["max_in_flight"].default,
    }
    torch.set_num_threads(1)
    # The driver's own time per consumed batch (dedup + recording), by wrapping _consume.
    driver_seconds = [0.0]
    consume = enumerate_module._Traversal._consume

    def timed_consume(self, patterns, result):
        start = time.perf_counter()
        consume(self, patterns, result)
        driver_seconds[0] += time.perf_counter() - start

    enumerate_module._Traversal._consume = timed_consume
    try:
        start = time.perf_counter()
        inline = enumerate_regions(net, box=box, executor=None, batch_size=batch, progress=False)
        out["inline_s"] = time.perf_counter() - start
        out["regions"], out["tasks"] = len(inline), inline.num_batches
        out["driver_s_per_region_us"] = 1e6 * driver_seconds[0] / len(inline)
        # Peak Python memory of the driver (tracemalloc slows the run: not timed).
        _, out["in_memory_driver_peak_MB"] = _peak_python_mb(
            lambda: enumerate_regions(net, box=box, executor=None, batch_size=batch, progress=False)
        )
        with tempfile.TemporaryDirectory() as tmp:
            _, out["streamed_driver_peak_MB"] = _peak_python_mb(
                lambda: enumerate_regions(
                    net,
                    box=box,
                    executor=None,
                    batch_size=batch,
                    out_dir=Path(tmp) / "run",
                    shard_size=5000,
                    progress=False,
                )
            )
        out["streamed_driver_bytes_per_region"] = 1e6 * out["streamed_driver_peak_MB"] / len(inline)
        sample = inline.patterns[:batch]
        args = (net, sample, None, 1e-7, box is None, inline.method)
        out["bytes_per_task_args"] = len(pickle.dumps((analyse_batch, *args)))
        out["bytes_per_task_result"] = len(pickle.dumps(analyse_batch(*args)))
        out["network_pickle_bytes"] = len(pickle.dumps(net))
        out["bytes_per_region"] = (out["bytes_per_task_args"] + out["bytes_per_task_result"]) / len(sample)
        for n in workers:
            with local_cluster(n, feature="the scale-out measurement") as client:
                client.run(torch.set_num_threads, 1)
                executor = client.get_executor()
                executor.submit(analyse_batch, *args).result()  # workers have imported everything
                start = time.perf_counter()
                remote = enumerate_regions(net, box=box, executor=executor, batch_size=batch, progress=False)
                wall = time.perf_counter() - start
            assert np.array_equal(remote.patterns, inline.patterns), "the cluster's regions differ"
            out[f"dask_{n}_workers_s"] = wall
            out[f"dask_{n}_workers_efficiency"] = out["inline_s"] / (n * wall)  # 1.0: n workers, n times faster
            if n == 1:  # what a task costs beyond its work, with batches in flight
                out["overhead_per_task_ms"] = 1e3 * (wall - out["inline_s"]) / out["tasks"]
    finally:
        enumerate_module._Traversal._consume = consume
    if 1 in workers and 2 in workers:
        out["speedup_2_vs_1_workers"] = out["dask_1_workers_s"] / out["dask_2_workers_s"]
    return out


def model(result: dict, workers: int) -> dict:
    """What ``workers`` workers would give, from one measurement (docs/guides/scale_out_enumeration.md).

    Each region costs ``w`` seconds of analysis on a worker (the in-process time less the driver's
    share) and ``delta`` seconds on the driver (deduplication and recording); each task costs
    ``overhead`` seconds of scheduling, (de)serialisation and transfer, counted as serial because the
    scheduler and the driver share one process (conservative: part of it is on the workers). With
    ``n`` workers, R regions and T tasks the wall time is about
    ``max(R * w / min(n, max_in_flight), R * delta + T * overhead)`` (Amdahl with the driver as the serial part), so
    the speed-up over one process is capped at ``R * (w + delta) / (R * delta + T * overhead)``."""
    regions, tasks = result["regions"], result["tasks"]
    delta = 1e-6 * result["driver_s_per_region_us"]
    work = max(result["inline_s"] / regions - delta, 0.0)
    serial = regions * delta + tasks * max(1e-3 * result.get("overhead_per_task_ms", 0.0), 0.0)
    # Only max_in_flight batches are out at once: more workers than that idle (raise max_in_flight).
    parallel = regions * work / min(workers, result.get("max_in_flight", workers))
    wall = max(parallel, serial)
    return {
        "workers": workers,
        "wall_s": wall,
        "speedup_vs_inline": result["inline_s"] / wall,
        "driver_bound": serial >= parallel,
        "max_speedup": result["inline_s"] / serial if serial else float("inf"),
    }


def markdown(result: dict) -> str:
    """The measurement and the model as a Markdown table (included by the scale-out guide)."""
    rows = [
        ("network", f"`{result['network']}` in {result['case']}, batches of {result['batch_size']}"),
        ("regions / tasks", f"{result['regions']:,} / {result['tasks']:,}"),
        ("in process (1 thread)", f"{result['inline_s']:.1f} s"),
        ("driver per region (dedup + recording)", f"{result['driver_s_per_region_us']:.1f} µs"),
        ("bytes shipped per region (task arguments + result)", f"{result['bytes_per_region']:.0f} B"),
        (
            "driver peak Python memory, in memory / streamed to shards",
            f"{result['in_memory_driver_peak_MB']:.1f} MB / {result['streamed_driver_peak_MB']:.1f} MB",
        ),
    ]
    for key in sorted(k for k in result if k.startswith("dask_") and k.endswith("_workers_s")):
        n = int(key.split("_")[1])
        rows.append(
            (
                f"LocalCluster, {n} worker(s)",
                f"{result[key]:.1f} s (efficiency {result[f'dask_{n}_workers_efficiency']:.2f})",
            )
        )
    if "overhead_per_task_ms" in result:
        rows.append(("overhead per task (1 worker vs in process)", f"{result['overhead_per_task_ms']:.1f} ms"))
    if "speedup_2_vs_1_workers" in result:
        rows.append(("speed-up, 2 vs 1 workers", f"{result['speedup_2_vs_1_workers']:.2f}x"))
    if "overhead_per_task_ms" in result:
        for n in (10, 100):
            m = model(result, n)
            rows.append(
                (
                    f"model: {n} workers",
                    f"{m['wall_s']:.1f} s, {m['speedup_vs_inline']:.1f}x in-process"
                    + (" (driver-bound)" if m["driver_bound"] else ""),
                )
            )
        rows.append(("model: speed-up cap (driver + scheduler serial)", f"{model(result, 1)['max_speedup']:.1f}x"))
    machine = result.get("machine", {})
    head = f"Measured {result.get('when', '')} on {machine.get('cpu', 'this machine')}, load {result.get('load', '?')}."
    return "\n".join([head, "", "| quantity | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="3d")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.case, args.workers)
    result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["load"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    result["machine"] = machine_record()
    text = json.dumps(result, indent=1)
    print(text)
    print(markdown(result))
    if args.out is not None:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
