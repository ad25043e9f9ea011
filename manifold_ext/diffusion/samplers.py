"""Samplers for any step dt dividing T, on the fused step ops.

* ``ddpm``: ancestral DDPM steps (Ho et al. 2020, Algorithm 2) from t to t - dt.
* ``ddim``: DDIM steps (Song et al. 2021), ``eta`` = 0 deterministic.
* ``large_step``: the non-Markovian Gaussian backward process of Def. 2.1 (Eq. 12).
* ``rk4``: the paper's diffusion RK4 (appendix Eq. 38-43): the noise estimate
  eps_bar = (k1 + 2 k2 + 2 k3 + k4) / 6 from stages built by the step function
  g (DDPM or DDIM) at t - floor(dt/2) and t - dt, then x_{t-dt} = g(x_t, eps_bar).
* ``pf_ode``: the probability-flow ODE solved by classical RK4 (``rk4_update``),
  in DDIM's variables xbar = x / sqrt(abar), sigma = sqrt((1 - abar) / abar),
  where it reads d xbar / d sigma = eps_theta(x, t) (DDIM is its Euler method).

Conventions: Ho et al. add no noise on the final DDPM step; RK4 stages use the
mean of g (no noise) and only the final update of each step draws noise; the
network is never evaluated below t = 1 (the time it was trained on): a stage
or ODE evaluation at t < 1 uses t = 1.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext.diffusion.models import check_model_schedule, model_device, time_tensor
from manifold_ext.diffusion.schedules import NoiseSchedule
from manifold_ext.ops import ddim_step, ddpm_step, large_step, rk4_combine, rk4_update

SAMPLERS = ("ddpm", "ddim", "large_step", "rk4", "pf_ode")
MIN_MODEL_TIME = 1


def _noise(shape, generator, dtype, device):
    noise_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=noise_device).to(device)


def _step_fn(kind: str, eta: float):
    """g(x, eps, abar_t, abar_prev, noise) for 'ddpm', 'ddim' or 'large_step'."""
    if kind == "ddpm":
        return lambda x, eps, a, b, noise: ddpm_step(x, eps, a, b, noise)
    if kind == "ddim":
        return lambda x, eps, a, b, noise: ddim_step(x, eps, a, b, eta, noise if eta > 0 else None)
    if kind == "large_step":
        return lambda x, eps, a, b, noise: large_step(x, eps, a, b, noise)
    raise ValueError(f"unknown step function '{kind}'; expected 'ddpm', 'ddim' or 'large_step'")


@torch.inference_mode()
def sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    method: str = "ddpm",
    dt: int = 1,
    eta: float = 0.0,
    rk4_step: str = "ddim",
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` with ``method`` and step ``dt``.

    ``x_T`` (optional) fixes the starting noise, so that samplers can be
    compared from the same x_T; ``generator`` drives all noise. ``device``
    defaults to the model's. The model is called as ``model(x, t)`` with ``t``
    an int64 ``[B]`` tensor (a float32 one of fractional times for ``pf_ode``).

    Warns (``RuntimeWarning``) when the samples diverged: non-finite values, or
    a root-mean-square larger than that of ``x_T`` divided by ``sqrt(abar_T)``
    (see :func:`warn_if_diverged`), e.g. ``rk4`` with one step of ``dt = T``.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler '{method}'; expected one of {', '.join(SAMPLERS)}")
    times = schedule.check_dt(dt)
    check_model_schedule(model, schedule)
    device = model_device(model) if device is None else torch.device(device)
    x = x_T.to(device=device, dtype=dtype) if x_T is not None else _noise(shape, generator, dtype, device)
    steps = list(reversed(list(zip(times[:-1], times[1:]))))  # (prev, t), from t = T down
    bar = tqdm(steps, desc=f"sampling {method} dt={dt}", unit="step", disable=not progress, mininterval=0.5)
    start_rms = _rms(x)
    if method == "pf_ode":
        x_0 = _probability_flow(model, schedule, x, bar)
    elif method == "rk4":
        g = _step_fn(rk4_step, eta)
        x_0 = x
        for prev, t in bar:
            x_0 = _rk4_step(model, schedule, x_0, t, t - prev, g, generator)
    else:
        x_0 = _ancestral(model, schedule, x, bar, _step_fn(method, eta), generator)
    warn_if_diverged(x_0, start_rms, schedule, f"method={method!r}, dt={dt}")
    return x_0


def _ancestral(model, schedule: NoiseSchedule, x, steps, g, generator):
    """DDPM / DDIM / large-step chain: x_{prev} = g(x_t, eps_theta(x_t, t)) from t = T to 0."""
    abar = schedule.abar
    for prev, t in steps:
        eps = model(x, time_tensor(t, x.shape[0], x.device))
        noise = _noise(x.shape, generator, x.dtype, x.device) if prev > 0 else None
        x = g(x, eps, abar(t), abar(prev), noise)
    return x


def _rms(x: torch.Tensor) -> float:
    return x.double().square().mean().sqrt().item() if x.numel() else 0.0


def warn_if_diverged(x_0: torch.Tensor, start_rms: float, schedule: NoiseSchedule, what: str) -> bool:
    """Warn and return True when samples ``x_0`` are not finite or too large to be the schedule's data.

    Why this bound: the forward process x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps (Eq. 11, 29) ends near
    N(0, I) only for data with sqrt(abar_T) |x_0| below the noise, i.e. RMS(x_0) < RMS(x_T) / sqrt(abar_T).
    Samples beyond it are data the schedule would not have turned into noise: the sampler diverged
    (RK4 at dt = T = 100 with the exact eps of N(0, 0.5^2 I) data: RMS 1130 against the bound 220).
    """
    if x_0.numel() == 0:
        return False
    bound = start_rms / math.sqrt(schedule.abar(schedule.T))
    finite = bool(torch.isfinite(x_0).all())
    rms = _rms(x_0) if finite else float("nan")
    if finite and rms <= bound:
        return False
    found = "non-finite values" if not finite else f"root-mean-square {rms:.4g}"
    warnings.warn(f"sample({what}) diverged: {found}, while data the schedule turns into N(0, I) noise has a "
                  f"root-mean-square below RMS(x_T) / sqrt(abar_T) = {bound:.4g}; use a smaller dt or another "
                  "method", RuntimeWarning, stacklevel=4)  # the caller of sample (inference_mode wraps it)
    return True


def _rk4_step(model, schedule: NoiseSchedule, x, t: int, dt: int, g, generator):
    """One step t -> t - dt of the appendix's diffusion RK4 (Eq. 38-43)."""
    abar = schedule.abar
    half = t - dt // 2  # Eq. 41-42: t - floor(dt / 2)
    end = max(t - dt, MIN_MODEL_TIME)  # Eq. 43's stage time, kept where the model is defined
    def eps_at(x_stage, time):
        return model(x_stage, time_tensor(time, x_stage.shape[0], x_stage.device))

    k1 = eps_at(x, t)  # Eq. 40
    if half == t:  # dt = 1: the half-step stages are k1 itself
        k2 = k3 = k1
    else:
        k2 = eps_at(g(x, k1, abar(t), abar(half), None), half)  # Eq. 41
        k3 = eps_at(g(x, k2, abar(t), abar(half), None), half)  # Eq. 42
    k4 = eps_at(g(x, k3, abar(t), abar(end), None), end) if end != t else k1  # Eq. 43
    eps_bar = rk4_combine(k1, k2, k3, k4)  # Eq. 39
    prev = t - dt
    noise = _noise(x.shape, generator, x.dtype, x.device) if prev > 0 else None
    return g(x, eps_bar, abar(t), abar(prev), noise)  # Eq. 38


def _probability_flow(model, schedule: NoiseSchedule, x_T, steps):
    """Classical RK4 (Eq. 33-37) on d xbar / d sigma = eps_theta(sqrt(abar) xbar, t(sigma)) from t = T to 0."""

    def slope(xbar, sigma):
        abar = 1.0 / (1.0 + sigma * sigma)
        time = max(schedule.time_at_sigma(sigma), float(MIN_MODEL_TIME))
        return model(xbar * math.sqrt(abar), time_tensor(time, xbar.shape[0], xbar.device))

    xbar = x_T / math.sqrt(schedule.abar(schedule.T))
    for prev, t in steps:
        sigma_t, sigma_prev = schedule.sigma(t), schedule.sigma(prev)
        h = sigma_prev - sigma_t  # negative: integrating towards sigma = 0
        k1 = slope(xbar, sigma_t)
        k2 = slope(xbar + 0.5 * h * k1, sigma_t + 0.5 * h)
        k3 = slope(xbar + 0.5 * h * k2, sigma_t + 0.5 * h)
        k4 = slope(xbar + h * k3, sigma_prev)
        xbar = rk4_update(xbar, k1, k2, k3, k4, h)
    return xbar * math.sqrt(schedule.abar(0))
