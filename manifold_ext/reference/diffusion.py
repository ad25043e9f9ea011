"""Reference diffusion likelihood steps and sampler steps in plain PyTorch (the
ops' specification), written as the paper and the DDPM/DDIM papers state them.

``abar`` arguments are floats or per-sample ``[B]`` tensors, as for the ops.
Schedule arithmetic is done in float64 and the per-element work in the inputs'
dtype, as a user would write it.
"""

from __future__ import annotations

import math

import torch

from manifold_ext import ops
from manifold_ext.reference._spec import reference_of

LOG_2PI = math.log(2.0 * math.pi)


def _time(abar, x: torch.Tensor) -> torch.Tensor:
    """abar as float64: 0-dim for a float or 0-dim tensor, [B, 1, ..., 1] for a per-sample tensor (a tensor's
    value is never read on the host, so the reference also traces under torch.compile)."""
    if isinstance(abar, torch.Tensor):
        if abar.dim() == 1:
            return abar.to(device=x.device, dtype=torch.float64).reshape(-1, *([1] * (x.dim() - 1)))
        return abar.to(dtype=torch.float64)
    return torch.as_tensor(float(abar), dtype=torch.float64)


def _elem(coefficient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # A 0-dim float64 tensor does not promote x's dtype; a per-sample one is cast.
    return coefficient if coefficient.dim() == 0 else coefficient.to(x.dtype)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Eq. 16 (negated): sum over non-batch elements of log N(x; mean, var), per sample."""
    log_var = torch.log(var)
    terms = -0.5 * (LOG_2PI + _elem(log_var, x) + (x - mean) ** 2 / _elem(var, x))
    return (terms.flatten(1) if terms.dim() > 1 else terms.unsqueeze(1)).sum(1)  # [B] samples are scalars


@reference_of(ops.diffusion_nll_step)
def diffusion_nll_step_reference(acc, x_t, x_next, eps, abar_t, abar_next):
    """acc + log q(x_next | x_t) - log p_theta(x_t | x_next) (Eq. 15-20; t = 0 convention of the op)."""
    at, an = _time(abar_t, x_t), _time(abar_next, x_t)
    # Eq. 18
    mean_q = _elem(torch.sqrt(an / at), x_t) * x_t
    var_q = 1 - an / at
    # Eq. 19 as printed
    x0_estimate = (x_next - _elem(torch.sqrt(1 - an), x_t) * eps) / _elem(torch.sqrt(an), x_t)
    mean_p = (_elem((1 - at) * torch.sqrt(an), x_t) * x_next + _elem(at - an, x_t) * x0_estimate) / _elem(
        torch.sqrt(at) * (1 - an), x_t
    )
    # Eq. 20, and the forward variance of the jump where abar_t = 1
    var_p = torch.where(at < 1, (at - an) * (1 - at) / (at * (1 - an)), var_q)
    log_q = gaussian_log_density(x_next, mean_q, var_q)
    log_p = gaussian_log_density(x_t, mean_p, var_p)
    return acc + (log_q - log_p).to(acc.dtype)


@reference_of(ops.diffusion_forward_step)
def diffusion_forward_step_reference(x_t, noise, abar_t, abar_next):
    """Eq. 17."""
    at, an = _time(abar_t, x_t), _time(abar_next, x_t)
    return _elem(torch.sqrt(an / at), x_t) * x_t + _elem(torch.sqrt(1 - an / at), x_t) * noise


@reference_of(ops.diffusion_nll_step_and_forward)
def diffusion_nll_step_and_forward_reference(acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after):
    return (
        diffusion_nll_step_reference(acc, x_t, x_next, eps, abar_t, abar_next),
        diffusion_forward_step_reference(x_next, noise, abar_next, abar_after),
    )


@reference_of(ops.ddpm_step)
def ddpm_step_reference(x_t, eps, abar_t, abar_prev, noise):
    """Ho et al. 2020, Algorithm 2, with alpha = abar_t / abar_prev and sigma^2 = beta = 1 - alpha."""
    at, ap = _time(abar_t, x_t), _time(abar_prev, x_t)
    alpha = at / ap
    mean = (x_t - _elem((1 - alpha) / torch.sqrt(1 - at), x_t) * eps) / _elem(torch.sqrt(alpha), x_t)
    if noise is None:
        return mean
    return mean + _elem(torch.sqrt(1 - alpha), x_t) * noise


@reference_of(ops.ddim_step)
def ddim_step_reference(x_t, eps, abar_t, abar_prev, eta, noise):
    """Song et al. 2021, Eq. 12."""
    at, ap = _time(abar_t, x_t), _time(abar_prev, x_t)
    x0 = (x_t - _elem(torch.sqrt(1 - at), x_t) * eps) / _elem(torch.sqrt(at), x_t)
    sigma = eta * torch.sqrt((1 - ap) / (1 - at)) * torch.sqrt(1 - at / ap)
    out = _elem(torch.sqrt(ap), x_t) * x0 + _elem(torch.sqrt((1 - ap - sigma**2).clamp_min(0)), x_t) * eps
    if noise is None:
        return out
    return out + _elem(sigma, x_t) * noise


@reference_of(ops.large_step)
def large_step_reference(x_t, eps, abar_t, abar_prev, noise):
    """Def. 2.1: the posterior q(x_prev | x_t, x0) of Eq. 28 at x0 = f_theta(x_t) of Eq. 31."""
    at, ap = _time(abar_t, x_t), _time(abar_prev, x_t)
    x0 = (x_t - _elem(torch.sqrt(1 - at), x_t) * eps) / _elem(torch.sqrt(at), x_t)  # Eq. 31
    mean = (_elem((1 - ap) * torch.sqrt(at), x_t) * x_t + _elem(ap - at, x_t) * x0) / _elem(
        torch.sqrt(ap) * (1 - at), x_t
    )  # Eq. 28
    if noise is None:
        return mean
    var = (ap - at) * (1 - ap) / (ap * (1 - at))  # Eq. 12
    return mean + _elem(torch.sqrt(var), x_t) * noise


@reference_of(ops.rk4_combine)
def rk4_combine_reference(k1, k2, k3, k4):
    """Eq. 39."""
    return (k1 + 2 * k2 + 2 * k3 + k4) / 6


@reference_of(ops.rk4_update)
def rk4_update_reference(x, k1, k2, k3, k4, h):
    """Eq. 33."""
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
