"""Fused affine coupling (op family 1): ``torch.ops.manifold_ext.affine_coupling``."""
from __future__ import annotations

import torch

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
        x: ``[B, C, *spatial]`` active half (the part being transformed).
        h: ``[B, 2C, *spatial]`` output of the coupling network applied to the
            passive half: a shift ``t`` and a raw scale ``r`` per element of ``x``.
        scale: how ``r`` becomes the scale ``s``:
            ``"glow"``: ``s = sigmoid(r + 2)``, ``y = (x + t) * s`` (Glow);
            ``"exp"``: ``s = exp(r)``, ``y = x * s + t`` (RealNVP);
            ``"softclamp"``: ``s = exp(clamp * tanh(r / clamp))``, ``y = x * s + t``.
        layout: where ``t`` and ``r`` sit in ``h``: ``"cross"`` interleaves them
            (``t = h[:, 0::2]``, ``r = h[:, 1::2]``, Glow's layout); ``"split"``
            stacks them (``t = h[:, :C]``, ``r = h[:, C:]``).
        clamp: bound ``c`` of the soft clamp (``|log s| < c``); ignored otherwise.
        reverse: apply the exact inverse (``x = y / s - t`` or ``(y - t) / s``).

    Returns:
        ``(y, logdet)``: ``y`` shaped like ``x`` (contiguous) and ``logdet`` ``[B]``,
        the sum of ``log s`` over all non-batch elements (its negative when
        ``reverse``). ``logdet`` is float32 for float16/bfloat16 inputs.

    Differentiable in ``x`` and ``h``; traceable by ``torch.compile``. Runs on
    CPU (float32, float64) and CUDA (also float16, bfloat16 with float32 math).
    """
    return torch.ops.manifold_ext.affine_coupling.default(x, h, scale, layout, float(clamp), bool(reverse))


def _logdet_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_mode(scale: str, layout: str, clamp: float) -> None:
    # The compiled kernels check these too; the fake kernel repeats the checks
    # so that a traced/compiled program fails at trace time, not at run time.
    if scale not in COUPLING_SCALES:
        raise ValueError(f"affine_coupling: unknown scale '{scale}'; expected 'glow', 'exp' or 'softclamp'")
    if layout not in COUPLING_LAYOUTS:
        raise ValueError(f"affine_coupling: unknown layout '{layout}'; expected 'cross' or 'split'")


@torch.library.register_fake("manifold_ext::affine_coupling")
def _affine_coupling_fake(x, h, scale, layout, clamp, reverse):
    _check_mode(scale, layout, clamp)
    torch._check(x.dim() >= 2, lambda: f"affine_coupling: x must have shape [B, C, *spatial], got {tuple(x.shape)}")
    torch._check(h.dim() == x.dim(), lambda: "affine_coupling: h must have the same rank as x")
    torch._check(
        h.shape[1] == 2 * x.shape[1],
        lambda: f"affine_coupling: h must have 2*C = {2 * x.shape[1]} channels, got {h.shape[1]}",
    )
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    logdet = x.new_empty((x.shape[0],), dtype=_logdet_dtype(x.dtype))
    return y, logdet


@torch.library.register_fake("manifold_ext::affine_coupling_backward")
def _affine_coupling_backward_fake(grad_y, grad_logdet, x, h, scale, layout, clamp, reverse):
    _check_mode(scale, layout, clamp)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(h, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    x, h, scale, layout, clamp, reverse = inputs
    ctx.save_for_backward(x, h)
    ctx.mode = (scale, layout, clamp, reverse)


def _backward(ctx, grad_y, grad_logdet):
    x, h = ctx.saved_tensors
    grad_x, grad_h = torch.ops.manifold_ext.affine_coupling_backward.default(grad_y, grad_logdet, x, h, *ctx.mode)
    return grad_x, grad_h, None, None, None, None


torch.library.register_autograd("manifold_ext::affine_coupling", _backward, setup_context=_setup_context)
