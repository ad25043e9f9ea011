"""Diffusion log-likelihood by Eq. 15, on the fused ops: per-round bounds and the log-mean-exp estimate.

-log q(x_0) ~ -log p(x_T) + sum_{t = 0, dt, ..., T - dt} [log q(x_{t+dt} | x_t) - log p_theta(x_t | x_{t+dt})]

with x_{t+dt} drawn by Eq. 17, q and p_theta Gaussian (Eq. 16, 18-20) and
p(x_T) = N(0, I). One random draw of the forward chain is a *round*. What a
round gives is not log p_theta(x_0) but a noisy lower bound of it:

* its expectation over the chain is the variational bound (ELBO) <= log p_theta(x_0);
* exp of it is an unbiased estimate of p_theta(x_0) (importance weighting with
  the forward chain as proposal), so the log-mean-exp over K rounds is a lower
  bound that tightens with K and tends to log p_theta(x_0) (Burda et al.'s IWAE
  bound). ``reduce="logmeanexp"`` returns it, one value per point, like
  ``torch.distributions``' ``log_prob``.

Random numbers: the rows of the (point, round) grid (row = point * rounds +
round) are cut into fixed blocks of :data:`NOISE_BLOCK_ROWS`; each block draws
its forward noise, step after step, from its own CPU generator seeded by
(seed, block index). The noise of a row therefore depends only on the seed, on
its index in the grid and on the dtype, not on ``batch_size``, the number of
points, the device, or how the work was split across processes or machines.

Scale-out: ``executor=`` (any ``concurrent.futures.Executor``: a process pool,
or ``distributed.Client.get_executor()``) runs contiguous ranges of batches as
tasks. Workers load the model from a checkpoint path (verified against the
driver's content hash), never from a pickled closure, and the result is
identical to the in-process run with the same ``batch_size`` whatever the
number of workers (see docs/guides/scale_out_likelihood.md).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext import _checkpoint as ckpt
from manifold_ext._args import as_int
from manifold_ext._shards import run_tasks
from manifold_ext.diffusion.models import check_model_schedule, model_device, time_tensor
from manifold_ext.diffusion.schedules import NoiseSchedule
from manifold_ext.ops import diffusion_forward_step, diffusion_nll_step, diffusion_nll_step_and_forward

LN10 = math.log(10.0)
NOISE_BLOCK_ROWS = 1024  # rows of the (point, round) grid that share one noise generator
DEFAULT_BATCH_ROWS = 16_384  # rows per network evaluation (chosen by measurement: docs/guides/diffusion.md)
DEFAULT_TASK_ROWS = 65_536  # rows per executor task (a few seconds of work for the 2-D eps-MLP)
REDUCTIONS = ("none", "logmeanexp", "mean")


def _standard_normal_nll(x: torch.Tensor) -> torch.Tensor:
    """-log N(x; 0, I) per sample (Eq. 16 with mu = 0, sigma = 1): the -log p(x_T) term of Eq. 15."""
    flat = x.flatten(1).to(torch.float64)
    return 0.5 * (flat.square().sum(1) + flat.shape[1] * math.log(2 * math.pi))


def _chain(model: nn.Module, x0: torch.Tensor, schedule: NoiseSchedule, dt: int, draw_noise, fused: bool):
    """-log q(x_0) of Eq. 15 for one forward chain per row of ``x0``; ``draw_noise()`` gives the next [B, *] noise."""
    times = schedule.check_dt(dt)
    abar = [schedule.abar(t) for t in times]
    device, batch = x0.device, x0.shape[0]
    acc = torch.zeros(batch, dtype=torch.float64, device=device)
    x_t = x0
    x_next = diffusion_forward_step(x_t, draw_noise(), abar[0], abar[1])  # Eq. 17
    steps = len(times) - 1
    for k in range(steps):
        eps = model(x_next, time_tensor(times[k + 1], batch, device))  # eps_theta(x_{t+dt}, t + dt)
        if k + 1 < steps:
            if fused:
                acc, x_after = diffusion_nll_step_and_forward(
                    acc, x_t, x_next, eps, draw_noise(), abar[k], abar[k + 1], abar[k + 2]
                )
            else:
                acc = diffusion_nll_step(acc, x_t, x_next, eps, abar[k], abar[k + 1])
                x_after = diffusion_forward_step(x_next, draw_noise(), abar[k + 1], abar[k + 2])
            x_t, x_next = x_next, x_after
        else:
            acc = diffusion_nll_step(acc, x_t, x_next, eps, abar[k], abar[k + 1])
            x_t = x_next
    return acc + _standard_normal_nll(x_t)  # x_t is now x_T


@torch.inference_mode()
def chain_nll(
    model: nn.Module,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    dt: int = 1,
    generator: torch.Generator | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """-log q(x_0) of Eq. 15 for one draw of the forward chain per row of ``x0`` ([B, *]); [B] float64.

    One round of :func:`log_likelihood` (negated), with the noise drawn from
    ``generator`` in order. ``fused`` scores the pair (t, t + dt) and draws
    x_{t + 2dt} in one pass (``diffusion_nll_step_and_forward``); otherwise a
    forward-step op and a likelihood-step op run separately (same numbers for the same noise).
    """
    _check_points(x0)
    check_model_schedule(model, schedule)

    def draw_noise():
        noise_device = generator.device if generator is not None else x0.device
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=noise_device).to(x0.device)

    return _chain(model, x0, schedule, dt, draw_noise, fused)


# ---------------------------------------------------------------------------
# Noise that does not depend on how the rows are batched or sharded
# ---------------------------------------------------------------------------


def block_seed(seed: int, block: int) -> int:
    """The generator seed of noise block ``block`` under ``seed`` (NumPy's SeedSequence: well mixed, portable)."""
    words = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])  # < 2**63, as torch.Generator.manual_seed wants


class _BlockNoise:
    """Forward-chain noise for rows [start, stop) of the (point, round) grid, one CPU generator per block.

    Each call returns the next step's noise [stop - start, *shape]. Every block
    draws all of its NOISE_BLOCK_ROWS rows (a block cut by the range, or the
    grid's last one, keeps the rows it needs), so a row's noise depends only on
    the seed, its index and the dtype: not on the range, the grid size or the batching.
    """

    def __init__(self, seed: int, start: int, stop: int, shape: tuple, dtype: torch.dtype, device: torch.device):
        self.start, self.stop, self.shape, self.dtype, self.device = start, stop, tuple(shape), dtype, device
        first, last = start // NOISE_BLOCK_ROWS, (stop - 1) // NOISE_BLOCK_ROWS
        self.blocks = [
            (torch.Generator().manual_seed(block_seed(seed, block)), block * NOISE_BLOCK_ROWS)
            for block in range(first, last + 1)
        ]  # (generator, first row of the block)

    def __call__(self) -> torch.Tensor:
        out = torch.empty((self.stop - self.start, *self.shape), dtype=self.dtype)
        for generator, low in self.blocks:
            high = low + NOISE_BLOCK_ROWS
            begin, end = max(low, self.start), min(high, self.stop)
            if begin == low and end == high:  # the whole block lies in the range: draw in place
                out[begin - self.start : end - self.start].normal_(generator=generator)
            else:
                block = torch.empty((NOISE_BLOCK_ROWS, *self.shape), dtype=self.dtype).normal_(generator=generator)
                out[begin - self.start : end - self.start] = block[begin - low : end - low]
        return out.to(self.device, non_blocking=True)


# ---------------------------------------------------------------------------
# Scoring a range of rows (the unit of work, in-process or on a worker)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """The (point, round) grid and how it is cut: row = point * rounds + round; batch b = rows [b * B, (b+1) * B)."""

    points: int
    rounds: int
    batch_rows: int
    dt: int
    seed: int
    fused: bool

    @property
    def total(self) -> int:
        return self.points * self.rounds


def _score_batch(model, schedule, points, first_point, grid: _Grid, start: int, stop: int, device) -> torch.Tensor:
    """log p bound (minus Eq. 15) of the rows [start, stop) of one batch; [rows] float64 on the CPU."""
    with torch.inference_mode():  # thread-local: set it in whichever thread runs the batch
        rows = torch.arange(start, stop)
        batch = points[rows // grid.rounds - first_point].to(device)
        noise = _BlockNoise(grid.seed, start, stop, batch.shape[1:], batch.dtype, device)
        return -_chain(model, batch, schedule, grid.dt, noise, grid.fused).cpu()


def _score_rows(
    model: nn.Module,
    schedule: NoiseSchedule,
    points: torch.Tensor,
    first_point: int,
    grid: _Grid,
    row_start: int,
    row_stop: int,
    bar=None,
    threads: int = 1,
) -> torch.Tensor:
    """log p bounds of rows [row_start, row_stop) (batch-aligned); [rows] float64 on the CPU.

    ``points`` holds the data points first_point, first_point + 1, ... that the rows need.
    With ``threads`` > 1 (CPU models), whole batches run concurrently on that many
    Python threads, each with one intra-op thread (see :func:`log_likelihood`).
    """
    device = model_device(model)
    out = torch.empty(row_stop - row_start, dtype=torch.float64)
    starts = range(row_start, row_stop, grid.batch_rows)

    def score(start: int) -> None:
        stop = min(start + grid.batch_rows, row_stop)
        out[start - row_start : stop - row_start] = _score_batch(
            model, schedule, points, first_point, grid, start, stop, device
        )
        if bar is not None:
            bar.update(stop - start)

    threads = min(threads, len(starts)) if device.type == "cpu" else 1
    if threads <= 1:
        for start in starts:
            score(start)
        return out
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # MKL's thread count is process-wide; OpenMP's is per thread (set in each worker)
    try:
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for future in [pool.submit(score, start) for start in starts]:
                future.result()
    finally:
        torch.set_num_threads(previous)
    return out


# Worker side: models loaded from checkpoint paths, cached per (path, content hash).
_WORKER_MODELS: dict[tuple[str, str], tuple[nn.Module, NoiseSchedule]] = {}


def _worker_model(path: str, sha256: str) -> tuple[nn.Module, NoiseSchedule]:
    key = (path, sha256)
    if key not in _WORKER_MODELS:
        from manifold_ext.diffusion.training import load_checkpoint

        if ckpt.read_header(path)["sha256"] != sha256:  # verified before anything is unpickled
            raise ckpt.CheckpointError(path, "differs on this worker from the driver's file (content hash)")
        model, schedule, _ = load_checkpoint(path)
        _WORKER_MODELS.clear()  # one model at a time: workers are long-lived
        _WORKER_MODELS[key] = (model.eval(), schedule)
    return _WORKER_MODELS[key]


def _likelihood_task(task: dict) -> np.ndarray:
    """One executor task: rows [row_start, row_stop) with the model loaded from ``task['checkpoint']``."""
    model, schedule = _worker_model(task["checkpoint"], task["sha256"])
    values = _score_rows(
        model, schedule, task["points"], task["first_point"], task["grid"], task["row_start"], task["row_stop"]
    )
    return values.numpy()


# ---------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------


def _check_points(x0) -> None:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a tensor of data points [N, *], got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise TypeError(
            f"x0 must be a floating-point tensor (the data points, e.g. float32), got dtype {x0.dtype}; "
            "convert it first (x0.float()): integer data would be scored as a different point set"
        )
    if x0.dim() < 2:
        raise ValueError(f"x0 must be [N, *] with a batch dimension, got shape {list(x0.shape)}")


def _resolve_seed(seed, generator) -> int:
    """A 62-bit seed: ``seed`` itself, else drawn from ``generator``, else from torch's global generator."""
    if seed is not None:
        return as_int(seed, "seed", 0)
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def _resolve_model(model, schedule: NoiseSchedule | None):
    """(model or None, schedule, checkpoint path or None, its content hash or None)."""
    if isinstance(model, (str, os.PathLike)):
        from manifold_ext.diffusion.training import load_checkpoint

        path = str(Path(model).resolve())
        sha = ckpt.read_header(path)["sha256"]
        loaded, saved_schedule, _ = load_checkpoint(path, schedule=schedule)
        return loaded, saved_schedule, path, sha
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be an eps-network (nn.Module) or a checkpoint path, got {type(model).__name__}")
    if schedule is None:
        raise TypeError("log_likelihood: schedule is required when model is a module (not a checkpoint path)")
    return model, schedule, None, None


def log_likelihood(
    model: nn.Module | str | os.PathLike,
    x0: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    dt: int = 1,
    rounds: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = DEFAULT_BATCH_ROWS,
    log10: bool = False,
    fused: bool = True,
    progress: bool = False,
    *,
    reduce: str = "none",
    seed: int | None = None,
    executor=None,
    task_rows: int = DEFAULT_TASK_ROWS,
    threads: int | None = None,
) -> torch.Tensor:
    """Eq. 15 for every point and random round of the forward chain: lower bounds of log p_theta(x_0).

    Each round is ONE noisy lower bound of log p_theta(x_0), not log p itself
    (see the module docstring): its mean over rounds estimates the ELBO, and
    ``reduce="logmeanexp"`` gives the importance-weighted estimate of
    log p_theta(x_0), a lower bound that tightens as ``rounds`` grows.

    Args:
        model: the eps-network ``model(x, t)`` (``t`` an int64 ``[B]`` tensor;
            see :mod:`~manifold_ext.diffusion.models`), in eval mode, or the path of a
            checkpoint (:func:`~manifold_ext.diffusion.save_checkpoint`), which
            ``executor`` requires. The work runs on the model's device.
        x0: ``[N, *]`` floating-point data points (moved to the model's device batch by batch).
        schedule: the schedule the model was trained with (T steps); taken from
            the checkpoint when ``model`` is a path (and then compared with it if given).
        dt: index stride between scored times, a positive divisor of T: the chain
            visits 0, dt, ..., T (T / dt network evaluations per round; dt = T is one step).
        rounds: independent draws of the forward chain per point.
        generator: draws the seed when ``seed`` is None (so a seeded generator
            gives reproducible results); without both, torch's global generator does.
        batch_size: rows (point x round) per network evaluation; bounds memory,
            does not change the noise (the result is the same up to the
            network's float rounding, which may depend on the batch shape).
        log10: report log10 p (the paper's Fig. 5C) instead of the natural log.
        fused: use the fused likelihood-and-forward-step op.
        progress: show a progress bar over rows.
        reduce: ``"none"``: ``[N, rounds]``, one bound per round (the default,
            and the behaviour before ``reduce`` existed); ``"logmeanexp"``: ``[N]``,
            log of the mean of exp over rounds (the estimate of log p);
            ``"mean"``: ``[N]``, the mean over rounds (the ELBO estimate).
        seed: the seed of the forward noise (overrides ``generator``).
        executor: a ``concurrent.futures.Executor`` (e.g. a Dask client's
            ``get_executor()``) to run tasks of ``task_rows`` rows on; ``model``
            must then be a checkpoint path every worker can read.
        task_rows: rows per executor task (rounded up to whole batches).
        threads: in-process parallelism for a CPU model: whole batches run on
            this many Python threads, each with ONE intra-op thread (torch's
            thread count is 1 for the duration of the call, then restored).
            Default: ``torch.get_num_threads()``. Measured on a 2-core machine:
            splitting each small op of the eps-network over 2 threads makes
            every op wait at a barrier, which stalls badly on a busy machine;
            a batch per thread does not (docs/guides/diffusion.md). The model's
            forward must be safe to call from several threads at once (the
            library's networks are; pass ``threads=1`` for one that is not).
            The result does not depend on it.

    Returns:
        float64 on the CPU: ``[N, rounds]`` or ``[N]`` (see ``reduce``).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduce!r}")
    rounds = as_int(rounds, "rounds", 1)
    batch_size = as_int(batch_size, "batch_size", 1)
    threads = torch.get_num_threads() if threads is None else as_int(threads, "threads", 1)
    task_rows = as_int(task_rows, "task_rows", 1)
    _check_points(x0)
    if executor is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "log_likelihood(executor=...) needs the model as a checkpoint path that every worker can read, "
            f"not a {type(model).__name__} (workers load it themselves; closures are not shipped): "
            "save_checkpoint(path, model, schedule) first and pass path"
        )
    model, schedule, path, sha = _resolve_model(model, schedule)
    if isinstance(model, nn.Module):
        check_model_schedule(model, schedule)
    dt = schedule.check_dt(dt)[1]
    grid = _Grid(
        points=x0.shape[0],
        rounds=rounds,
        batch_rows=batch_size,
        dt=dt,
        seed=_resolve_seed(seed, generator),
        fused=bool(fused),
    )
    if executor is None:
        with tqdm(
            total=grid.total,
            desc=f"log p (dt={dt})",
            unit="row",
            unit_scale=True,
            disable=not progress,
            mininterval=0.5,
        ) as bar:
            values = _score_rows(model, schedule, x0, 0, grid, 0, grid.total, bar, threads)
    else:
        values = torch.from_numpy(
            np.concatenate(
                run_tasks(
                    _likelihood_task,
                    _tasks(path, sha, x0, grid, task_rows),
                    executor,
                    progress,
                    desc=f"log p (dt={dt}) tasks",
                )
            )
            if grid.total
            else np.zeros(0)
        )
    result = values.view(grid.points, rounds)
    if reduce == "logmeanexp":
        result = log_mean_exp(result)
    elif reduce == "mean":
        result = result.mean(1)
    return result / LN10 if log10 else result


def _tasks(path: str, sha: str, x0: torch.Tensor, grid: _Grid, task_rows: int) -> list[dict]:
    """Executor tasks over whole batches, each with only the data points its rows need (on the CPU)."""
    per_task = max(1, math.ceil(task_rows / grid.batch_rows)) * grid.batch_rows
    tasks = []
    for row_start in range(0, grid.total, per_task):
        row_stop = min(row_start + per_task, grid.total)
        first, last = row_start // grid.rounds, (row_stop - 1) // grid.rounds
        tasks.append(
            {
                "checkpoint": path,
                "sha256": sha,
                "grid": grid,
                "row_start": row_start,
                "row_stop": row_stop,
                "first_point": first,
                "points": x0[first : last + 1].detach().cpu().clone(),
            }
        )
    return tasks


def log_mean_exp(log_values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of the mean of exp(values) along ``dim``: the importance-weighted estimate over rounds."""
    return torch.logsumexp(log_values, dim) - math.log(log_values.shape[dim])
