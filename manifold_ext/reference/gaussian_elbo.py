"""Reference Gaussian ELBO in plain PyTorch (the specification of ``manifold_ext.ops.gaussian_elbo``)."""

from __future__ import annotations

import math

from manifold_ext.ops.gaussian_elbo import gaussian_elbo
from manifold_ext.reference._spec import reference_of


@reference_of(gaussian_elbo)
def gaussian_elbo_reference(x, x_mean, mu, logvar, decoder_logvar):
    """Per-sample single-sample ELBO of a VAE with Gaussian decoder and encoder (paper 000 Eq. 21-22).

    ``elbo[b] = log N(x | x_mean, exp(decoder_logvar) I) - KL(N(mu, exp(logvar)) || N(0, I))``::

        log N = -1/2 * sum_i [(x_i - x_mean_i)^2 * exp(-s) + s + log(2 pi)],   s = decoder_logvar
        KL    =  1/2 * sum_j [mu_j^2 + exp(logvar_j) - logvar_j - 1]

    Returns ``(elbo, kl)``, both ``[B]``.
    """
    s = float(decoder_logvar)
    squared_error = (x - x_mean).flatten(1).square().sum(1)
    pixels = x[0].numel() if x.shape[0] else math.prod(x.shape[1:])
    log_lik = -0.5 * (squared_error * math.exp(-s) + pixels * (s + math.log(2 * math.pi)))
    kl = 0.5 * (mu.square() + logvar.exp() - logvar - 1).flatten(1).sum(1)
    return log_lik - kl, kl
