"""Closest-centre Gaussian KL (op family 4): ``torch.ops.manifold_ext.closest_centre_kl``
and ``torch.ops.manifold_ext.nearest_centre_kl``.

**Defaults and their scale.** ``sigma0 = 1/16`` is the prior standard deviation
of Eq. 27 (paper 000 §4.2, the scaled-up GridVAE on 40 CelebA attributes, a
grid of spacing 1). It is narrow: neighbouring centres are 16 ``sigma0``
apart, and a unit-variance posterior sitting on a centre, ``N(c, I)``, costs
``(1/sigma0^2 - 1 - log(1/sigma0^2)) / 2 = 124.7`` nats per latent dimension
(249.5 for ``n = 2``). The 2-D GridVAE of §4.1 uses a mixture prior whose
components have ``sigma = 1/3`` (Eq. 24; 2.90 nats per dimension for the same
posterior); :class:`manifold_ext.vae.GridVAE` passes its prior's ``sigma`` (and
grid) to this op, so the model and its prior agree, and the op's default stays
the §4.2 value. Pass ``sigma0=1/3, low=-2, high=3`` for §4.1's grid.
"""

from __future__ import annotations

import math

import torch

from manifold_ext.ops._checks import (
    as_float,
    as_optional_float,
    check_device,
    check_on_device_of,
    compute_dtype,
    empty_contiguous_like,
)
from manifold_ext.ops._dispatch import call_op, register_autograd
from manifold_ext.ops._second_order import differentiable_leaf, register_backward_op_autograd, vjp

DEFAULT_SIGMA0 = 1.0 / 16.0  # paper 000 §4.2, Eq. 27: "sigma0 = 1/16 in some of our experiments"
GRID_PRIOR_SIGMA = 1.0 / 3.0  # paper 000 §4.1, Eq. 24: the 2-D GridVAE's mixture components


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

    **Defaults and their scale.** ``sigma0 = 1/16`` is Eq. 27's value (§4.2):
    with ``spacing = 1`` a unit-variance posterior on a centre costs 124.7 nats
    per dimension. :class:`manifold_ext.vae.GridVAE` uses ``sigma0 = 1/3``, the
    component sd of its Eq. 24 mixture prior (2.90 nats per dimension); see the
    module docstring for why the two differ.

    Args:
        mu, logvar: posterior means and log-variances.
        sigma0: standard deviation of every prior component.
        spacing, offset: the grid ``offset + spacing * k``, ``k`` integer.
        low, high: optional range of the grid's centres.
        target: given centres (guided).
        mask: which dimensions ``target`` guides.

    Returns:
        ``(kl, centre)``: the KL per sample and the centres used. The choice of
        centre is piecewise constant, so no gradient flows through it.

    Shapes:
        ``mu``, ``logvar``, ``target``: ``[B, n]`` (``B`` or ``n`` may be 0);
        ``mask``: ``[n]`` or ``[B, n]``. Returns ``kl`` ``[B]`` and ``centre``
        ``[B, n]`` (contiguous).

    Dtypes and devices:
        CPU: float32, float64; CUDA: also float16, bfloat16 with float32 math.
        ``kl`` is float32 for float16/bfloat16 inputs, else the input dtype;
        ``centre`` has the input dtype. ``mask`` is bool. All tensors on one
        device (a meta tensor mixed with real ones is refused); meta/fake
        tensors trace (``torch.compile``, ``torch.export``).

    Numerics:
        NaN in, NaN out: a NaN in ``mu`` gives a NaN centre and KL for that
        element's sample (``torch.round`` and ``torch.clamp`` propagate NaN), a
        NaN in ``logvar`` or in a used ``target`` a NaN KL; ``target`` where
        ``mask`` is false is never read. Exactly 0 when ``mu`` sits on its
        centre and ``logvar = log sigma0^2``. The kernels multiply by
        ``1/sigma0^2`` in the compute dtype, so ``sigma0`` must keep it finite
        (float32: ``sigma0`` >= about 5.42e-20; float64: >= about 7.46e-155); a smaller
        one raises instead of giving ``0 * inf = NaN`` on a centre. The same
        NaN/inf pattern on every CPU instruction set. The centres are those of
        the reference bit for bit: the CPU kernels multiply by ``1/spacing``
        only when ``spacing`` is a power of two (then the product and the
        quotient are the same rounded number) and divide otherwise.
        Differentiable in ``mu`` and ``logvar`` (and in ``target`` where it is the
        centre) to any order: first derivatives by the fused backward op, second
        and higher exactly through the plain-PyTorch formulas of the reference.
        ``centre`` is not differentiable.

    Raises:
        ValueError: ``sigma0`` not finite and > 0 or too small for the dtype;
            ``spacing`` not finite and > 0; ``offset`` not finite; ``low`` or
            ``high`` NaN or ``low > high``; a ``mask`` without ``target``.
        TypeError: a scalar argument that is not a real number (bools included).
        RuntimeError: shapes, dtypes or devices that do not match; a non-bool
            ``mask``; float16/bfloat16 on CPU.
    """
    op = "closest_centre_kl"
    return call_op(
        torch.ops.manifold_ext.closest_centre_kl.default,
        mu,
        logvar,
        target,
        mask,
        as_float(sigma0, "sigma0", op),
        as_float(spacing, "spacing", op),
        as_float(offset, "offset", op),
        as_optional_float(low, "low", op),
        as_optional_float(high, "high", op),
    )


def nearest_centre_kl(
    mu: torch.Tensor, logvar: torch.Tensor, centres: torch.Tensor, sigma0: float = DEFAULT_SIGMA0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 27's KL against the nearest centre of an arbitrary centre set (GMM means, a codebook).

    Args:
        mu, logvar: posterior means and log-variances.
        centres: the centre set (``K >= 1`` rows).
        sigma0: standard deviation of every prior component (default: Eq. 27's
            1/16; see :func:`closest_centre_kl` for its scale).

    Returns:
        ``(kl, index)``: ``kl`` as in :func:`closest_centre_kl` with
        ``c = centres[index]``, and ``index``, the centre nearest to ``mu`` in
        Euclidean distance (the first one on ties, as ``torch.argmin``).
        Distances are summed from exact differences ``(mu_i - c_i)^2``, never the
        ``|mu|^2 - 2 mu.c + |c|^2`` expansion, and the ``[B, K]`` distance matrix is
        never stored.

    Shapes:
        ``mu``, ``logvar``: ``[B, n]``; ``centres``: ``[K, n]``. Returns ``kl``
        ``[B]`` and ``index`` ``[B]``.

    Dtypes and devices:
        As :func:`closest_centre_kl`; ``centres`` has the dtype of ``mu``;
        ``index`` is int64. float32 searches up to 2^24 centres.

    Numerics:
        NaN in, NaN out, never skipped: a NaN distance counts as nearer than any
        number (as ``torch.argmin``), so a centre with a NaN, or a NaN in
        ``mu``, is chosen (the first such centre) and the sample's KL is NaN.
        ``sigma0`` range as :func:`closest_centre_kl`. The same NaN/inf pattern
        and indices on every CPU instruction set.
        Differentiable in ``mu``, ``logvar`` and ``centres`` to any order (no
        gradient through the choice of centre; ``index`` is not differentiable).
        The centres' gradient sums each centre's samples in sample order on the
        CPU (deterministic for any thread count); on CUDA it is accumulated
        with atomics (last-bit nondeterministic) unless
        ``torch.use_deterministic_algorithms(True)`` is set.

    Raises:
        ValueError: ``sigma0`` not finite and > 0 or too small for the dtype.
        TypeError: ``sigma0`` not a real number.
        RuntimeError: shapes, dtypes or devices that do not match; no centres;
            more than 2^24 centres in float32; float16/bfloat16 on CPU.
    """
    op = "nearest_centre_kl"
    return call_op(
        torch.ops.manifold_ext.nearest_centre_kl.default, mu, logvar, centres, as_float(sigma0, "sigma0", op)
    )


def _kl_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# The compiled kernels check everything too (closest_centre_kl_host.h); the fake
# kernels repeat the checks so that a traced/compiled program fails at trace
# time with the same message.
def _check_sigma0(sigma0: float, op: str, dtype: torch.dtype | None = None) -> None:
    if not (math.isfinite(sigma0) and sigma0 > 0):
        raise ValueError(f"{op}: sigma0 must be a finite number > 0, got {sigma0}")
    if dtype is None:
        return
    largest = float(torch.finfo(compute_dtype(dtype)).max)
    smallest = math.nextafter(1.0 / math.sqrt(largest), math.inf)
    if sigma0 < smallest or not math.isfinite(1.0 / (sigma0 * sigma0)):
        arithmetic = "float64" if compute_dtype(dtype) == torch.float64 else "float32"
        raise ValueError(
            f"{op}: sigma0 = {sigma0!r} is too small: the kernels multiply by 1/sigma0^2 in "
            f"{arithmetic}, where it overflows; need sigma0 >= {smallest!r}"
        )


def _check_posterior(mu, logvar, op: str) -> None:
    torch._check(mu.dim() == 2, lambda: f"{op}: mu must have shape [B, n], got shape {list(mu.shape)}")
    torch._check(
        logvar.shape == mu.shape,
        lambda: f"{op}: logvar must have the shape of mu {list(mu.shape)}, got {list(logvar.shape)}",
    )
    check_device(
        logvar.device == mu.device,
        lambda: f"{op}: mu and logvar must be on the same device, got mu on {mu.device} and logvar on {logvar.device}",
    )


def _check_on_device_of_mu(tensor, name: str, mu, op: str) -> None:
    check_on_device_of(
        tensor, mu, lambda: f"{op}: {name} must be on the device of mu ({mu.device}), got {tensor.device}"
    )


def _check_centres(mu, centres, op: str) -> None:
    torch._check(
        centres.dim() == 2 and centres.shape[1] == mu.shape[1],
        lambda: (
            f"{op}: centres must have shape [K, n] with n = {mu.shape[1]} (the latent size of mu), "
            f"got {list(centres.shape)}"
        ),
    )
    _check_on_device_of_mu(centres, "centres", mu, op)


@torch.library.register_fake("manifold_ext::closest_centre_kl")
def _closest_centre_kl_fake(mu, logvar, target, mask, sigma0, spacing, offset, low, high):
    op = "closest_centre_kl"
    _check_posterior(mu, logvar, op)
    _check_sigma0(sigma0, op, mu.dtype)
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"{op}: spacing must be a finite number > 0, got {spacing}")
    if mask is not None and target is None:
        raise ValueError(
            f"{op}: a mask selects the dimensions guided by target; pass target as well (partially guided)"
        )
    if target is not None:
        torch._check(
            target.shape == mu.shape,
            lambda: f"{op}: target must have the shape of mu {list(mu.shape)}, got {list(target.shape)}",
        )
        _check_on_device_of_mu(target, "target", mu, op)
    if mask is not None:
        torch._check(
            mask.shape == mu.shape or (mask.dim() == 1 and mask.shape[0] == mu.shape[1]),
            lambda: (
                f"{op}: mask must have shape [n] = [{mu.shape[1]}] or [B, n] = {list(mu.shape)}, got {list(mask.shape)}"
            ),
        )
        _check_on_device_of_mu(mask, "mask", mu, op)
    kl = mu.new_empty((mu.shape[0],), dtype=_kl_dtype(mu.dtype))
    return kl, empty_contiguous_like(mu)


@torch.library.register_fake("manifold_ext::closest_centre_kl_backward")
def _closest_centre_kl_backward_fake(grad_kl, mu, logvar, centre, sigma0):
    op = "closest_centre_kl_backward"
    _check_posterior(mu, logvar, op)
    _check_sigma0(sigma0, op, mu.dtype)
    check_device(
        grad_kl.device == mu.device and centre.device == mu.device,
        lambda: f"{op}: grad_kl and centre must be on the device of mu ({mu.device})",
    )
    return empty_contiguous_like(mu), empty_contiguous_like(logvar)


@torch.library.register_fake("manifold_ext::nearest_centre_kl")
def _nearest_centre_kl_fake(mu, logvar, centres, sigma0):
    op = "nearest_centre_kl"
    _check_posterior(mu, logvar, op)
    _check_sigma0(sigma0, op, mu.dtype)
    _check_centres(mu, centres, op)
    kl = mu.new_empty((mu.shape[0],), dtype=_kl_dtype(mu.dtype))
    return kl, mu.new_empty((mu.shape[0],), dtype=torch.int64)


@torch.library.register_fake("manifold_ext::nearest_centre_kl_backward")
def _nearest_centre_kl_backward_fake(grad_kl, mu, logvar, centres, index, sigma0):
    op = "nearest_centre_kl_backward"
    _check_posterior(mu, logvar, op)
    _check_sigma0(sigma0, op, mu.dtype)
    _check_centres(mu, centres, op)
    check_device(
        grad_kl.device == mu.device and index.device == mu.device,
        lambda: f"{op}: grad_kl and index must be on the device of mu ({mu.device})",
    )
    return empty_contiguous_like(mu), empty_contiguous_like(logvar)


def _closest_setup_context(ctx, inputs, output):
    mu, logvar, target, mask, sigma0, *_ = inputs
    _, centre = output
    ctx.save_for_backward(mu, logvar, centre, mask, target)
    ctx.sigma0 = sigma0
    ctx.mark_non_differentiable(centre)
    # No [B, n] zero gradient for the non-differentiable centre (its fill cost ~20 % of the backward).
    ctx.set_materialize_grads(False)


def _closest_backward(ctx, grad_kl, grad_centre):
    mu, logvar, centre, mask, target = ctx.saved_tensors
    if grad_kl is None:  # only the centre was used downstream: it carries no gradient
        return None, None, None, None, None, None, None, None, None
    if target is not None and target.requires_grad and torch.is_grad_enabled():
        # A second derivative will be taken: hand the backward op the centre as a function of target
        # (the same values), so that d(grad_mu)/d(target) is part of the graph.
        centre = target if mask is None else torch.where(mask, target, centre)
    grad_mu, grad_logvar = call_op(
        torch.ops.manifold_ext.closest_centre_kl_backward.default, grad_kl, mu, logvar, centre, ctx.sigma0
    )
    grad_target = None
    if ctx.needs_input_grad[2]:  # dKL/dc = -dKL/dmu where c = target
        grad_target = -grad_mu if mask is None else torch.where(mask, -grad_mu, torch.zeros_like(grad_mu))
    return grad_mu, grad_logvar, grad_target, None, None, None, None, None, None


def _sum_per_centre(rows: torch.Tensor, index: torch.Tensor, num_centres: int) -> torch.Tensor:
    """``out[k] = sum of rows[b] with index[b] == k``, added in sample order whatever the thread count.

    ``index_put_(accumulate=True)`` and ``index_add_`` split the samples between threads on the CPU (and use
    atomics on CUDA), so their low bits change with ``torch.get_num_threads()``; a stable sort followed by a
    segment sum gives every centre one sequential sum.
    """
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=num_centres)
    return torch.segment_reduce(rows[order], "sum", lengths=counts, axis=0)


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
    grad_mu, grad_logvar = call_op(
        torch.ops.manifold_ext.nearest_centre_kl_backward.default, grad_kl, mu, logvar, centres, index, ctx.sigma0
    )
    grad_centres = None
    if ctx.needs_input_grad[2]:  # each sample pulls its own centre: -dKL/dmu summed per centre
        grad_centres = _sum_per_centre(-grad_mu.to(centres.dtype), index, centres.size(0))
    return grad_mu, grad_logvar, grad_centres, None


register_autograd("closest_centre_kl", _closest_backward, _closest_setup_context)
register_autograd("nearest_centre_kl", _nearest_backward, _nearest_setup_context)


# Second order: the backward ops' own VJPs, through the reference's KL.
def _closest_backward_composite(grad_kl, mu, logvar, centre, sigma0):
    from manifold_ext.reference.closest_centre_kl import gaussian_kl_to_centre

    mu, logvar = differentiable_leaf(mu), differentiable_leaf(logvar)
    kl = gaussian_kl_to_centre(mu, logvar, centre, sigma0)
    return vjp((kl,), (mu, logvar), (grad_kl.to(kl.dtype),))


def _nearest_backward_composite(grad_kl, mu, logvar, centres, index, sigma0):
    from manifold_ext.reference.closest_centre_kl import gaussian_kl_to_centre

    mu, logvar = differentiable_leaf(mu), differentiable_leaf(logvar)
    kl = gaussian_kl_to_centre(mu, logvar, centres[index], sigma0)
    return vjp((kl,), (mu, logvar), (grad_kl.to(kl.dtype),))


register_backward_op_autograd("closest_centre_kl_backward", _closest_backward_composite, differentiable=(0, 1, 2, 3))
register_backward_op_autograd("nearest_centre_kl_backward", _nearest_backward_composite, differentiable=(0, 1, 2, 3))
