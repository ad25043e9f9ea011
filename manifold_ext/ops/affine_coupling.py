"""Fused affine coupling (op family 1): ``torch.ops.manifold_ext.affine_coupling``."""

from __future__ import annotations

import torch

from manifold_ext.ops._checks import as_bool, as_float, check_device, empty_contiguous_like
from manifold_ext.ops._dispatch import call_op, register_autograd
from manifold_ext.ops._second_order import differentiable_leaf, register_backward_op_autograd, vjp

COUPLING_SCALES = ("glow", "exp", "softclamp")
COUPLING_LAYOUTS = ("cross", "split")


def affine_coupling(
    x: torch.Tensor,
    h: torch.Tensor,
    *,
    scale: str = "glow",
    layout: str = "cross",
    clamp: float = 2.0,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling transform of the active half and its log-determinant, in one pass.

    Paper 000 §2.1 (Glow flow steps); RealNVP / Glow affine coupling.

    Args:
        x: the active half (the part being transformed).
        h: output of the coupling network applied to the passive half: a shift
            ``t`` and a raw scale ``r`` per element of ``x``.
        scale: how ``r`` becomes the scale ``s``:
            ``"glow"``: ``s = sigmoid(r + 2)``, ``y = (x + t) * s`` (Glow);
            ``"exp"``: ``s = exp(r)``, ``y = x * s + t`` (RealNVP);
            ``"softclamp"``: ``s = exp(clamp * tanh(r / clamp))``, ``y = x * s + t``.
        layout: where ``t`` and ``r`` sit in ``h``: ``"cross"`` interleaves them
            (``t = h[:, 0::2]``, ``r = h[:, 1::2]``, Glow's layout); ``"split"``
            stacks them (``t = h[:, :C]``, ``r = h[:, C:]``, the ``[t, s]`` chunks
            of normflows / FrEIA networks).
        clamp: bound ``c`` of the soft clamp (``|log s| < c``); ignored otherwise.
        reverse: apply the exact inverse (``x = y / s - t`` or ``(y - t) / s``).

    Returns:
        ``(y, logdet)``: ``y`` shaped like ``x`` (contiguous) and ``logdet``, the
        sum of ``log s`` over all non-batch elements (its negative when ``reverse``).

    Shapes:
        ``x``: ``[B, C, *spatial]`` (rank >= 2; ``[B, C]`` vectors included, any
        size 0 included); ``h``: ``[B, 2C, *spatial]``. ``y``: ``[B, C, *spatial]``;
        ``logdet``: ``[B]``. Non-contiguous inputs are read as they are.

    Dtypes and devices:
        CPU: float32, float64. CUDA: also float16 and bfloat16, computed in
        float32; ``logdet`` is float32 for float16/bfloat16 inputs, else the dtype
        of ``x``. ``x`` and ``h`` share one dtype and one device; meta/fake
        tensors trace (``torch.compile``, ``torch.export``).

    Numerics:
        NaN in, NaN out, elementwise as the formulas above: a NaN in ``x`` or in
        a shift makes that element of ``y`` NaN; a NaN raw scale makes that
        element of ``y`` and its sample's ``logdet`` NaN. ``s`` never overflows
        for the glow and soft-clamp scales (any finite ``r``); ``exp`` overflows
        to inf past ``r`` ~ 88 in float32 like ``torch.exp``. Every CPU
        instruction set gives the same NaN/inf pattern.
        First derivatives in ``x`` and ``h`` come from one fused backward pass;
        second and higher derivatives are exact (``torch.autograd.gradgradcheck``
        passes), taken through the plain-PyTorch formulas of
        ``manifold_ext.reference.affine_coupling_reference``.

    Raises:
        ValueError: unknown ``scale`` or ``layout``; ``clamp`` not a finite number
            > 0 for the soft clamp.
        TypeError: ``clamp`` not a real number or ``reverse`` not a bool.
        RuntimeError: rank < 2; ``h`` not ``[B, 2C, *spatial]``; dtypes differ or
            are not floating point; float16/bfloat16 on CPU; tensors on different
            devices (a meta tensor mixed with real ones included).
    """
    op = "affine_coupling"
    return call_op(
        torch.ops.manifold_ext.affine_coupling.default,
        x,
        h,
        _check_name(scale, "scale", op),
        _check_name(layout, "layout", op),
        as_float(clamp, "clamp", op),
        as_bool(reverse, "reverse", op),
    )


def _check_name(value, name: str, op: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{op}: {name} must be a string, got {value!r} ({type(value).__name__})")
    return value


def _logdet_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_mode(scale: str, layout: str, clamp: float, op: str = "affine_coupling") -> None:
    # The compiled kernels check these too; the fake kernel repeats the checks
    # so that a traced/compiled program fails at trace time, not at run time.
    if scale not in COUPLING_SCALES:
        raise ValueError(f"affine_coupling: unknown scale '{scale}'; expected 'glow', 'exp' or 'softclamp'")
    if layout not in COUPLING_LAYOUTS:
        raise ValueError(f"affine_coupling: unknown layout '{layout}'; expected 'cross' or 'split'")


def _check_inputs(x, h):
    """The compiled kernels' check_inputs (affine_coupling_host.h), in their words."""
    torch._check(
        x.dim() >= 2,
        lambda: (
            f"affine_coupling: x must have shape [B, C, *spatial] (rank >= 2), got rank "
            f"{x.dim()} with shape {list(x.shape)}"
        ),
    )
    torch._check(
        h.dim() == x.dim(),
        lambda: (
            "affine_coupling: h must have the same rank as x ([B, 2C, *spatial]); "
            f"x has shape {list(x.shape)} but h has shape {list(h.shape)}"
        ),
    )
    check_device(
        x.device == h.device,
        lambda: f"affine_coupling: x and h must be on the same device, got x on {x.device} and h on {h.device}",
    )
    torch._check(
        x.dtype == h.dtype,
        lambda: f"affine_coupling: x and h must have the same dtype, got x {x.dtype} and h {h.dtype}",
    )
    torch._check(
        h.shape[0] == x.shape[0],
        lambda: f"affine_coupling: x and h must have the same batch size, got {x.shape[0]} and {h.shape[0]}",
    )
    torch._check(
        h.shape[1] == 2 * x.shape[1],
        lambda: f"affine_coupling: h must have 2*C = {2 * x.shape[1]} channels, got {h.shape[1]}",
    )
    torch._check(h.shape[2:] == x.shape[2:], lambda: "affine_coupling: x and h must have the same spatial size")


@torch.library.register_fake("manifold_ext::affine_coupling")
def _affine_coupling_fake(x, h, scale, layout, clamp, reverse):
    _check_mode(scale, layout, clamp)
    _check_inputs(x, h)
    y = empty_contiguous_like(x)
    logdet = x.new_empty((x.shape[0],), dtype=_logdet_dtype(x.dtype))
    return y, logdet


@torch.library.register_fake("manifold_ext::affine_coupling_backward")
def _affine_coupling_backward_fake(grad_y, grad_logdet, x, h, scale, layout, clamp, reverse):
    _check_mode(scale, layout, clamp)
    _check_inputs(x, h)
    check_device(
        grad_y.device == x.device and grad_logdet.device == x.device,
        lambda: f"affine_coupling_backward: gradients must be on the device of x ({x.device})",
    )
    return empty_contiguous_like(x), empty_contiguous_like(h)


def _setup_context(ctx, inputs, output):
    x, h, scale, layout, clamp, reverse = inputs
    ctx.save_for_backward(x, h)
    ctx.mode = (scale, layout, clamp, reverse)


def _backward(ctx, grad_y, grad_logdet):
    x, h = ctx.saved_tensors
    grad_x, grad_h = call_op(
        torch.ops.manifold_ext.affine_coupling_backward.default, grad_y, grad_logdet, x, h, *ctx.mode
    )
    return grad_x, grad_h, None, None, None, None


register_autograd("affine_coupling", _backward, _setup_context)


def _backward_composite(grad_y, grad_logdet, x, h, scale, layout, clamp, reverse):
    """affine_coupling_backward in plain PyTorch: the VJP of the reference (differentiable again)."""
    from manifold_ext.reference.affine_coupling import affine_coupling_reference

    x, h = differentiable_leaf(x), differentiable_leaf(h)
    y, logdet = affine_coupling_reference(x, h, scale=scale, layout=layout, clamp=clamp, reverse=reverse)
    return vjp((y, logdet), (x, h), (grad_y, grad_logdet.to(logdet.dtype)))


register_backward_op_autograd("affine_coupling_backward", _backward_composite, differentiable=(0, 1, 2, 3))
