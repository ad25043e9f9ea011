"""Fused Gaussian ELBO of a VAE: ``torch.ops.manifold_ext.gaussian_elbo``."""
from __future__ import annotations

import math

import torch


def gaussian_elbo(
    x: torch.Tensor,
    x_mean: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    decoder_logvar: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ELBO of a Gaussian VAE and its KL term, in one pass (paper 000 Eq. 21-22).

    With decoder p(x|z) = N(x_mean, sigma_x^2 I), ``sigma_x^2 = exp(decoder_logvar)``,
    encoder q(z|x) = N(mu, diag exp(logvar)) and prior N(0, I)::

        elbo[b] = -1/2 sum_i [(x_i - x_mean_i)^2 / sigma_x^2 + log(2 pi sigma_x^2)]
                  - 1/2 sum_j [mu_j^2 + exp(logvar_j) - logvar_j - 1]
        kl[b]   =  1/2 sum_j [mu_j^2 + exp(logvar_j) - logvar_j - 1]

    ``x_mean`` is the decoder's output for one reparameterised sample
    ``z = mu + exp(logvar / 2) * eps``, so ``elbo`` is the usual single-sample
    estimate of E_q[log p(x|z)] - KL (the KL is exact).

    Args:
        x: ``[B, *]`` images (or any data), ``x_mean``: same shape, decoder mean.
        mu, logvar: ``[B, *]`` (same shape) encoder mean and log-variance.
        decoder_logvar: ``log sigma_x^2``, a constant (finite float).

    Returns:
        ``(elbo, kl)``, each ``[B]`` (float32 for float16/bfloat16 inputs).

    Differentiable in all four tensors (the backward is its own fused op);
    traceable by ``torch.compile``. CPU: float32/float64; CUDA: also
    float16/bfloat16 with float32 accumulation. Sums accumulate in double on
    CPU (deterministic, thread-count independent).
    """
    return torch.ops.manifold_ext.gaussian_elbo.default(x, x_mean, mu, logvar, float(decoder_logvar))


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_shapes(x, x_mean, mu, logvar, decoder_logvar):
    # The compiled kernels check these too; repeating them in the fake kernel
    # makes a traced/compiled program fail at trace time with the same words.
    torch._check(x.dim() >= 2, lambda: f"gaussian_elbo: x must have shape [B, *] (rank >= 2), got {tuple(x.shape)}")
    torch._check(x_mean.shape == x.shape,
                 lambda: f"gaussian_elbo: x_mean must have the shape of x {tuple(x.shape)}, got {tuple(x_mean.shape)}")
    torch._check(mu.dim() >= 2, lambda: f"gaussian_elbo: mu must have shape [B, *] (rank >= 2), got {tuple(mu.shape)}")
    torch._check(logvar.shape == mu.shape,
                 lambda: f"gaussian_elbo: logvar must have the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    torch._check(mu.shape[0] == x.shape[0], lambda: "gaussian_elbo: x and mu must have the same batch size")
    if not math.isfinite(decoder_logvar):
        raise ValueError(f"gaussian_elbo: decoder_logvar must be finite, got {decoder_logvar}")


@torch.library.register_fake("manifold_ext::gaussian_elbo")
def _gaussian_elbo_fake(x, x_mean, mu, logvar, decoder_logvar):
    _check_shapes(x, x_mean, mu, logvar, decoder_logvar)
    out = x.new_empty((x.shape[0],), dtype=_output_dtype(x.dtype))
    return out, torch.empty_like(out)


@torch.library.register_fake("manifold_ext::gaussian_elbo_backward")
def _gaussian_elbo_backward_fake(grad_elbo, grad_kl, x, x_mean, mu, logvar, decoder_logvar):
    _check_shapes(x, x_mean, mu, logvar, decoder_logvar)
    contiguous = torch.contiguous_format
    return (
        torch.empty_like(x, memory_format=contiguous),
        torch.empty_like(x, memory_format=contiguous),
        torch.empty_like(mu, memory_format=contiguous),
        torch.empty_like(mu, memory_format=contiguous),
    )


def _setup_context(ctx, inputs, output):
    x, x_mean, mu, logvar, decoder_logvar = inputs
    ctx.save_for_backward(x, x_mean, mu, logvar)
    ctx.decoder_logvar = decoder_logvar


def _backward(ctx, grad_elbo, grad_kl):
    x, x_mean, mu, logvar = ctx.saved_tensors
    # An output that did not reach the loss arrives as None (or zeros).
    if grad_elbo is None:
        grad_elbo = torch.zeros(x.shape[0], dtype=_output_dtype(x.dtype), device=x.device)
    if grad_kl is None:
        grad_kl = torch.zeros(x.shape[0], dtype=_output_dtype(x.dtype), device=x.device)
    grads = torch.ops.manifold_ext.gaussian_elbo_backward.default(
        grad_elbo, grad_kl, x, x_mean, mu, logvar, ctx.decoder_logvar
    )
    return (*grads, None)


torch.library.register_autograd("manifold_ext::gaussian_elbo", _backward, setup_context=_setup_context)
