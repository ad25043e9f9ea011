"""Reference closest-centre and nearest-centre Gaussian KL in plain PyTorch (the ops' specification)."""

from __future__ import annotations

import math

import torch

from manifold_ext.ops.closest_centre_kl import closest_centre_kl, nearest_centre_kl
from manifold_ext.reference._spec import reference_of


def gaussian_kl_to_centre(mu: torch.Tensor, logvar: torch.Tensor, centre: torch.Tensor, sigma0: float) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(centre, sigma0^2 I)) per sample, Eq. 27 as written."""
    prior_var = sigma0**2
    return 0.5 * (math.log(prior_var) - logvar - 1.0 + (logvar.exp() + (mu - centre) ** 2) / prior_var).sum(1)


@reference_of(closest_centre_kl)
def closest_centre_kl_reference(mu, logvar, *, sigma0, spacing, offset, low, high, target, mask):
    """``(kl, centre)``: round, clip, select, then Eq. 27 as written."""
    rounded = (offset + spacing * torch.round((mu - offset) / spacing)).detach()  # no gradient through rounding
    if low is not None or high is not None:
        rounded = rounded.clamp(low, high)
    if target is None:
        centre = rounded
    elif mask is None:
        centre = target
    else:
        centre = torch.where(mask, target, rounded)
    return gaussian_kl_to_centre(mu, logvar, centre, sigma0), centre.detach()


@reference_of(nearest_centre_kl)
def nearest_centre_kl_reference(mu, logvar, centres, sigma0):
    """``(kl, index)`` the eager way: ``torch.cdist`` (which forms the ``[B, K]`` distance matrix, by matrix
    product for large sizes), then argmin."""
    with torch.no_grad():
        index = torch.cdist(mu, centres).argmin(1)
    return gaussian_kl_to_centre(mu, logvar, centres[index], sigma0), index
