"""log p(x_0) of a trained diffusion model by Eq. 15, on the fused ops.

-log q(x_0) = -log p(x_T) + sum_{t = 0, dt, ..., T - dt} [log q(x_{t+dt} | x_t) - log p_theta(x_t | x_{t+dt})]

with x_{t+dt} drawn by Eq. 17, q and p_theta Gaussian (Eq. 16, 18-20) and
p(x_T) = N(0, I). Each random draw of the forward chain ("round") gives one
estimate; its expectation is the variational bound (ELBO) and, for the
Gaussian transitions here, exp of it is an unbiased estimate of the model's
likelihood, so log-mean-exp over rounds approaches log p from below.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext.diffusion.schedules import NoiseSchedule
from manifold_ext.ops import diffusion_forward_step, diffusion_nll_step, diffusion_nll_step_and_forward

LN10 = math.log(10.0)


def _standard_normal_nll(x: torch.Tensor) -> torch.Tensor:
    """-log N(x; 0, I) per sample (Eq. 16 with mu = 0, sigma = 1): the -log p(x_T) term of Eq. 15."""
    flat = x.flatten(1).to(torch.float64)
    return 0.5 * (flat.square().sum(1) + flat.shape[1] * math.log(2 * math.pi))


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

    ``fused`` scores the pair (t, t + dt) and draws x_{t + 2dt} in one pass
    (``diffusion_nll_step_and_forward``); otherwise a forward-step op and a
    likelihood-step op run separately (same numbers for the same noise).
    """
    times = schedule.check_dt(dt)
    abar = [schedule.abar(t) for t in times]
    device = x0.device

    def noise_like(x):
        noise_device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=noise_device).to(x.device)

    acc = torch.zeros(x0.shape[0], dtype=torch.float64, device=device)
    x_t = x0
    x_next = diffusion_forward_step(x_t, noise_like(x_t), abar[0], abar[1])  # Eq. 17
    steps = len(times) - 1
    for k in range(steps):
        eps = model(x_next, times[k + 1])  # eps_theta(x_{t+dt}, t + dt)
        if k + 1 < steps:
            if fused:
                acc, x_after = diffusion_nll_step_and_forward(
                    acc, x_t, x_next, eps, noise_like(x_t), abar[k], abar[k + 1], abar[k + 2]
                )
            else:
                acc = diffusion_nll_step(acc, x_t, x_next, eps, abar[k], abar[k + 1])
                x_after = diffusion_forward_step(x_next, noise_like(x_t), abar[k + 1], abar[k + 2])
            x_t, x_next = x_next, x_after
        else:
            acc = diffusion_nll_step(acc, x_t, x_next, eps, abar[k], abar[k + 1])
            x_t = x_next
    return acc + _standard_normal_nll(x_t)  # x_t is now x_T


def log_likelihood(
    model: nn.Module,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    dt: int = 1,
    rounds: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 65_536,
    log10: bool = False,
    fused: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """log p(x_0) by Eq. 15 for every point and random round: a ``[N, rounds]`` float64 tensor.

    Args:
        model: eps_theta(x, t) (t a number for the whole batch); put in eval mode.
        x0: ``[N, *]`` data points.
        schedule: the schedule the model was trained with (T steps).
        dt: step between scored times; any positive divisor of T (dt = T: one step).
        rounds: independent draws of the forward chain per point.
        generator: for the forward noise (reproducible results for a fixed batch_size).
        batch_size: rows (point x round) per pass; memory is bounded by it, not by N * rounds.
        log10: report log10 p (the paper's Fig. 5C) instead of the natural log.
        fused: use the fused likelihood-and-forward-step op.
        progress: show a progress bar over batches.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    schedule.check_dt(dt)
    n = x0.shape[0]
    total = n * rounds
    out = torch.empty(total, dtype=torch.float64)
    starts = range(0, total, batch_size)
    for start in tqdm(starts, desc=f"log p (dt={dt})", unit="batch", disable=not progress, mininterval=0.5):
        rows = torch.arange(start, min(start + batch_size, total))
        points = x0[(rows // rounds).to(x0.device)]  # row = point * rounds + round
        out[start : start + len(rows)] = -chain_nll(model, points, schedule, dt, generator, fused).cpu()
    result = out.view(n, rounds)
    return result / LN10 if log10 else result


def log_mean_exp(log_values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of the mean of exp(values) along ``dim``: the importance-weighted estimate over rounds."""
    return torch.logsumexp(log_values, dim) - math.log(log_values.shape[dim])
