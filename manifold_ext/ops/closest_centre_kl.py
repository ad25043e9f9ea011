"""Closest-centre Gaussian KL (op family 4): ``torch.ops.manifold_ext.closest_centre_kl``
and ``torch.ops.manifold_ext.nearest_centre_kl``."""
from __future__ import annotations

import math

import torch

DEFAULT_SIGMA0 = 1.0 / 16.0  # paper 000 §4.2: "sigma0 = 1/16 in some of our experiments"


def closest_centre_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    sigma0: float = DEFAULT_SIGMA0,
    spacing: float = 1.0,
    offset: float = 0.0,
    low: float | None = None,
    high: float | None = None,
    target: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL divergence of a diagonal Gaussian posterior from its closest grid centre (paper 000, Eq. 27).

    For each sample ``b`` the posterior ``N(mu[b], diag(exp(logvar[b])))`` is
    compared with the single prior component ``N(c[b], sigma0^2 I)`` it belongs to:

        ``kl[b] = 1/2 sum_i (log sigma0^2 - logvar_i - 1 + (exp(logvar_i) + (mu_i - c_i)^2) / sigma0^2)``

    which replaces the KL to a full grid mixture (``K = m^n`` components) by one
    Gaussian KL, so it scales to any latent size (the paper's 40-D CelebA grid).

    The centre ``c`` is chosen per dimension:

    * unguided: the nearest grid point ``offset + spacing * round((mu - offset) / spacing)``
      (ties to even, as ``torch.round``), clipped to ``[low, high]`` when given
      (the grid's extreme centres, e.g. ``low=-2, high=3`` for the 6x6 grid);
    * guided (``target`` given, ``mask`` not): ``c = target``, the attribute
      vector used as the ground-truth centre (§4.2.2);
    * partially guided (``target`` and a boolean ``mask`` of shape ``[n]`` or
      ``[B, n]``): ``c = target`` where ``mask`` is true, the clipped grid point
      elsewhere (``target`` is not read where ``mask`` is false).

    Args:
        mu, logvar: ``[B, n]`` posterior means and log-variances.
        sigma0: standard deviation of every prior component (> 0).
        spacing, offset: the grid ``offset + spacing * k``, ``k`` integer (spacing > 0).
        low, high: optional range of the grid's centres.
        target: ``[B, n]`` given centres (guided), same dtype and device as ``mu``.
        mask: ``[n]`` or ``[B, n]`` bool, which dimensions ``target`` guides.

    Returns:
        ``(kl, centre)``: ``kl`` ``[B]`` (float32 for float16/bfloat16 inputs) and
        ``centre`` ``[B, n]``, the centres used. The choice of centre is piecewise
        constant, so no gradient flows through it: ``kl`` is differentiable in
        ``mu`` and ``logvar`` (and in ``target`` where it is used as the centre);
        ``centre`` is not differentiable.

    One pass over memory forward, one backward; exactly 0 when ``mu`` sits on
    its centre and ``logvar = log sigma0^2``. CPU (float32, float64) and CUDA
    (also float16, bfloat16 with float32 math); traceable by ``torch.compile``.
    """
    return torch.ops.manifold_ext.closest_centre_kl.default(
        mu, logvar, target, mask, float(sigma0), float(spacing), float(offset),
        None if low is None else float(low), None if high is None else float(high),
    )


def nearest_centre_kl(
    mu: torch.Tensor, logvar: torch.Tensor, centres: torch.Tensor, sigma0: float = DEFAULT_SIGMA0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 27's KL against the nearest centre of an arbitrary centre set (GMM means, a codebook).

    Args:
        mu, logvar: ``[B, n]`` posterior means and log-variances.
        centres: ``[K, n]`` centres, ``K >= 1``, same dtype and device as ``mu``.
        sigma0: standard deviation of every prior component (> 0).

    Returns:
        ``(kl, index)``: ``kl`` ``[B]`` as in :func:`closest_centre_kl` with
        ``c = centres[index]``, and ``index`` ``[B]`` int64, the centre nearest to
        ``mu`` in Euclidean distance (the first one on ties, as ``torch.argmin``).
        Distances are summed from exact differences ``(mu_i - c_i)^2``, never the
        ``|mu|^2 - 2 mu.c + |c|^2`` expansion, and the ``[B, K]`` distance matrix is
        never stored. ``kl`` is differentiable in ``mu``, ``logvar`` and ``centres``
        (no gradient through the choice of centre).
    """
    return torch.ops.manifold_ext.nearest_centre_kl.default(mu, logvar, centres, float(sigma0))


def _kl_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# The compiled kernels check everything too; the fake kernels repeat the checks
# so that a traced/compiled program fails at trace time with the same message.
def _check_sigma0(sigma0: float, op: str) -> None:
    if not (math.isfinite(sigma0) and sigma0 > 0):
        raise ValueError(f"{op}: sigma0 must be a finite number > 0, got {sigma0}")


def _check_posterior(mu, logvar, op: str) -> None:
    torch._check(mu.dim() == 2, lambda: f"{op}: mu must have shape [B, n], got shape {list(mu.shape)}")
    torch._check(
        logvar.shape == mu.shape,
        lambda: f"{op}: logvar must have the shape of mu {list(mu.shape)}, got {list(logvar.shape)}",
    )


@torch.library.register_fake("manifold_ext::closest_centre_kl")
def _closest_centre_kl_fake(mu, logvar, target, mask, sigma0, spacing, offset, low, high):
    op = "closest_centre_kl"
    _check_posterior(mu, logvar, op)
    _check_sigma0(sigma0, op)
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"{op}: spacing must be a finite number > 0, got {spacing}")
    if mask is not None and target is None:
        raise ValueError(f"{op}: a mask selects the dimensions guided by target; pass target as well (partially guided)")
    if target is not None:
        torch._check(target.shape == mu.shape,
                     lambda: f"{op}: target must have the shape of mu {list(mu.shape)}, got {list(target.shape)}")
    if mask is not None:
        torch._check(mask.shape == mu.shape or (mask.dim() == 1 and mask.shape[0] == mu.shape[1]),
                     lambda: f"{op}: mask must have shape [n] = [{mu.shape[1]}] or [B, n] = {list(mu.shape)}, "
                             f"got {list(mask.shape)}")
    kl = mu.new_empty((mu.shape[0],), dtype=_kl_dtype(mu.dtype))
    return kl, torch.empty_like(mu, memory_format=torch.contiguous_format)


@torch.library.register_fake("manifold_ext::closest_centre_kl_backward")
def _closest_centre_kl_backward_fake(grad_kl, mu, logvar, centre, sigma0):
    _check_sigma0(sigma0, "closest_centre_kl_backward")
    return (torch.empty_like(mu, memory_format=torch.contiguous_format),
            torch.empty_like(logvar, memory_format=torch.contiguous_format))


@torch.library.register_fake("manifold_ext::nearest_centre_kl")
def _nearest_centre_kl_fake(mu, logvar, centres, sigma0):
    op = "nearest_centre_kl"
    _check_posterior(mu, logvar, op)
    _check_sigma0(sigma0, op)
    torch._check(centres.dim() == 2 and centres.shape[1] == mu.shape[1],
                 lambda: f"{op}: centres must have shape [K, n] with n = {mu.shape[1]} (the latent size of mu), "
                         f"got {list(centres.shape)}")
    kl = mu.new_empty((mu.shape[0],), dtype=_kl_dtype(mu.dtype))
    return kl, mu.new_empty((mu.shape[0],), dtype=torch.int64)


@torch.library.register_fake("manifold_ext::nearest_centre_kl_backward")
def _nearest_centre_kl_backward_fake(grad_kl, mu, logvar, centres, index, sigma0):
    _check_sigma0(sigma0, "nearest_centre_kl_backward")
    return (torch.empty_like(mu, memory_format=torch.contiguous_format),
            torch.empty_like(logvar, memory_format=torch.contiguous_format))


def _closest_setup_context(ctx, inputs, output):
    mu, logvar, target, mask, sigma0, *_ = inputs
    _, centre = output
    ctx.save_for_backward(mu, logvar, centre, mask)
    ctx.sigma0 = sigma0
    ctx.mark_non_differentiable(centre)
    # No [B, n] zero gradient for the non-differentiable centre (its fill cost ~20 % of the backward).
    ctx.set_materialize_grads(False)


def _closest_backward(ctx, grad_kl, grad_centre):
    mu, logvar, centre, mask = ctx.saved_tensors
    if grad_kl is None:  # only the centre was used downstream: it carries no gradient
        return None, None, None, None, None, None, None, None, None
    grad_mu, grad_logvar = torch.ops.manifold_ext.closest_centre_kl_backward.default(
        grad_kl, mu, logvar, centre, ctx.sigma0)
    grad_target = None
    if ctx.needs_input_grad[2]:  # dKL/dc = -dKL/dmu where c = target
        grad_target = -grad_mu if mask is None else torch.where(mask, -grad_mu, torch.zeros_like(grad_mu))
    return grad_mu, grad_logvar, grad_target, None, None, None, None, None, None


def _nearest_setup_context(ctx, inputs, output):
    mu, logvar, centres, sigma0 = inputs
    _, index = output
    ctx.save_for_backward(mu, logvar, centres, index)
    ctx.sigma0 = sigma0
    ctx.mark_non_differentiable(index)
    ctx.set_materialize_grads(False)


def _nearest_backward(ctx, grad_kl, grad_index):
    mu, logvar, centres, index = ctx.saved_tensors
    if grad_kl is None:
        return None, None, None, None
    grad_mu, grad_logvar = torch.ops.manifold_ext.nearest_centre_kl_backward.default(
        grad_kl, mu, logvar, centres, index, ctx.sigma0)
    grad_centres = None
    if ctx.needs_input_grad[2]:  # each sample pulls its own centre: -dKL/dmu summed per centre
        grad_centres = torch.zeros_like(centres).index_add_(0, index, -grad_mu.to(centres.dtype))
    return grad_mu, grad_logvar, grad_centres, None


torch.library.register_autograd("manifold_ext::closest_centre_kl", _closest_backward,
                                setup_context=_closest_setup_context)
torch.library.register_autograd("manifold_ext::nearest_centre_kl", _nearest_backward,
                                setup_context=_nearest_setup_context)
