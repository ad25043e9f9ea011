"""Fused affine coupling op against its plain-PyTorch reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from manifold_ext.ops import COUPLING_LAYOUTS, COUPLING_SCALES, affine_coupling
from manifold_ext.reference import affine_coupling_reference

MODES = list(itertools.product(COUPLING_SCALES, COUPLING_LAYOUTS, (False, True)))
MODE_IDS = [f"{s}-{lay}-{'rev' if r else 'fwd'}" for s, lay, r in MODES]

# [B, C, *spatial] of x; h gets 2C channels. Odd sizes, batch 1 and 0, rank 2
# (vectors), rank 5, rows longer than the kernels' 4096-element chunks.
SHAPES = [
    (1, 1, 1, 1),
    (2, 3, 5, 7),
    (4, 8, 16, 16),
    (0, 3, 4, 4),
    (3, 4),
    (5, 1),
    (2, 3, 17),
    (2, 2, 3, 4, 5),
    (2, 2, 70, 70),
    (1, 3, 50, 50),
]


def make_inputs(shape, dtype=torch.float32, device="cpu", raw_scale=2.0):
    x = torch.randn(shape, dtype=dtype, device=device)
    h_shape = (shape[0], 2 * shape[1], *shape[2:])
    h = torch.randn(h_shape, dtype=dtype, device=device) * raw_scale
    return x, h


def tolerances(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    return dict(rtol=1e-5, atol=2e-5)


def assert_matches_reference(x, h, scale, layout, reverse, **tol):
    y, logdet = affine_coupling(x, h, scale=scale, layout=layout, reverse=reverse)
    y_ref, logdet_ref = affine_coupling_reference(x, h, scale=scale, layout=layout, reverse=reverse)
    torch.testing.assert_close(y, y_ref, **tol)
    # logdet sums many terms: allow for accumulation order.
    torch.testing.assert_close(logdet, logdet_ref, rtol=tol["rtol"], atol=tol["atol"] * max(1, x[0:1].numel()) ** 0.5)
    return y, logdet


# ---------------------------------------------------------------------------
# Values and gradients against the reference
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scale,layout,reverse", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_forward_matches_reference(device, shape, scale, layout, reverse, dtype):
    x, h = make_inputs(shape, dtype, device)
    y, logdet = assert_matches_reference(x, h, scale, layout, reverse, **tolerances(dtype))
    assert y.shape == x.shape and logdet.shape == (shape[0],)
    assert y.dtype == dtype and logdet.dtype == dtype
    assert y.is_contiguous()


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 4), (0, 2, 3), (2, 2, 70, 70)], ids=str)
@pytest.mark.parametrize("scale,layout,reverse", MODES, ids=MODE_IDS)
def test_gradients_match_reference(device, shape, scale, layout, reverse):
    x, h = make_inputs(shape, torch.float64, device)
    grad_y = torch.randn_like(x)
    grad_logdet = torch.randn(shape[0], dtype=x.dtype, device=device)

    def grads(fn):
        xg, hg = x.clone().requires_grad_(), h.clone().requires_grad_()
        y, logdet = fn(xg, hg, scale=scale, layout=layout, reverse=reverse)
        loss = (y * grad_y).sum() + (logdet * grad_logdet).sum()
        return torch.autograd.grad(loss, (xg, hg))

    for ours, ref in zip(grads(affine_coupling), grads(affine_coupling_reference)):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale,layout,reverse", MODES, ids=MODE_IDS)
def test_gradcheck_float64(device, scale, layout, reverse):
    x, h = make_inputs((2, 3, 4, 5), torch.float64, device)
    x.requires_grad_()
    h.requires_grad_()

    def fn(x, h):
        return affine_coupling(x, h, scale=scale, layout=layout, clamp=1.5, reverse=reverse)

    assert torch.autograd.gradcheck(fn, (x, h))


def test_only_logdet_or_only_y_used(device):
    """Unused outputs reach the backward as zeros; gradients stay right."""
    x, h = make_inputs((2, 3, 4, 4), torch.float64, device)
    for pick in (0, 1):
        xg, hg = x.clone().requires_grad_(), h.clone().requires_grad_()
        xr, hr = x.clone().requires_grad_(), h.clone().requires_grad_()
        affine_coupling(xg, hg)[pick].sum().backward()
        affine_coupling_reference(xr, hr)[pick].sum().backward()
        # The reference's logdet does not touch x (grad None); ours reports zeros.
        torch.testing.assert_close(xg.grad, xr.grad if xr.grad is not None else torch.zeros_like(x))
        torch.testing.assert_close(hg.grad, hr.grad)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale,layout", list(itertools.product(COUPLING_SCALES, COUPLING_LAYOUTS)))
def test_reverse_inverts_forward(device, scale, layout):
    x, h = make_inputs((3, 4, 9, 9), torch.float64, device)
    y, logdet = affine_coupling(x, h, scale=scale, layout=layout)
    x_back, logdet_back = affine_coupling(y, h, scale=scale, layout=layout, reverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet_back, -logdet, rtol=1e-12, atol=1e-12)


def test_extreme_raw_scales_stay_finite(device):
    """Glow's sigmoid and the soft clamp never overflow, whatever the network outputs."""
    x = torch.randn(2, 3, 8, 8, device=device)
    h = torch.linspace(-200, 200, 2 * 3 * 2 * 64, device=device).reshape(2, 6, 8, 8)
    for scale in ("glow", "softclamp"):
        y, logdet = affine_coupling(x, h, scale=scale)
        y_ref, logdet_ref = affine_coupling_reference(x.double(), h.double(), scale=scale)
        assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
        torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logdet, logdet_ref.float(), rtol=1e-5, atol=1e-2)
        # The soft clamp bounds |log s| by the clamp: per sample, |logdet| <= c * C*H*W.
        if scale == "softclamp":
            assert (logdet.abs() <= 2.0 * 3 * 64).all()


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the problem
# ---------------------------------------------------------------------------
def test_wrong_channel_count():
    x, h = torch.randn(2, 3, 4, 4), torch.randn(2, 7, 4, 4)
    with pytest.raises(RuntimeError, match=r"h must have 2\*C = 6 channels .* got 7"):
        affine_coupling(x, h)


def test_dtype_mismatch():
    with pytest.raises(RuntimeError, match="same dtype, got x Float and h Double"):
        affine_coupling(torch.randn(2, 3, 4), torch.randn(2, 6, 4, dtype=torch.float64))


def test_integer_dtype():
    with pytest.raises(RuntimeError, match="expected a floating-point dtype"):
        affine_coupling(torch.ones(2, 3, 4, dtype=torch.int64), torch.ones(2, 6, 4, dtype=torch.int64))


def test_half_on_cpu_is_refused():
    with pytest.raises(RuntimeError, match="CPU kernel supports float32 and float64, got Half"):
        affine_coupling(torch.randn(2, 3, 4).half(), torch.randn(2, 6, 4).half())


def test_wrong_rank():
    with pytest.raises(RuntimeError, match=r"rank >= 2\), got rank 1"):
        affine_coupling(torch.randn(6), torch.randn(12))
    with pytest.raises(RuntimeError, match="h must have the same rank as x"):
        affine_coupling(torch.randn(2, 3, 4, 4), torch.randn(2, 6, 16))


def test_batch_and_spatial_mismatch():
    with pytest.raises(RuntimeError, match="same batch size, got 2 and 3"):
        affine_coupling(torch.randn(2, 3, 4), torch.randn(3, 6, 4))
    with pytest.raises(RuntimeError, match="same spatial size"):
        affine_coupling(torch.randn(2, 3, 4, 4), torch.randn(2, 6, 4, 5))


def test_unknown_modes():
    x, h = torch.randn(2, 3, 4), torch.randn(2, 6, 4)
    with pytest.raises(ValueError, match="unknown scale 'sigmoid'; expected 'glow', 'exp' or 'softclamp'"):
        affine_coupling(x, h, scale="sigmoid")
    with pytest.raises(ValueError, match="unknown layout 'interleaved'; expected 'cross' or 'split'"):
        affine_coupling(x, h, layout="interleaved")
    with pytest.raises(ValueError, match="clamp must be a finite number > 0"):
        affine_coupling(x, h, scale="softclamp", clamp=0.0)


def test_backward_bad_gradient_shape():
    x, h = torch.randn(2, 3, 4), torch.randn(2, 6, 4)
    with pytest.raises(RuntimeError, match="grad_logdet must have shape \\[B\\] = \\[2\\]"):
        torch.ops.manifold_ext.affine_coupling_backward(
            torch.randn(2, 3, 4), torch.randn(3), x, h, "glow", "cross", 2.0, False
        )
    with pytest.raises(RuntimeError, match="grad_y must have the shape of x"):
        torch.ops.manifold_ext.affine_coupling_backward(
            torch.randn(2, 3, 5), torch.randn(2), x, h, "glow", "cross", 2.0, False
        )


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@pytest.mark.cuda
def test_device_mismatch():
    with pytest.raises(RuntimeError, match="same device"):
        affine_coupling(torch.randn(2, 3, 4), torch.randn(2, 6, 4, device="cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("scale,layout,reverse", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", [(64, 16, 32, 32), (3, 5, 7), (257, 2), (2, 2, 70, 70)], ids=str)
def test_cuda_matches_cpu(scale, layout, reverse, shape):
    x, h = make_inputs(shape, torch.float64)
    y_cpu, logdet_cpu = affine_coupling(x, h, scale=scale, layout=layout, reverse=reverse)
    y_gpu, logdet_gpu = affine_coupling(x.cuda(), h.cuda(), scale=scale, layout=layout, reverse=reverse)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet_gpu.cpu(), logdet_cpu, rtol=1e-12, atol=1e-10)
    grad_y, grad_logdet = torch.randn_like(x), torch.randn(shape[0], dtype=x.dtype)
    g_cpu = torch.ops.manifold_ext.affine_coupling_backward(grad_y, grad_logdet, x, h, scale, layout, 2.0, reverse)
    g_gpu = torch.ops.manifold_ext.affine_coupling_backward(
        grad_y.cuda(), grad_logdet.cuda(), x.cuda(), h.cuda(), scale, layout, 2.0, reverse
    )
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("scale", COUPLING_SCALES)
def test_cuda_half_precision_accumulates_in_float32(dtype, scale):
    x, h = make_inputs((8, 4, 16, 16), torch.float32, "cuda", raw_scale=1.0)
    x_low, h_low = x.to(dtype), h.to(dtype)
    y, logdet = affine_coupling(x_low, h_low, scale=scale)
    assert y.dtype == dtype and logdet.dtype == torch.float32
    y_ref, logdet_ref = affine_coupling_reference(x_low.float(), h_low.float(), scale=scale)
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(y.float(), y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------
# float32 accuracy of the range-specialised math (log-sigmoid's log1p, the
# soft clamp's tanh) over dense sweeps, through the vectorised kernel path
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale,low,high", [("glow", -60.0, 60.0), ("exp", -80.0, 80.0), ("softclamp", -12.0, 12.0)])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_float32_accuracy_dense_sweep(device, scale, low, high, reverse):
    rows, width = 16384, 64  # rows of 64: the SIMD body of the CPU kernel, plus no tail
    raw = torch.linspace(low, high, rows * width, dtype=torch.float64, device=device).reshape(rows, 1, width)
    h = torch.cat([torch.zeros_like(raw), raw], dim=1)  # split layout: t = 0, r = raw
    x = torch.ones_like(raw)  # so y = s (forward) or 1/s (reverse)
    y, logdet = affine_coupling(x.float(), h.float(), scale=scale, layout="split", reverse=reverse)
    y_ref, logdet_ref = affine_coupling_reference(x, h.float().double(), scale=scale, layout="split", reverse=reverse)
    finite = torch.isfinite(y_ref) & (y_ref.abs() > 1e-30) & (y_ref.abs() < 1e30)  # float32's normal range
    rel_err = ((y.double() - y_ref).abs() / y_ref.abs())[finite]
    ulp = 2.0**-23
    assert rel_err.max().item() < 4 * ulp, f"max relative error {rel_err.max().item() / ulp:.2f} ulp"
    # log-scales: each row's logdet sums 64 terms
    log_err = (logdet.double() - logdet_ref).abs() / (1 + logdet_ref.abs())
    assert log_err.max().item() < 8 * ulp
