"""The exact noise predictor for Gaussian data: a reference for samplers and likelihoods.

For data x_0 ~ N(0, s^2 I) the forward marginal is x_t ~ N(0, (abar_t s^2 + 1 - abar_t) I)
(Eq. 11), and the minimiser of the training loss is the posterior mean of the noise,

    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar_t) x_t / (abar_t s^2 + 1 - abar_t).

Every sampler is then linear in x_T and its noise draws, so its output is
Gaussian with a standard deviation that can be compared with s exactly: a
sampler that leaves the spread above s leaves noise in the samples (the
"noisy" samples of paper 000 Fig. 7), one below s over-smooths them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from manifold_ext.diffusion.schedules import NoiseSchedule


class GaussianDataEps(nn.Module):
    """eps*(x_t, t) for x_0 ~ N(0, data_std^2 I) under ``schedule``.

    ``t`` is a number or a ``[B]`` tensor of step indices; fractional times
    (the probability-flow ODE) interpolate sigma = sqrt((1 - abar) / abar)
    linearly between steps, the inverse of :meth:`NoiseSchedule.time_at_sigma`.
    """

    def __init__(self, schedule: NoiseSchedule, data_std: float):
        super().__init__()
        if not data_std > 0:
            raise ValueError(f"data_std must be > 0, got {data_std}")
        self.schedule, self.data_std, self.T = schedule, float(data_std), schedule.T

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar at (possibly fractional) times ``t`` ([n] float64)."""
        abar = self.schedule.alphas_cumprod
        sigmas = torch.sqrt((1.0 - abar) / abar)
        t = t.to(torch.float64).clamp(0, self.T)
        low = t.floor().long().clamp(max=self.T - 1)
        sigma = sigmas[low] + (t - low) * (sigmas[low + 1] - sigmas[low])
        return 1.0 / (1.0 + sigma.square())

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        times = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        a = self.abar(times).to(device=x.device, dtype=x.dtype)
        if a.numel() > 1:
            a = a.view(-1, *([1] * (x.dim() - 1)))
        return torch.sqrt(1 - a) * x / (a * self.data_std**2 + 1 - a)


def sigmoid_schedule(T: int, beta_start: float = 1e-5, beta_end: float = 1e-2) -> NoiseSchedule:
    """betas = sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start.

    The schedule of a widely copied Swiss-roll diffusion tutorial (T = 100,
    1e-5 to 1e-2). It diffuses only part of the way: abar_T = 0.61 at T = 100,
    so x_T is not N(0, I); used to test whether a paper result depends on it.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    betas = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    return NoiseSchedule.from_betas(betas, name=f"sigmoid(T={T}, {beta_start:g}..{beta_end:g})")


class EmpiricalDataEps(nn.Module):
    """The exact noise predictor for the empirical distribution of ``data`` ([M, *]): no network error.

    With x_0 uniform over the M data points, p(x_0 = d_i | x_t) is a softmax of
    -|x_t - sqrt(abar_t) d_i|^2 / (2 (1 - abar_t)) (Eq. 11), and
    eps*(x_t, t) = (x_t - sqrt(abar_t) E[x_0 | x_t]) / sqrt(1 - abar_t).
    A sampler step g(x_t, eps*) of DDPM or Def. 2.1 then has exactly the mean
    E[x_{t - dt} | x_t] of the true reverse process (its mean is affine in the
    estimate of E[x_0 | x_t]), which isolates the samplers from training error.
    Integer times only (step indices 1..T).
    """

    def __init__(self, schedule: NoiseSchedule, data: torch.Tensor, chunk: int = 1024):
        super().__init__()
        if data.dim() < 2 or data.shape[0] < 1:
            raise ValueError(f"data must be [M, *] with M >= 1, got shape {list(data.shape)}")
        self.schedule, self.T, self.chunk = schedule, schedule.T, chunk
        self.register_buffer("data", data.flatten(1).to(torch.float64))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        times = torch.as_tensor(t).reshape(-1)
        if (times != times[0]).any() or times[0] != torch.round(times[0]):
            raise ValueError(
                f"EmpiricalDataEps: t must be one integer step for the whole batch, got {times.tolist()[:4]}..."
            )
        step = int(times[0])
        a = self.schedule.abar(step)
        flat = x.flatten(1)
        data = self.data.to(flat.dtype)
        scaled = math.sqrt(a) * data
        posterior_means = []
        for rows in flat.split(self.chunk):
            logits = -torch.cdist(rows, scaled).square() / (2 * (1 - a))
            posterior_means.append(torch.softmax(logits, dim=1) @ data)  # E[x_0 | x_t]
        x0_mean = torch.cat(posterior_means)
        eps = (flat - math.sqrt(a) * x0_mean) / math.sqrt(1 - a)
        return eps.view_as(x)
