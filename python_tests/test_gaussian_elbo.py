"""Fused Gaussian ELBO op against its plain-PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_ext.ops import gaussian_elbo
from manifold_ext.reference import gaussian_elbo_reference

# ([B, *x], [B, *mu]): odd sizes, batch 1 and 0, vectors, rank 5, a latent
# tensor of rank 3, rows longer than the CPU kernel's 8 lanes and the CUDA block.
SHAPES = [
    ((1, 1, 1, 1), (1, 1)),
    ((2, 1, 8, 8), (2, 8)),
    ((3, 3, 5, 7), (3, 5)),
    ((0, 1, 8, 8), (0, 4)),
    ((5, 13), (5, 3)),
    ((2, 2, 3, 4, 5), (2, 2, 3)),
    ((4, 3, 33, 31), (4, 300)),
]
LOGVARS = [0.0, -4.6, 1.7]


def make_inputs(x_shape, z_shape, dtype=torch.float32, device="cpu"):
    x = torch.rand(x_shape, dtype=dtype, device=device)
    x_mean = torch.rand(x_shape, dtype=dtype, device=device)
    mu = torch.randn(z_shape, dtype=dtype, device=device)
    logvar = torch.randn(z_shape, dtype=dtype, device=device)
    return x, x_mean, mu, logvar


def tolerances(dtype, pixels):
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    # the reference sums in float32; ours in double: allow the reference's error
    return dict(rtol=1e-5, atol=1e-5 * max(1, pixels) ** 0.5)


@pytest.mark.parametrize("x_shape,z_shape", SHAPES, ids=str)
@pytest.mark.parametrize("decoder_logvar", LOGVARS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_forward_matches_reference(device, x_shape, z_shape, decoder_logvar, dtype):
    inputs = make_inputs(x_shape, z_shape, dtype, device)
    elbo, kl = gaussian_elbo(*inputs, decoder_logvar=decoder_logvar)
    elbo_ref, kl_ref = gaussian_elbo_reference(*inputs, decoder_logvar)
    assert elbo.shape == kl.shape == (x_shape[0],) and elbo.dtype == kl.dtype == dtype
    pixels = math.prod(x_shape[1:])
    torch.testing.assert_close(elbo, elbo_ref, **tolerances(dtype, pixels))
    torch.testing.assert_close(kl, kl_ref, **tolerances(dtype, pixels))


@pytest.mark.parametrize("x_shape,z_shape", SHAPES, ids=str)
@pytest.mark.parametrize("decoder_logvar", [0.0, -4.6])
def test_gradients_match_reference(device, x_shape, z_shape, decoder_logvar):
    inputs = make_inputs(x_shape, z_shape, torch.float64, device)
    grad_elbo = torch.randn(x_shape[0], dtype=torch.float64, device=device)
    grad_kl = torch.randn(x_shape[0], dtype=torch.float64, device=device)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        elbo, kl = fn(*leaves)
        return torch.autograd.grad((elbo * grad_elbo).sum() + (kl * grad_kl).sum(), leaves, allow_unused=True)

    ours = grads(lambda *t: gaussian_elbo(*t, decoder_logvar=decoder_logvar))
    ref = grads(lambda *t: gaussian_elbo_reference(*t, decoder_logvar))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("decoder_logvar", LOGVARS)
def test_gradcheck_float64(device, decoder_logvar):
    inputs = [t.requires_grad_() for t in make_inputs((3, 2, 3, 2), (3, 4), torch.float64, device)]
    assert torch.autograd.gradcheck(lambda *t: gaussian_elbo(*t, decoder_logvar=decoder_logvar), inputs)


def test_only_kl_or_only_elbo_used(device):
    """An output that does not reach the loss gets a zero gradient; the other stays right."""
    inputs = make_inputs((2, 1, 4, 4), (2, 3), torch.float64, device)
    for pick in (0, 1):
        ours = [t.clone().requires_grad_() for t in inputs]
        ref = [t.clone().requires_grad_() for t in inputs]
        gaussian_elbo(*ours, decoder_logvar=-1.0)[pick].sum().backward()
        gaussian_elbo_reference(*ref, -1.0)[pick].sum().backward()
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.grad, b.grad if b.grad is not None else torch.zeros_like(a))


def test_is_the_vae_elbo_with_closed_form_kl():
    """Independent check of the formula: KL against torch.distributions, log-lik against Normal.log_prob."""
    x, x_mean, mu, logvar = make_inputs((3, 1, 4, 4), (3, 5), torch.float64)
    decoder_logvar = -2.0
    elbo, kl = gaussian_elbo(x, x_mean, mu, logvar, decoder_logvar=decoder_logvar)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl_expected = torch.distributions.kl_divergence(q, prior).sum(1)
    decoder = torch.distributions.Normal(x_mean, math.exp(0.5 * decoder_logvar))
    log_lik = decoder.log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(kl, kl_expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(elbo, log_lik - kl_expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the problem
# ---------------------------------------------------------------------------
def test_shape_mismatches():
    x, x_mean, mu, logvar = make_inputs((2, 1, 4, 4), (2, 3))
    with pytest.raises(RuntimeError, match=r"x_mean must have the shape of x \[2, 1, 4, 4\], got \[2, 1, 4, 5\]"):
        gaussian_elbo(x, torch.rand(2, 1, 4, 5), mu, logvar)
    with pytest.raises(RuntimeError, match=r"logvar must have the shape of mu \[2, 3\], got \[2, 4\]"):
        gaussian_elbo(x, x_mean, mu, torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="same batch size, got 2 and 3"):
        gaussian_elbo(x, x_mean, torch.randn(3, 3), torch.randn(3, 3))
    with pytest.raises(RuntimeError, match=r"x must have shape \[B, \*\] \(rank >= 2\)"):
        gaussian_elbo(torch.rand(4), torch.rand(4), mu, logvar)


def test_dtype_problems():
    x, x_mean, mu, logvar = make_inputs((2, 1, 4, 4), (2, 3))
    with pytest.raises(RuntimeError, match="same dtype, got x Float, x_mean Double"):
        gaussian_elbo(x, x_mean.double(), mu, logvar)
    with pytest.raises(RuntimeError, match="expected a floating-point dtype"):
        gaussian_elbo(*(t.long() for t in (x, x_mean, mu, logvar)))
    with pytest.raises(RuntimeError, match="CPU kernel supports float32 and float64, got Half"):
        gaussian_elbo(*(t.half() for t in (x, x_mean, mu, logvar)))


def test_non_finite_decoder_logvar():
    with pytest.raises(ValueError, match="decoder_logvar must be finite, got inf"):
        gaussian_elbo(*make_inputs((2, 1, 4, 4), (2, 3)), decoder_logvar=float("inf"))


def test_backward_bad_gradient_shape():
    inputs = make_inputs((2, 1, 4, 4), (2, 3))
    with pytest.raises(RuntimeError, match=r"grad_elbo and grad_kl must have shape \[B\] = \[2\], got \[3\]"):
        torch.ops.manifold_ext.gaussian_elbo_backward(torch.randn(3), torch.randn(2), *inputs, 0.0)


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@pytest.mark.cuda
def test_device_mismatch():
    x, x_mean, mu, logvar = make_inputs((2, 1, 4, 4), (2, 3))
    with pytest.raises(RuntimeError, match="same device"):
        gaussian_elbo(x, x_mean.cuda(), mu, logvar)


@pytest.mark.cuda
@pytest.mark.parametrize("x_shape,z_shape", SHAPES + [((256, 3, 64, 64), (256, 64))], ids=str)
def test_cuda_matches_cpu(x_shape, z_shape):
    inputs = make_inputs(x_shape, z_shape, torch.float64)
    cpu = gaussian_elbo(*inputs, decoder_logvar=-4.6)
    gpu = gaussian_elbo(*(t.cuda() for t in inputs), decoder_logvar=-4.6)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-9)
    grads = (torch.randn(x_shape[0], dtype=torch.float64), torch.randn(x_shape[0], dtype=torch.float64))
    g_cpu = torch.ops.manifold_ext.gaussian_elbo_backward(*grads, *inputs, -4.6)
    g_gpu = torch.ops.manifold_ext.gaussian_elbo_backward(*(t.cuda() for t in (*grads, *inputs)), -4.6)
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_half_precision_accumulates_in_float32(dtype):
    inputs = [t.to(dtype) for t in make_inputs((8, 3, 16, 16), (8, 16), torch.float32, "cuda")]
    elbo, kl = gaussian_elbo(*inputs, decoder_logvar=-2.0)
    assert elbo.dtype == kl.dtype == torch.float32
    elbo_ref, kl_ref = gaussian_elbo_reference(*(t.float() for t in inputs), -2.0)
    torch.testing.assert_close(elbo, elbo_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------
# Issue 13 item 7: decoder_logvar whose exp(-s) overflows the compute dtype
# ---------------------------------------------------------------------------
def test_decoder_logvar_too_small_for_the_dtype_is_refused():
    """decoder_logvar <= -89 in float32 with x == x_mean gave 0 * inf = NaN."""
    x, _, mu, logvar = make_inputs((2, 1, 4, 4), (2, 3))
    with pytest.raises(
        ValueError,
        match=r"decoder_logvar = -89.0 is too small: the kernels multiply by "
        r"exp\(-decoder_logvar\) in float32, where it overflows; "
        r"need decoder_logvar >= -88.722839",
    ):
        gaussian_elbo(x, x.clone(), mu, logvar, decoder_logvar=-89.0)
    with pytest.raises(ValueError, match="need decoder_logvar >= -88.722839"):  # at trace time too
        gaussian_elbo(*(t.to("meta") for t in (x, x, mu, logvar)), decoder_logvar=-89.0)
    # float64 computes it: the exact, finite log-likelihood of x == x_mean
    elbo, kl = gaussian_elbo(x.double(), x.double(), mu.double(), logvar.double(), decoder_logvar=-89.0)
    expected = -0.5 * 16 * (-89.0 + math.log(2 * math.pi)) - kl
    torch.testing.assert_close(elbo, expected)
    # the smallest accepted value in float32 stays finite
    elbo, _ = gaussian_elbo(x, x.clone(), mu, logvar, decoder_logvar=-88.722839)
    assert torch.isfinite(elbo).all()


def test_decoder_logvar_may_be_passed_positionally_like_the_reference():
    inputs = make_inputs((2, 1, 4, 4), (2, 3), torch.float64)
    for a, b in zip(gaussian_elbo(*inputs, -1.0), gaussian_elbo_reference(*inputs, -1.0)):
        torch.testing.assert_close(a, b)
