"""Fused Gaussian ELBO of a VAE: ``torch.ops.manifold_ext.gaussian_elbo``."""

from __future__ import annotations

import math

import torch

from manifold_ext.ops._checks import as_float, check_device, compute_dtype, empty_contiguous_like
from manifold_ext.ops._dispatch import call_op, register_autograd
from manifold_ext.ops._second_order import differentiable_leaf, register_backward_op_autograd, vjp


def gaussian_elbo(
    x: torch.Tensor, x_mean: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, decoder_logvar: float = 0.0
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
        x: images (or any data); ``x_mean``: the decoder mean.
        mu, logvar: encoder mean and log-variance.
        decoder_logvar: ``log sigma_x^2``, a constant.

    Returns:
        ``(elbo, kl)``.

    Shapes:
        ``x``, ``x_mean``: ``[B, *]`` (one shape, rank >= 2); ``mu``, ``logvar``:
        ``[B, *]`` (one shape, the same ``B``). Returns ``elbo`` and ``kl``, each
        ``[B]``. Batch 0 and empty samples work; non-contiguous inputs are read
        as they are.

    Dtypes and devices:
        CPU: float32/float64, sums accumulated in float64 (deterministic,
        thread-count independent). CUDA: also float16/bfloat16 with float32
        accumulation; outputs are float32 for float16/bfloat16 inputs, else the
        input dtype. One dtype and one device for all four tensors (a meta tensor
        mixed with real ones is refused); meta/fake tensors trace.

    Numerics:
        NaN in, NaN out per sample: a NaN in ``x`` or ``x_mean`` makes that
        sample's ``elbo`` NaN; a NaN in ``mu`` or ``logvar`` its ``kl`` and ``elbo``.
        The kernels multiply by ``exp(-decoder_logvar)`` in the compute dtype, so
        ``decoder_logvar`` must keep it finite (float32: ``>= -88.722839``;
        float64: ``>= -709.782712``); a smaller value raises instead of giving
        ``0 * inf = NaN`` where ``x == x_mean``. The same NaN/inf pattern on every
        CPU instruction set.
        Differentiable in all four tensors to any order: first derivatives by the
        fused backward op, second and higher exactly through the plain-PyTorch
        formulas of the reference.

    Raises:
        ValueError: ``decoder_logvar`` not finite or too small for the dtype.
        TypeError: ``decoder_logvar`` not a real number.
        RuntimeError: shapes, dtypes or devices that do not match; rank < 2;
            float16/bfloat16 on CPU.
    """
    return call_op(
        torch.ops.manifold_ext.gaussian_elbo.default,
        x,
        x_mean,
        mu,
        logvar,
        as_float(decoder_logvar, "decoder_logvar", "gaussian_elbo"),
    )


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def smallest_decoder_logvar(dtype: torch.dtype) -> float:
    """The smallest ``decoder_logvar`` the kernels accept for inputs of ``dtype`` (as gaussian_elbo_host.h)."""
    largest = float(torch.finfo(compute_dtype(dtype)).max)
    return -math.floor(math.log(largest) * 1e6) / 1e6


def _check_shapes(x, x_mean, mu, logvar, decoder_logvar, op="gaussian_elbo"):
    # The compiled kernels check these too (gaussian_elbo_host.h); repeating them in the fake kernel
    # makes a traced/compiled program fail at trace time with the same words.
    torch._check(x.dim() >= 2, lambda: f"{op}: x must have shape [B, *] (rank >= 2), got shape {list(x.shape)}")
    torch._check(
        x_mean.shape == x.shape,
        lambda: f"{op}: x_mean must have the shape of x {list(x.shape)}, got {list(x_mean.shape)}",
    )
    torch._check(mu.dim() >= 2, lambda: f"{op}: mu must have shape [B, *] (rank >= 2), got shape {list(mu.shape)}")
    torch._check(
        logvar.shape == mu.shape,
        lambda: f"{op}: logvar must have the shape of mu {list(mu.shape)}, got {list(logvar.shape)}",
    )
    torch._check(
        mu.shape[0] == x.shape[0],
        lambda: f"{op}: x and mu must have the same batch size, got {x.shape[0]} and {mu.shape[0]}",
    )
    devices = (x.device, x_mean.device, mu.device, logvar.device)
    check_device(
        all(device == x.device for device in devices),
        lambda: (
            f"{op}: all inputs must be on the same device, got x on {x.device}, x_mean on "
            f"{x_mean.device}, mu on {mu.device}, logvar on {logvar.device}"
        ),
    )
    if not math.isfinite(decoder_logvar):
        raise ValueError(f"{op}: decoder_logvar must be finite, got {decoder_logvar}")
    smallest = smallest_decoder_logvar(x.dtype)
    if decoder_logvar < smallest:
        arithmetic = "float64" if compute_dtype(x.dtype) == torch.float64 else "float32"
        raise ValueError(
            f"{op}: decoder_logvar = {decoder_logvar!r} is too small: the kernels multiply by "
            f"exp(-decoder_logvar) in {arithmetic}, where it overflows; "
            f"need decoder_logvar >= {smallest!r}"
        )


@torch.library.register_fake("manifold_ext::gaussian_elbo")
def _gaussian_elbo_fake(x, x_mean, mu, logvar, decoder_logvar):
    _check_shapes(x, x_mean, mu, logvar, decoder_logvar)
    out = x.new_empty((x.shape[0],), dtype=_output_dtype(x.dtype))
    return out, torch.empty_like(out)


@torch.library.register_fake("manifold_ext::gaussian_elbo_backward")
def _gaussian_elbo_backward_fake(grad_elbo, grad_kl, x, x_mean, mu, logvar, decoder_logvar):
    op = "gaussian_elbo_backward"
    _check_shapes(x, x_mean, mu, logvar, decoder_logvar, op)
    for grad in (grad_elbo, grad_kl):
        torch._check(
            grad.dim() == 1 and grad.shape[0] == x.shape[0],
            lambda: f"{op}: grad_elbo and grad_kl must have shape [B] = [{x.shape[0]}], got {list(grad.shape)}",
        )
        check_device(grad.device == x.device, lambda: f"{op}: gradients must be on the device of x ({x.device})")
    return empty_contiguous_like(x), empty_contiguous_like(x), empty_contiguous_like(mu), empty_contiguous_like(mu)


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
    grads = call_op(
        torch.ops.manifold_ext.gaussian_elbo_backward.default,
        grad_elbo,
        grad_kl,
        x,
        x_mean,
        mu,
        logvar,
        ctx.decoder_logvar,
    )
    return (*grads, None)


register_autograd("gaussian_elbo", _backward, _setup_context)


def _backward_composite(grad_elbo, grad_kl, x, x_mean, mu, logvar, decoder_logvar):
    """gaussian_elbo_backward in plain PyTorch: the VJP of the reference (differentiable again)."""
    from manifold_ext.reference.gaussian_elbo import gaussian_elbo_reference

    leaves = tuple(differentiable_leaf(t) for t in (x, x_mean, mu, logvar))
    elbo, kl = gaussian_elbo_reference(*leaves, decoder_logvar)
    return vjp((elbo, kl), leaves, (grad_elbo.to(elbo.dtype), grad_kl.to(kl.dtype)))


register_backward_op_autograd("gaussian_elbo_backward", _backward_composite, differentiable=(0, 1, 2, 3, 4, 5))
