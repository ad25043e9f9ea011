"""One small training loop for the library's hand-written model fits.

Every fit in ``vae``, ``analysis.attributes`` and the flow demos has the same
shape: Adam, a cosine learning-rate schedule (optionally after a linear
warm-up), ``steps`` updates of a loss that the caller computes on a minibatch
it draws itself, a tqdm bar showing a running mean, and the per-step losses
returned. ``train_loop`` is that loop, written once. The caller keeps what
differs between models (how a batch is drawn, which generator draws it, the
loss, train/eval modes) in the ``step_loss`` closure, so moving a loop onto
this helper does not change the random streams it consumes.

Seeding: pass ``seed`` (a fresh CPU ``torch.Generator`` seeded with it) or your
own ``generator``; it is handed to ``step_loss(step, generator)`` for drawing
minibatch indices. With neither, ``generator`` is ``None`` and draws come from
torch's global generator (seed it with ``torch.manual_seed``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Mapping, Union

import torch
from tqdm.auto import tqdm

StepOutput = Union[torch.Tensor, Mapping[str, torch.Tensor]]
StepLoss = Callable[[int, Union[torch.Generator, None]], StepOutput]
CheckpointHook = Callable[[int, torch.optim.Optimizer], None]


@dataclasses.dataclass
class TrainingLog:
    """What ``train_loop`` recorded: the loss of every step and any other scalars ``step_loss`` returned."""

    loss: list[float]
    metrics: dict[str, list[float]]
    steps: int

    def recent_mean(self, name: str = "loss", last: int = 50) -> float:
        """Mean of the last ``last`` values of ``name`` ("loss" or a metric), for summaries."""
        values = self.loss if name == "loss" else self.metrics[name]
        tail = values[-last:]
        return sum(tail) / max(len(tail), 1)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"train_loop: {name} must be an integer >= 1, got {value!r}")
    return value


def cosine_schedule(
    optimiser: torch.optim.Optimizer, steps: int, *, min_lr_fraction: float = 0.0, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay of the learning rate over ``steps`` to ``min_lr_fraction`` of it, after an
    optional linear warm-up of ``warmup_steps`` (the warm-up multiplies the cosine factor)."""
    if warmup_steps <= 0:
        base = optimiser.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=base * min_lr_fraction)

    def factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        return min(1.0, (step + 1) / warmup_steps) * (min_lr_fraction + (1 - min_lr_fraction) * cosine)

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def train_loop(
    parameters: Iterable[torch.nn.Parameter],
    step_loss: StepLoss,
    *,
    steps: int,
    lr: float,
    min_lr_fraction: float = 0.0,
    warmup_steps: int = 0,
    clip_grad_norm: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    desc: str = "training",
    progress: bool = True,
    log_every: int = 50,
    postfix: tuple[str, ...] = (),
    checkpoint: CheckpointHook | None = None,
    checkpoint_every: int = 0,
) -> TrainingLog:
    """Adam on ``step_loss`` for ``steps`` updates with a cosine schedule; returns the logged losses.

    Args:
        parameters: what Adam updates (e.g. ``model.parameters()``).
        step_loss: ``step_loss(step, generator)`` draws a minibatch and returns either the scalar
            loss or a mapping with a scalar ``"loss"`` and other scalars to log (tensors or floats).
        steps: number of updates (>= 1); lr: Adam's learning rate.
        min_lr_fraction, warmup_steps: the schedule (see ``cosine_schedule``).
        clip_grad_norm: clip the gradients' global norm to this before each update (None: no clipping).
        seed, generator: the generator passed to ``step_loss`` (see the module docstring); not both.
        desc, progress: the tqdm bar's label, and whether to show it.
        log_every: the bar shows the mean loss of the last ``log_every`` steps, refreshed that often.
        postfix: names of logged metrics whose latest value the bar shows too.
        checkpoint, checkpoint_every: ``checkpoint(step, optimiser)`` is called after every
            ``checkpoint_every``-th update (step counts from 1) and after the last one.
    """
    steps = _check_positive_int(steps, "steps")
    log_every = _check_positive_int(log_every, "log_every")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"train_loop: lr must be a finite number > 0, got {lr!r}")
    if seed is not None and generator is not None:
        raise ValueError("train_loop: pass seed or generator, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        raise ValueError("train_loop: no trainable parameters (all have requires_grad=False)")
    optimiser = torch.optim.Adam(parameters, lr=lr)
    schedule = cosine_schedule(optimiser, steps, min_lr_fraction=min_lr_fraction, warmup_steps=warmup_steps)
    log = TrainingLog(loss=[], metrics={}, steps=steps)
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=0.5, disable=not progress)
    for step in bar:
        out = step_loss(step, generator)
        loss = out["loss"] if isinstance(out, Mapping) else out
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        optimiser.step()
        schedule.step()
        log.loss.append(loss.item())
        if isinstance(out, Mapping):
            for name, value in out.items():
                if name != "loss":
                    log.metrics.setdefault(name, []).append(float(value))
        if step % log_every == 0:
            shown = {"loss": f"{log.recent_mean('loss', log_every):.4g}"}
            shown.update({name: f"{log.metrics[name][-1]:.4g}" for name in postfix if name in log.metrics})
            bar.set_postfix(shown)
        if checkpoint is not None and ((checkpoint_every and (step + 1) % checkpoint_every == 0) or step + 1 == steps):
            checkpoint(step + 1, optimiser)
    return log
