"""log p over a whole dataset, in batches, in-process or on an executor (a process pool, Dask).

Flows give an exact, deterministic ``log_prob`` per example, so a dataset is
cut into batches and tasks of whole batches; with an executor every worker
loads the model from a verified checkpoint path (:func:`save_model`, or a
:func:`~manifold_ext.flows.hierarchical.fit` checkpoint), never from a pickled
closure, and the result equals the in-process run with the same
``batch_size`` whatever the number of workers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from manifold_ext import _checkpoint as ckpt
from manifold_ext._args import as_int
from manifold_ext._checkpoint import CheckpointError
from manifold_ext._shards import run_tasks

MODEL_KIND = "flows.model"
_LOADABLE = (MODEL_KIND, "flows.hierarchical.training")


def save_model(path: str | os.PathLike, model: nn.Module, config: dict | None = None, **extra) -> None:
    """Save a flow's weights with its class, constructor ``config`` (default ``model.config``) and signature.

    A model whose class is in manifold_ext and whose config is known (e.g.
    :class:`~manifold_ext.flows.HierarchicalFlow`, or ``MultiScaleGlow`` with
    ``config=`` its constructor arguments) can be rebuilt from the file alone,
    which is what executor workers do.
    """
    ckpt.save_model(path, model, kind=MODEL_KIND, extra=extra, config=config)


def load_model(path: str | os.PathLike, model: nn.Module | None = None, map_location="cpu") -> nn.Module:
    """The flow saved at ``path`` (by :func:`save_model` or a hierarchical ``fit``), verified, in eval mode."""
    payload, meta = ckpt.read_checkpoint(path, map_location=map_location)
    if meta.get("kind") not in _LOADABLE:
        raise CheckpointError(path, f"holds a {meta.get('kind')!r} checkpoint, not a flow ({' or '.join(_LOADABLE)})")
    return ckpt.model_from_checkpoint(path, payload, meta, model)


_WORKER_MODELS: dict[tuple[str, str], nn.Module] = {}


def _worker_model(path: str, sha256: str) -> nn.Module:
    key = (path, sha256)
    if key not in _WORKER_MODELS:
        if ckpt.read_header(path)["sha256"] != sha256:
            raise CheckpointError(path, "differs on this worker from the driver's file (content hash)")
        _WORKER_MODELS.clear()
        _WORKER_MODELS[key] = load_model(path)
    return _WORKER_MODELS[key]


@torch.no_grad()
def _log_prob_batches(
    model: nn.Module, data: torch.Tensor, batch_size: int, method: str, kwargs: dict, bar=None
) -> torch.Tensor:
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    out = torch.empty(data.shape[0], dtype=torch.float64)
    score = getattr(model, method)
    for start in range(0, data.shape[0], batch_size):
        stop = min(start + batch_size, data.shape[0])
        values = score(data[start:stop].to(device), **kwargs)
        if not isinstance(values, torch.Tensor) or values.shape != (stop - start,):
            raise ValueError(
                f"model.{method} must return one value per example [B] = [{stop - start}], got "
                f"{tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}"
            )
        out[start:stop] = values.detach().to(torch.float64).cpu()
        if bar is not None:
            bar.update()
    return out


def _log_prob_task(task: dict) -> np.ndarray:
    model = _worker_model(task["checkpoint"], task["sha256"])
    return _log_prob_batches(model, task["data"], task["batch_size"], task["method"], task["kwargs"]).numpy()


def log_prob_dataset(
    model: nn.Module | str | os.PathLike,
    data: torch.Tensor,
    batch_size: int = 256,
    *,
    method: str = "log_prob",
    executor=None,
    task_rows: int = 4096,
    progress: bool = False,
    **kwargs,
) -> torch.Tensor:
    """``model.<method>(batch, **kwargs)`` over all of ``data`` ([N, *]) in batches: ``[N]`` float64 on the CPU.

    Args:
        model: a flow (``nn.Module`` with ``log_prob``) or the path of a flow
            checkpoint; ``executor`` requires the path (workers load it).
        data: ``[N, *]`` floating-point examples (moved to the model's device batch by batch).
        batch_size: examples per ``log_prob`` call.
        method: the scoring method, e.g. ``"log_prob"`` (nats) or ``"bits_per_dim"`` (with ``n_bins=``).
        executor: a ``concurrent.futures.Executor`` (e.g. ``distributed.Client.get_executor()``).
        task_rows: examples per executor task (rounded up to whole batches).
        progress: show a progress bar.
        **kwargs: passed to the method (e.g. ``autoencoder_logdet=False`` for HierarchicalFlow).
    """
    from tqdm.auto import tqdm

    batch_size = as_int(batch_size, "batch_size", 1)
    task_rows = as_int(task_rows, "task_rows", 1)
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.dim() < 1:
        raise TypeError(
            f"data must be a floating-point tensor [N, *], got "
            f"{data.dtype if isinstance(data, torch.Tensor) else type(data).__name__}"
        )
    if executor is None:
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        if not callable(getattr(model, method, None)):
            raise TypeError(f"model has no method {method!r}")
        with tqdm(
            total=math.ceil(data.shape[0] / batch_size),
            desc="log p",
            unit="batch",
            disable=not progress,
            mininterval=0.5,
        ) as bar:
            return _log_prob_batches(model, data, batch_size, method, kwargs, bar)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "log_prob_dataset(executor=...) needs the model as a checkpoint path that every worker can "
            f"read, not a {type(model).__name__}: flows.save_model(path, model) first and pass path"
        )
    path = str(Path(model).resolve())
    sha = ckpt.read_header(path)["sha256"]
    load_model(path)  # fail here, clearly, rather than on every worker
    per_task = max(1, math.ceil(task_rows / batch_size)) * batch_size
    tasks = [
        {
            "checkpoint": path,
            "sha256": sha,
            "data": data[start : start + per_task].detach().cpu().clone(),
            "batch_size": batch_size,
            "method": method,
            "kwargs": kwargs,
        }
        for start in range(0, data.shape[0], per_task)
    ]
    parts = run_tasks(_log_prob_task, tasks, executor, progress, desc="log p tasks")
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.float64)
