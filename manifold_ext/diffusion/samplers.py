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

Conventions: Ho et al. add no noise on the final DDPM step; the network is
never evaluated below t = 1 (the time it was trained on): a stage or ODE
evaluation at t < 1 uses t = 1. With a stochastic g (DDPM, large step) the
appendix does not say where g's noise is drawn among the four stage points of
Eq. 41-43 and the final update of Eq. 38; ``rk4_noise`` chooses:

* ``"final"`` (default): the stage points are g's mean, only the final update draws noise;
* ``"fresh"``: every stage and the final update draw their own noise (g "with
  Gaussian noises" read literally);
* ``"shared"``: the stages and the final update use the step's one noise draw;
* ``"stages"``: the stages draw noise, the final update is g's mean;
* ``"none"``: no noise anywhere (every g is its mean).

Why RK4 helps DDIM but not a stochastic g: the mean of a DDPM or Def. 2.1
step is affine in the noise estimate, a x_t + b x0_hat(eps), and with the
exact eps*(x_t, t) = E[eps | x_t] it equals E[x_{t-dt} | x_t] of the true
reverse process (the tests check it with ``diffusion.exact.EmpiricalDataEps``).
RK4's eps_bar mixes in estimates from other points and times, so with a
perfect network it moves each step's mean off the exact one, and the noise g
adds is unchanged: it cannot take that noise out. DDIM is the Euler step of the probability-flow ODE, where
averaging slopes along the step is what RK4 is for. The ``sampling`` demo
measures both (paper 000 Fig. 7 and 8).

Divergence: a sampler whose step is too large for it can blow up while
staying finite (the paper's RK4 at dt = T gives samples of RMS ~800 for unit
data). :func:`sample` warns (:class:`SamplerDivergenceWarning`) when the
samples are not finite or their RMS exceeds ``divergence_factor`` times that
of the starting noise x_T; diffusion data is scaled to about unit size, so
such samples cannot be data.
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext.diffusion.models import check_model_schedule, model_device, time_tensor
from manifold_ext.diffusion.schedules import NoiseSchedule
from manifold_ext.ops import ddim_step, ddpm_step, large_step, rk4_combine, rk4_update

SAMPLERS = ("ddpm", "ddim", "large_step", "rk4", "pf_ode")
RK4_NOISE = ("final", "fresh", "shared", "stages", "none")
MIN_MODEL_TIME = 1


class SamplerDivergenceWarning(RuntimeWarning):
    """Samples that are not finite or far larger than the starting noise: the step is too large for the sampler."""


def _noise(shape, generator, dtype, device):
    noise_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=noise_device).to(device)


def _eps(model: nn.Module, x: torch.Tensor, t) -> torch.Tensor:
    """eps_theta(x, t): the one place the samplers call the network.

    ``t`` is one time for the whole batch, passed as the ``[B]`` tensor of :func:`time_tensor` (int64 for a
    step index, float32 for the probability-flow ODE's fractional times).
    """
    return model(x, time_tensor(t, x.shape[0], x.device))


def _rms(x: torch.Tensor) -> float:
    """Root-mean-square of all of ``x`` in float64; 0 for an empty tensor."""
    return x.double().square().mean().sqrt().item() if x.numel() else 0.0


def _default_device(model: nn.Module, x_T: torch.Tensor | None) -> torch.device:
    """Where the model's parameters (or buffers) live; for a model with neither, x_T's device, else the CPU."""
    if next(model.parameters(), None) is None and next(model.buffers(), None) is None and x_T is not None:
        return x_T.device
    return model_device(model)


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
    rk4_noise: str = "final",
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    divergence_factor: float | None = 10.0,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` with ``method`` and step ``dt``.

    Args:
        model: eps_theta(x, t), in eval mode, called as ``model(x, t)`` with ``t`` an int64 ``[B]`` tensor
            (float32, fractional times, for ``pf_ode``).
        schedule: the schedule the model was trained with (T steps).
        shape: ``(samples, *sample_shape)``.
        method: one of :data:`SAMPLERS`.
        dt: step; a positive divisor of T (dt = T: one step).
        eta: DDIM's noise scale (``ddim``, and the ``rk4`` step function ``ddim``).
        rk4_step: the step function g of the RK4 sampler: 'ddim', 'ddpm' or 'large_step'.
        rk4_noise: where the RK4 sampler with a stochastic g draws noise: one of
            :data:`RK4_NOISE` (see the module docstring).
        generator: drives all noise (x_T too unless given).
        x_T: the starting noise (optional), so that samplers can be compared from the same x_T.
        device: where to sample; default: where the model lives.
        dtype: sample dtype.
        progress: show a progress bar over steps.
        divergence_factor: warn (:class:`SamplerDivergenceWarning`) when the samples' RMS exceeds
            this multiple of x_T's RMS, or when they are not finite; None: never warn.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler '{method}'; expected one of {', '.join(SAMPLERS)}")
    if rk4_noise not in RK4_NOISE:
        raise ValueError(f"unknown rk4_noise '{rk4_noise}'; expected one of {', '.join(RK4_NOISE)}")
    times = schedule.check_dt(dt)
    check_model_schedule(model, schedule)
    device = torch.device(device) if device is not None else _default_device(model, x_T)
    x = x_T.to(device=device, dtype=dtype) if x_T is not None else _noise(shape, generator, dtype, device)
    start_rms = _rms(x)
    steps = list(reversed(list(itertools.pairwise(times))))  # (prev, t), from t = T down
    bar = tqdm(steps, desc=f"sampling {method} dt={dt}", unit="step", disable=not progress, mininterval=0.5)
    if method == "pf_ode":
        x = _probability_flow(model, schedule, x, bar)
    elif method == "rk4":
        g = _step_fn(rk4_step, eta)
        noise = rk4_noise if _is_stochastic(rk4_step, eta) else "none"
        for prev, t in bar:
            x = _rk4_step(model, schedule, x, t, t - prev, g, generator, noise)
    else:
        g = _step_fn(method, eta)
        for prev, t in bar:
            eps = _eps(model, x, t)
            noise = _noise(x.shape, generator, x.dtype, x.device) if prev > 0 else None
            x = g(x, eps, schedule.abar(t), schedule.abar(prev), noise)
    if divergence_factor is not None:
        _warn_if_diverged(x, start_rms, divergence_factor, method, rk4_step, dt)
    return x


def _is_stochastic(step: str, eta: float) -> bool:
    return step != "ddim" or eta > 0


def _warn_if_diverged(x: torch.Tensor, start_rms: float, factor: float, method: str, rk4_step: str, dt: int) -> None:
    # stacklevel 4: past this function, `sample` and inference_mode's wrapper, to the caller's line
    name = f"{method} (g = {rk4_step})" if method == "rk4" else method
    finite = torch.isfinite(x)
    if not finite.all():
        warnings.warn(
            f"sampler {name} at dt = {dt} diverged: {int((~finite).sum())} of {x.numel()} sample values "
            f"are not finite; use a smaller dt",
            SamplerDivergenceWarning,
            stacklevel=4,
        )
        return
    rms = _rms(x)
    if rms > factor * start_rms:
        warnings.warn(
            f"sampler {name} at dt = {dt} diverged: the samples' RMS is {rms:.4g}, more than "
            f"{factor:g} x the RMS {start_rms:.3g} of the starting noise x_T (diffusion data is about "
            f"unit size); use a smaller dt",
            SamplerDivergenceWarning,
            stacklevel=4,
        )


def _rk4_step(model, schedule: NoiseSchedule, x, t: int, dt: int, g, generator, noise_at: str):
    """One step t -> t - dt of the appendix's diffusion RK4 (Eq. 38-43); ``noise_at``: see ``RK4_NOISE``."""
    abar = schedule.abar
    half = t - dt // 2  # Eq. 41-42: t - floor(dt / 2)
    end = max(t - dt, MIN_MODEL_TIME)  # Eq. 43's stage time, kept where the model is defined
    prev = t - dt

    def draw():
        return _noise(x.shape, generator, x.dtype, x.device)

    shared = draw() if noise_at == "shared" else None

    def stage_point(eps, to):  # g(x_t, k, to) of Eq. 41-43
        noise = draw() if noise_at in ("fresh", "stages") else shared
        return g(x, eps, abar(t), abar(to), noise)

    k1 = _eps(model, x, t)  # Eq. 40
    if half == t:  # dt = 1: the half-step stages are k1 itself
        k2 = k3 = k1
    else:
        k2 = _eps(model, stage_point(k1, half), half)  # Eq. 41
        k3 = _eps(model, stage_point(k2, half), half)  # Eq. 42
    k4 = _eps(model, stage_point(k3, end), end) if end != t else k1  # Eq. 43
    eps_bar = rk4_combine(k1, k2, k3, k4)  # Eq. 39
    final_noise = None
    if prev > 0 and noise_at in ("final", "fresh", "shared"):  # no noise on the last step (Ho et al.)
        final_noise = shared if noise_at == "shared" else draw()
    return g(x, eps_bar, abar(t), abar(prev), final_noise)  # Eq. 38


def _probability_flow(model, schedule: NoiseSchedule, x_T, steps):
    """Classical RK4 (Eq. 33-37) on d xbar / d sigma = eps_theta(sqrt(abar) xbar, t(sigma)) from t = T to 0."""

    def slope(xbar, sigma):
        abar = 1.0 / (1.0 + sigma * sigma)
        time = max(schedule.time_at_sigma(sigma), float(MIN_MODEL_TIME))
        return _eps(model, xbar * math.sqrt(abar), time)

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
