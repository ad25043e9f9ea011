"""Likelihood on a Dask LocalCluster: 1 vs 2 process workers on a Fig. 5-size run (issue 19 item 4).

    python benchmarks/scale_out_likelihood.py [--points 10000] [--rounds 100] [--task-rows 65536]
        [--out benchmarks/scale_out_likelihood.json]

For each worker count: cluster start-up, the wall time of ``log_likelihood(path, ...,
executor=client.get_executor())``, the compute time inside every task (so that
overhead per task = (wall x workers - sum of task compute) / tasks), bytes
shipped per task and back, the driver's memory, and a bit-for-bit comparison
with the in-process result. A burst of empty tasks measures how many tasks per
second the driver and scheduler turn around, the limit for very many workers
(docs/guides/scale_out_likelihood.md turns these into a model for 100 workers).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from manifold_ext._checkpoint import read_header
from manifold_ext._distributed import local_cluster
from manifold_ext._machine import machine_record
from manifold_ext.diffusion import PointEpsNet, linear_schedule, log_likelihood, save_checkpoint
from manifold_ext.diffusion.likelihood import _Grid, _likelihood_task, _resolve_seed, _tasks


def timed_task(task: dict):
    """``_likelihood_task`` plus its wall seconds, its CPU seconds (one task at a time per worker process,
    so the process's CPU time is the task's, whatever else shares the machine) and the worker's pid."""
    start, cpu = time.perf_counter(), time.process_time()
    values = _likelihood_task(task)
    return values, time.perf_counter() - start, os.getpid(), time.process_time() - cpu


def cold_model_load(path: str, sha256: str) -> tuple[float, float]:
    """Wall and CPU seconds a worker takes to read, verify and unpickle the checkpoint (its cache emptied)."""
    from manifold_ext.diffusion import likelihood

    likelihood._WORKER_MODELS.clear()
    start, cpu = time.perf_counter(), time.process_time()
    likelihood._worker_model(path, sha256)
    return time.perf_counter() - start, time.process_time() - cpu


def empty_task(index: int) -> int:
    return index


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(workers: int, path: str, x0: torch.Tensor, rounds: int, task_rows: int, seed: int) -> dict:
    start = time.perf_counter()
    with local_cluster(workers, feature="the scale-out benchmark") as client:
        startup = time.perf_counter() - start
        # Warm the workers (imports) so that the run measures the work, then time the model load separately.
        client.run(lambda: __import__("manifold_ext.diffusion"))
        grid = _Grid(points=x0.shape[0], rounds=rounds, batch_rows=min(16_384, task_rows), dt=1, seed=seed, fused=True)
        sha256 = read_header(path)["sha256"]
        tasks = _tasks(path, sha256, x0, grid, task_rows)
        load = list(client.run(cold_model_load, path, sha256).values())
        rss_before = rss_mb()
        start = time.perf_counter()
        futures = [client.submit(timed_task, task, pure=False) for task in tasks]
        results = client.gather(futures)
        wall = time.perf_counter() - start
        values = torch.cat([torch.from_numpy(r[0]) for r in results]).view(x0.shape[0], rounds)
        compute = [r[1] for r in results]
        cpu = [r[3] for r in results]
        shipped = [len(pickle.dumps(task)) for task in tasks]
        returned = [r[0].nbytes for r in results]
        start = time.perf_counter()
        client.gather(client.map(empty_task, range(2000), pure=False))
        empty_rate = 2000 / (time.perf_counter() - start)
        return {
            "workers": workers,
            "cluster_startup_seconds": round(startup, 2),
            "seconds": round(wall, 2),
            "tasks": len(tasks),
            "rows_per_task": tasks[0]["row_stop"] - tasks[0]["row_start"],
            "task_compute_seconds_sum": round(sum(compute), 2),
            "task_compute_seconds_first_per_worker": _first_per_worker(results),
            "task_cpu_seconds_sum": round(sum(cpu), 2),
            "model_load_seconds_per_worker": [round(wall, 3) for wall, _ in load],
            "model_load_cpu_seconds_per_worker": [round(cpu_s, 3) for _, cpu_s in load],
            "overhead_seconds_per_task": round((wall * workers - sum(compute)) / len(tasks), 3),
            "bytes_shipped_per_task": int(sum(shipped) / len(shipped)),
            "bytes_returned_per_task": int(sum(returned) / len(returned)),
            "driver_rss_mb_before": round(rss_before, 1),
            "driver_rss_mb_after": round(rss_mb(), 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "empty_tasks_per_second": round(empty_rate, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "_values": values,
        }


def _first_per_worker(results) -> list[float]:
    """Compute seconds of each worker's first task (it includes loading and verifying the checkpoint)."""
    seen, first = set(), []
    for _, seconds, pid, _cpu in results:
        if pid not in seen:
            seen.add(pid)
            first.append(round(seconds, 2))
    return first


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--task-rows", type=int, default=65_536)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "scale_out_likelihood.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = PointEpsNet(hidden=128, T=100).eval()
    nn.init.normal_(model.output.weight, std=0.1)
    x0 = torch.randn(args.points, 2, generator=torch.Generator().manual_seed(1))
    record = {
        "points": args.points,
        "rounds": args.rounds,
        "T": 100,
        "dt": 1,
        "task_rows": args.task_rows,
        "machine": machine_record(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "fig5_eps.ckpt")
        save_checkpoint(path, model, linear_schedule(100))
        record["checkpoint_bytes"] = Path(path).stat().st_size
        seed = _resolve_seed(0, None)
        reference = None
        for workers in (int(w) for w in args.workers.split(",")):
            run = measure(workers, path, x0, args.rounds, args.task_rows, seed)
            values = run.pop("_values")
            reference = values if reference is None else reference
            run["values_equal_first_run"] = bool(torch.equal(values, reference))
            record["runs"].append(run)
            print(json.dumps(run), flush=True)
        torch.set_num_threads(1)  # like a worker: one thread
        start = time.perf_counter()
        local = log_likelihood(path, x0[:1000], rounds=args.rounds, seed=0, batch_size=min(16_384, args.task_rows))
        record["in_process_one_thread_seconds_per_1000_points"] = round(time.perf_counter() - start, 2)
        # The first 1,000 points' rows get the same noise and the same batch grid (values agree to the last
        # bits; the last, shorter batch may round a last bit differently).
        record["in_process_max_abs_difference"] = (local - reference[:1000]).abs().max().item()
    first, *others = record["runs"]
    for run in others:
        run["speedup_vs_first"] = round(first["seconds"] / run["seconds"], 2)
    record["model"] = scaling_model(record)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(record))
    return record


def scaling_model(record: dict) -> dict:
    """Constants measured here and what they predict for W dedicated workers (docs/guides/scale_out_likelihood.md).

    wall(W) = load + (row_steps * c + tasks * overhead) / min(W, tasks), and never below tasks / rate,
    the driver's turnaround of tasks. c: CPU seconds per row-step of one worker (its tasks' CPU time,
    which other jobs on a shared machine do not inflate); load: CPU seconds a worker takes to read,
    verify and unpickle the checkpoint; overhead: the smallest measured per-task overhead (wall).
    """
    runs = record["runs"]
    row_steps = record["points"] * record["rounds"] * record["T"]
    best = max(runs, key=lambda run: run["workers"])
    # Compute per row-step from CPU time: what one dedicated core needs, however busy this machine was.
    c = min(run["task_cpu_seconds_sum"] for run in runs) / row_steps
    load = max(max(run["model_load_cpu_seconds_per_worker"]) for run in runs)
    overhead = max(0.0, min(run["overhead_seconds_per_task"] for run in runs))
    rate = max(run["empty_tasks_per_second"] for run in runs)
    bytes_per_row = best["bytes_returned_per_task"] / best["rows_per_task"]

    def wall(workers: int, steps: int, task_count: int) -> float:
        return max(load + (steps * c + task_count * overhead) / min(workers, task_count), task_count / rate)

    predictions = {}
    fig5_row_steps = 10_000 * 100 * 100
    for name, factor in (("fig5", 1), ("fig5_x100", 100)):
        for workers in (1, 2, 10, 100):
            task_count = max(4 * workers, 1)  # four tasks per worker balance the load
            predictions[f"{name}_{workers}_workers_seconds"] = round(
                wall(workers, fig5_row_steps * factor, task_count), 1
            )
    return {
        "seconds_per_row_step": c,
        "first_task_load_seconds": round(load, 3),
        "overhead_seconds_per_task": round(overhead, 4),
        "driver_tasks_per_second": rate,
        "bytes_returned_per_row": bytes_per_row,
        "predictions": predictions,
    }


def markdown(record: dict) -> str:
    machine, model = record["machine"], record["model"]
    lines = [
        f"{record['points']:,} points x {record['rounds']} rounds x T = {record['T']} (dt = 1) on a Dask "
        f"LocalCluster (process workers, 1 thread each, loopback), {record['task_rows']:,} rows per task; "
        f"{machine['cpu']}, {machine['cores']} cores, {machine['date']}.",
        "",
        "| workers | seconds | speed-up | tasks | task CPU-s (sum) | overhead per task (s) | model load (s) "
        "| bytes out / back per task | driver RSS before / after (MB) | load average | same values |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        lines.append(
            f"| {run['workers']} | {run['seconds']} | {run.get('speedup_vs_first', 1.0)} | {run['tasks']} | "
            f"{run['task_cpu_seconds_sum']} | {run['overhead_seconds_per_task']} | "
            f"{max(run['model_load_seconds_per_worker'])} | "
            f"{run['bytes_shipped_per_task']:,} / {run['bytes_returned_per_task']:,} | "
            f"{run['driver_rss_mb_before']} / {run['driver_rss_mb_after']} | {run['load_average_1min']} | "
            f"{'yes' if run['values_equal_first_run'] else 'NO'} |"
        )
    p = model["predictions"]
    lines += [
        "",
        f"Measured constants: {model['seconds_per_row_step'] * 1e9:.0f} ns of CPU per row-step on one worker, "
        f"{model['first_task_load_seconds']} CPU-s for a worker to load the checkpoint, "
        f"{model['overhead_seconds_per_task']} s overhead per task, {model['driver_tasks_per_second']:.0f} empty "
        f"tasks per second turned around by the driver and scheduler, {model['bytes_returned_per_row']:.0f} bytes "
        "returned per row.",
        "",
        "| predicted wall time (s) on dedicated cores, 4 tasks per worker | 1 worker | 2 | 10 | 100 |",
        "|---|---|---|---|---|",
        "| Fig. 5 (10^8 row-steps) | "
        + " | ".join(str(p[f"fig5_{w}_workers_seconds"]) for w in (1, 2, 10, 100))
        + " |",
        "| 100 x Fig. 5 | " + " | ".join(str(p[f"fig5_x100_{w}_workers_seconds"]) for w in (1, 2, 10, 100)) + " |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
