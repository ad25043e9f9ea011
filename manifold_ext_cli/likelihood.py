"""``manifold-ext likelihood``: the command's arguments (:func:`add_arguments`) and its work (:func:`run`).

This module imports only argparse at the top, so that building the command
line stays fast; the work is imported in :func:`run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Score a point set with a saved diffusion model (Eq. 15): per-round lower bounds of log p and their
log-mean-exp estimate, in nats (or log10 with --log10), as JSON.

The model comes from a checkpoint (manifold_ext.diffusion.save_checkpoint, or a finished
train_eps_model run); every worker loads it from that path, so the path must be readable on every
worker machine. --scheduler ADDRESS uses an existing Dask scheduler (pip install
'manifold_ext[distributed]'), --workers N a local process pool; without either the work runs in this
process. The numbers are the same in all three cases (for the same --batch-size).
"""

POINT_SETS = ("swiss_roll", "circle", "moons", "s_curve")  # manifold_ext.diffusion.toy_data.POINT_SETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="diffusion model checkpoint (save_checkpoint / train_eps_model)")
    parser.add_argument(
        "--data",
        default="swiss_roll",
        help=f"a generated point set ({', '.join(POINT_SETS)}) or a .npy / .pt file of [N, *] "
        "floating-point points (default swiss_roll)",
    )
    parser.add_argument("--points", type=int, default=10_000, help="points of a generated set (default 10,000)")
    parser.add_argument("--data-seed", type=int, default=1, help="seed of a generated set (default 1)")
    parser.add_argument("--rounds", type=int, default=100, help="forward-chain draws per point (default 100)")
    parser.add_argument("--dt", type=int, default=1, help="index stride between scored times, a divisor of T")
    parser.add_argument("--seed", type=int, default=0, help="seed of the forward noise (default 0)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows (point x round) per network evaluation (default: log_likelihood's)",
    )
    parser.add_argument(
        "--task-rows",
        type=int,
        default=None,
        help="rows per task on --scheduler / --workers (default: log_likelihood's)",
    )
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the tasks on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786",
    )
    engine.add_argument("--workers", type=int, default=None, help="run the tasks on a local pool of N processes")
    parser.add_argument("--log10", action="store_true", help="report log10 p instead of nats")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here too")
    parser.add_argument("--values", type=Path, default=None, help="save the [N, rounds] bounds as .npy")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _points(args):
    import numpy as np
    import torch

    source = Path(args.data)
    if args.data in POINT_SETS:
        from manifold_ext.diffusion.toy_data import point_set

        return point_set(args.data, args.points, seed=args.data_seed)
    if source.suffix == ".npy":
        return torch.from_numpy(np.load(source))
    if source.suffix in (".pt", ".pth"):
        return torch.load(source, weights_only=True)
    raise ValueError(f"--data must be one of {', '.join(POINT_SETS)} or a .npy / .pt file, got {args.data!r}")


def _executor(args):
    """(executor or None, what to close afterwards, engine name)."""
    if args.scheduler is not None:
        from manifold_ext._distributed import dask_executor

        executor, client = dask_executor(args.scheduler)
        return executor, client, f"dask {args.scheduler} ({len(client.nthreads())} workers)"
    if args.workers is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        return pool, pool, f"process pool ({args.workers} workers)"
    return None, None, "in-process"


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import numpy as np

    from manifold_ext.diffusion.likelihood import log_likelihood, log_mean_exp

    points = _points(args)
    executor, to_close, engine = _executor(args)
    options = {
        key: value
        for key, value in (("batch_size", args.batch_size), ("task_rows", args.task_rows))
        if value is not None
    }
    start = time.perf_counter()
    try:
        values = log_likelihood(
            str(args.checkpoint),
            points,
            dt=args.dt,
            rounds=args.rounds,
            seed=args.seed,
            log10=args.log10,
            progress=not args.quiet,
            executor=executor,
            **options,
        )
    finally:
        if to_close is not None:
            (to_close.shutdown if hasattr(to_close, "shutdown") else to_close.close)()
    seconds = time.perf_counter() - start
    scale = np.log(10.0) if args.log10 else 1.0  # log-mean-exp in nats, then back to the unit asked for
    estimate = log_mean_exp(values * scale) / scale
    summary = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "points": int(values.shape[0]),
        "rounds": args.rounds,
        "dt": args.dt,
        "seed": args.seed,
        "unit": "log10" if args.log10 else "nats",
        "mean_log_p_bound": values.mean().item(),
        "std_over_rounds": values.std(1).mean().item() if args.rounds > 1 else None,
        "mean_log_p_estimate": estimate.mean().item(),
        "engine": engine,
        "seconds": round(seconds, 3),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.values is not None:
        np.save(args.values, values.numpy())
    return 0
