"""Diffusion likelihood and sampler-step ops (families 2 and 3) against their plain-PyTorch references."""

from __future__ import annotations

import pytest
import torch

from manifold_ext import ops
from manifold_ext.reference import diffusion as ref

# [B, *] shapes: odd sizes, batch 1 and 0, 2-D points, images, samples longer than the 4096-element chunks.
SHAPES = [(1, 1), (5, 2), (37, 2), (3, 3, 5, 7), (0, 2), (2, 3, 8, 8), (2, 5000), (4, 17)]
ABAR_PAIRS = [(0.9, 0.8), (1.0, 0.999), (0.3, 0.01), (0.9999, 0.9998)]  # (cleaner, noisier), incl. t = 0


def tolerances(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def per_sample_abar(batch, device, low=0.05, high=0.95):
    """Per-sample (cleaner, noisier) pairs with a few repeats, as batches that mix times have."""
    cleaner = torch.rand(batch, dtype=torch.float64, device=device) * (high - low) + low
    if batch > 2:
        cleaner[1] = cleaner[0]
    noisier = cleaner * (torch.rand(batch, dtype=torch.float64, device=device) * 0.5 + 0.4)
    return cleaner, noisier


def inputs(shape, dtype, device, n=4):
    return [torch.randn(shape, dtype=dtype, device=device) for _ in range(n)]


# ---------------------------------------------------------------------------
# Likelihood step (Eq. 15-20)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("abar", ABAR_PAIRS, ids=str)
def test_nll_step_matches_reference(device, shape, dtype, abar):
    x_t, x_next, eps = inputs(shape, dtype, device, 3)
    acc = torch.randn(shape[0], dtype=torch.float64, device=device)
    out = ops.diffusion_nll_step(acc, x_t, x_next, eps, *abar)
    # The reference in float64 is the truth; a float32 op is compared with float32-sized error per element.
    expected = ref.diffusion_nll_step_reference(acc, x_t.double(), x_next.double(), eps.double(), *abar)
    assert out.shape == (shape[0],) and out.dtype == torch.float64
    numel = max(1, x_t[0:1].numel())
    scale = 1.0 / (1 - abar[1] / abar[0])  # terms are O(1 / variance)
    atol = 1e-9 * numel * scale if dtype == torch.float64 else 2e-5 * numel**0.5 * scale
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("shape", [(5, 2), (3, 3, 5, 7), (6, 5000), (0, 3)], ids=str)
def test_nll_step_per_sample_abar(device, shape):
    x_t, x_next, eps = inputs(shape, torch.float64, device, 3)
    acc = torch.zeros(shape[0], dtype=torch.float32, device=device)
    abar_t, abar_next = per_sample_abar(shape[0], device)
    if shape[0] > 3:
        abar_t[3] = 1.0  # a t = 0 pair in a mixed batch
    out = ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next)
    expected = ref.diffusion_nll_step_reference(acc.double(), x_t, x_next, eps, abar_t, abar_next)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)
    # Row by row with scalar abar gives the same numbers.
    for b in range(shape[0]):
        single = ops.diffusion_nll_step(
            acc[b : b + 1], x_t[b : b + 1], x_next[b : b + 1], eps[b : b + 1], abar_t[b].item(), abar_next[b].item()
        )
        torch.testing.assert_close(single, out[b : b + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nll_step_per_sample_abar_many_short_samples(dtype):
    # 2-D points at mixed times take a one-pass path that computes the coefficients of a block of
    # samples SIMD-wide; 1,003 samples cover whole blocks, whole vectors and a partial tail.
    x_t, x_next, eps = inputs((1003, 2), dtype, "cpu", 3)
    abar_t, abar_next = per_sample_abar(1003, "cpu")
    abar_t[::97] = 1.0  # t = 0 pairs in several lanes
    acc = torch.randn(1003, dtype=torch.float64)
    out = ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next)
    expected = ref.diffusion_nll_step_reference(acc, x_t.double(), x_next.double(), eps.double(), abar_t, abar_next)
    scale = float((1 / (1 - abar_next / abar_t)).max())
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=(1e-10 if dtype == torch.float64 else 1e-5) * scale)


def test_nll_step_t0_convention():
    """With abar_t = 1 the backward variance equals the forward variance of the jump: log 2pi and log var cancel."""
    x_t, x_next, eps = inputs((4, 3), torch.float64, "cpu", 3)
    abar_next = 0.99
    out = ops.diffusion_nll_step(torch.zeros(4, dtype=torch.float64), x_t, x_next, eps, 1.0, abar_next)
    var = 1 - abar_next
    mean_q = abar_next**0.5 * x_t
    mean_p = (x_next - (1 - abar_next) ** 0.5 * eps) / abar_next**0.5  # Eq. 19 at abar_t = 1 is Eq. 31's x0
    expected = (-((x_next - mean_q) ** 2) + (x_t - mean_p) ** 2).sum(1) / (2 * var)
    torch.testing.assert_close(out, expected)


def test_nll_step_and_forward_matches_two_ops(device):
    for shape, abar in [((37, 2), (0.9, 0.8, 0.7)), ((3, 3, 8, 8), (1.0, 0.99, 0.5)), ((2, 5000), (0.5, 0.4, 0.4))]:
        x_t, x_next, eps, noise = inputs(shape, torch.float32, device)
        acc = torch.randn(shape[0], dtype=torch.float64, device=device)
        acc_new, x_after = ops.diffusion_nll_step_and_forward(acc, x_t, x_next, eps, noise, *abar)
        acc_ref, after_ref = ref.diffusion_nll_step_and_forward_reference(acc, x_t, x_next, eps, noise, *abar)
        torch.testing.assert_close(acc_new, ops.diffusion_nll_step(acc, x_t, x_next, eps, *abar[:2]))
        torch.testing.assert_close(x_after, ops.diffusion_forward_step(x_next, noise, *abar[1:]))
        torch.testing.assert_close(x_after, after_ref)
        torch.testing.assert_close(acc_new, acc_ref, rtol=1e-5, atol=1e-2)


def test_nll_step_and_forward_mixed_per_sample(device):
    x_t, x_next, eps, noise = inputs((6, 4), torch.float64, device)
    acc = torch.zeros(6, dtype=torch.float64, device=device)
    abar_t, abar_next = per_sample_abar(6, device)
    abar_after = abar_next * 0.5
    for args in [
        (0.9, 0.8, abar_after.new_full((6,), 0.5)),
        (abar_t, abar_next, 0.01),
        (abar_t, abar_next, abar_after),
    ]:
        acc_new, x_after = ops.diffusion_nll_step_and_forward(acc, x_t, x_next, eps, noise, *args)
        acc_ref, after_ref = ref.diffusion_nll_step_and_forward_reference(acc, x_t, x_next, eps, noise, *args)
        torch.testing.assert_close(acc_new, acc_ref)
        torch.testing.assert_close(x_after, after_ref)


@pytest.mark.parametrize("shape", [(1, 1), (5, 2), (3, 2, 3, 5), (0, 2)], ids=str)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
def test_nll_step_gradients_match_reference(device, shape, per_sample):
    x_t, x_next, eps = inputs(shape, torch.float64, device, 3)
    acc = torch.randn(shape[0], dtype=torch.float64, device=device)
    grad_out = torch.randn(shape[0], dtype=torch.float64, device=device)
    abar = per_sample_abar(shape[0], device) if per_sample else (0.7, 0.6)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (acc, x_t, x_next, eps)]
        return torch.autograd.grad((fn(*leaves, *abar) * grad_out).sum(), leaves)

    for ours, expected in zip(grads(ops.diffusion_nll_step), grads(ref.diffusion_nll_step_reference)):
        torch.testing.assert_close(ours, expected)


def test_nll_step_gradcheck(device):
    x_t, x_next, eps = (t.requires_grad_() for t in inputs((3, 4), torch.float64, device, 3))
    acc = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.diffusion_nll_step(*a, 0.8, 0.5), (acc, x_t, x_next, eps))
    assert torch.autograd.gradcheck(lambda *a: ops.diffusion_nll_step(*a, 1.0, 0.9), (acc, x_t, x_next, eps))


def test_nll_step_and_forward_gradcheck(device):
    tensors = [t.requires_grad_() for t in inputs((3, 4), torch.float64, device, 4)]
    acc = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)

    def fn(acc, x_t, x_next, eps, noise):
        return ops.diffusion_nll_step_and_forward(acc, x_t, x_next, eps, noise, 0.8, 0.5, 0.3)

    assert torch.autograd.gradcheck(fn, (acc, *tensors))


# ---------------------------------------------------------------------------
# Sampler steps
# ---------------------------------------------------------------------------
STEPS = {
    "ddpm": (ops.ddpm_step, ref.ddpm_step_reference, {}),
    "ddim": (ops.ddim_step, ref.ddim_step_reference, {"eta": 0.0}),
    "ddim-eta0.3": (ops.ddim_step, ref.ddim_step_reference, {"eta": 0.3}),
    "large_step": (ops.large_step, ref.large_step_reference, {}),
}
BACKWARD_PAIRS = [(0.5, 0.6), (0.01, 1.0), (0.9999, 1.0), (0.3, 0.3)]  # (abar_t, abar_prev), to t = 0, identity


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("shape", [(1, 1), (37, 2), (3, 3, 5, 7), (0, 2), (2, 5000)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_noise", [True, False], ids=["noise", "mean"])
def test_sampler_steps_match_reference(device, step, shape, dtype, with_noise):
    op, reference, kwargs = STEPS[step]
    x, eps, noise = inputs(shape, dtype, device, 3)
    noise = noise if with_noise else None
    for abar in BACKWARD_PAIRS:
        out = op(x, eps, *abar, noise=noise, **kwargs)
        expected = reference(x, eps, *abar, noise=noise, **kwargs)
        assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
        tol = tolerances(dtype)
        torch.testing.assert_close(out, expected, rtol=tol["rtol"], atol=tol["atol"] * (1 + abar[1] / abar[0]) * 100)


@pytest.mark.parametrize("step", list(STEPS))
def test_sampler_steps_per_sample_abar(device, step):
    op, reference, kwargs = STEPS[step]
    x, eps, noise = inputs((7, 3), torch.float64, device, 3)
    abar_prev, abar_t = per_sample_abar(7, device)
    abar_prev[2] = 1.0  # a final step in a mixed batch
    out = op(x, eps, abar_t, abar_prev, noise=noise, **kwargs)
    torch.testing.assert_close(out, reference(x, eps, abar_t, abar_prev, noise=noise, **kwargs))
    # a shared value may be mixed with a per-sample one
    out = op(x, eps, abar_t, 1.0, noise=noise, **kwargs)
    torch.testing.assert_close(out, reference(x, eps, abar_t, 1.0, noise=noise, **kwargs))


def test_ddim_eta1_is_large_step_and_ddpm_shares_its_mean(device):
    x, eps, noise = inputs((9, 2), torch.float64, device, 3)
    torch.testing.assert_close(ops.ddim_step(x, eps, 0.3, 0.7, 1.0, noise), ops.large_step(x, eps, 0.3, 0.7, noise))
    torch.testing.assert_close(ops.ddpm_step(x, eps, 0.3, 0.7), ops.large_step(x, eps, 0.3, 0.7))


def test_forward_step_matches_reference(device):
    for shape in [(1, 1), (37, 2), (3, 3, 5, 7), (0, 4)]:
        x, noise = inputs(shape, torch.float32, device, 2)
        for abar in [(1.0, 0.5), (0.9, 0.9), (0.5, 0.001)]:
            torch.testing.assert_close(
                ops.diffusion_forward_step(x, noise, *abar), ref.diffusion_forward_step_reference(x, noise, *abar)
            )
    abar_next = torch.rand(37, dtype=torch.float64, device=device) * 0.9 + 0.05
    x, noise = inputs((37, 2), torch.float64, device, 2)
    torch.testing.assert_close(
        ops.diffusion_forward_step(x, noise, 1.0, abar_next),
        ref.diffusion_forward_step_reference(x, noise, 1.0, abar_next),
    )


@pytest.mark.parametrize("step", list(STEPS) + ["forward"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
def test_sampler_step_gradients(device, step, per_sample):
    x, eps, noise = (t.requires_grad_() for t in inputs((4, 3), torch.float64, device, 3))
    if per_sample:
        cleaner, noisier = per_sample_abar(4, device)
    else:
        cleaner, noisier = 0.7, 0.4
    if step == "forward":
        assert torch.autograd.gradcheck(lambda a, b: ops.diffusion_forward_step(a, b, cleaner, noisier), (x, noise))
        return
    op, reference, kwargs = STEPS[step]
    assert torch.autograd.gradcheck(lambda a, b, c: op(a, b, noisier, cleaner, noise=c, **kwargs), (x, eps, noise))
    ours = torch.autograd.grad(op(x, eps, noisier, cleaner, noise=noise, **kwargs).square().sum(), (x, eps, noise))
    theirs = torch.autograd.grad(
        reference(x, eps, noisier, cleaner, noise=noise, **kwargs).square().sum(), (x, eps, noise)
    )
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    # without noise, the noise gets no gradient and x, eps still do
    gx, ge = torch.autograd.grad(op(x, eps, noisier, cleaner, **kwargs).sum(), (x, eps))
    assert gx.shape == x.shape and ge.shape == eps.shape


# ---------------------------------------------------------------------------
# RK4
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (37, 2), (3, 3, 5, 7), (0, 2), (10_001,)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_rk4_matches_reference(device, shape, dtype):
    x, k1, k2, k3, k4 = inputs(shape, dtype, device, 5)
    tol = tolerances(dtype)
    torch.testing.assert_close(ops.rk4_combine(k1, k2, k3, k4), ref.rk4_combine_reference(k1, k2, k3, k4), **tol)
    for h in (0.1, -2.5, 0.0):
        torch.testing.assert_close(
            ops.rk4_update(x, k1, k2, k3, k4, h), ref.rk4_update_reference(x, k1, k2, k3, k4, h), **tol
        )


def test_rk4_gradcheck(device):
    tensors = [t.requires_grad_() for t in inputs((3, 4), torch.float64, device, 5)]
    assert torch.autograd.gradcheck(ops.rk4_combine, tensors[1:])
    assert torch.autograd.gradcheck(lambda *a: ops.rk4_update(*a, -0.3), tensors)


def test_rk4_solves_an_ode_to_fourth_order():
    """dx/dt = -x: one RK4 step of size h has error ~ h^5 / 120."""
    x = torch.ones(1, dtype=torch.float64)
    for h in (0.1, 0.05):
        k1 = -x
        k2 = -(x + h / 2 * k1)
        k3 = -(x + h / 2 * k2)
        k4 = -(x + h * k3)
        error = (ops.rk4_update(x, k1, k2, k3, k4, h) - torch.exp(torch.tensor(-h, dtype=torch.float64))).abs().item()
        assert error < h**5 / 100


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the problem
# ---------------------------------------------------------------------------
def test_bad_schedules_are_refused():
    x, y, z = inputs((3, 2), torch.float32, "cpu", 3)
    acc = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"diffusion_nll_step: invalid schedule, got abar_t = 0.8 and abar_next = 0.9; "
        r"need 0 < abar_next < abar_t <= 1",
    ):
        ops.diffusion_nll_step(acc, x, y, z, 0.8, 0.9)
    with pytest.raises(ValueError, match="need 0 < abar_next < abar_t <= 1"):
        ops.diffusion_nll_step(acc, x, y, z, 0.8, 0.8)  # dt = 0: no noise added
    with pytest.raises(ValueError, match="abar_t = 1.5"):
        ops.diffusion_nll_step(acc, x, y, z, 1.5, 0.9)
    with pytest.raises(ValueError, match=r"invalid schedule at sample 1, got abar_t = 0.5 and abar_next = 0.6"):
        ops.diffusion_nll_step(
            acc, x, y, z, torch.tensor([0.9, 0.5, 0.9], dtype=torch.float64), torch.tensor([0.8, 0.6, 0.8])
        )
    with pytest.raises(ValueError, match=r"invalid schedule at sample 1, got abar_t = 0.05 and"):  # the first bad one
        ops.diffusion_nll_step(acc, x, y, z, torch.tensor([0.9, 0.05, float("nan")], dtype=torch.float64), 0.1)
    with pytest.raises(
        ValueError, match=r"ddim_step: invalid schedule, got abar_t = 1.0 and abar_prev = 1.0; need 0 < abar_t < 1"
    ):
        ops.ddim_step(x, y, 1.0, 1.0)
    with pytest.raises(ValueError, match="abar_t <= abar_prev <= 1"):
        ops.ddpm_step(x, y, 0.6, 0.5)
    with pytest.raises(ValueError, match="abar_t = nan"):
        ops.large_step(x, y, float("nan"), 0.5)
    with pytest.raises(ValueError, match="Eq. 17: noise can only be added going forward"):
        ops.diffusion_forward_step(x, y, 0.5, 0.6)
    with pytest.raises(ValueError, match="eta must be in \\[0, 1\\]"):
        ops.ddim_step(x, y, 0.5, 0.6, eta=1.5)


def test_bad_shapes_dtypes_devices_are_refused():
    x, y, z = inputs((3, 2), torch.float32, "cpu", 3)
    acc = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(
        RuntimeError, match=r"diffusion_nll_step: eps must have the shape of x_t \[3, 2\], got \[3, 3\]"
    ):
        ops.diffusion_nll_step(acc, x, y, torch.randn(3, 3), 0.9, 0.8)
    with pytest.raises(RuntimeError, match=r"acc must have shape \[B\] = \[3\], got \[4\]"):
        ops.diffusion_nll_step(torch.zeros(4), x, y, z, 0.9, 0.8)
    with pytest.raises(RuntimeError, match="acc must be float32 or float64"):
        ops.diffusion_nll_step(torch.zeros(3, dtype=torch.int64), x, y, z, 0.9, 0.8)
    with pytest.raises(RuntimeError, match="x_next must have the dtype of x_t"):
        ops.diffusion_nll_step(acc, x, y.double(), z, 0.9, 0.8)
    with pytest.raises(
        RuntimeError, match=r"abar_t must be a float, a 0-dim tensor or a per-sample tensor of shape \[B\] = \[3\]"
    ):
        ops.diffusion_nll_step(acc, x, y, z, torch.tensor([0.9, 0.9]), 0.8)
    with pytest.raises(RuntimeError, match="ddpm_step: noise must have the shape of x_t"):
        ops.ddpm_step(x, y, 0.5, 0.6, torch.randn(3, 1))
    with pytest.raises(RuntimeError, match="must have a batch dimension"):
        ops.ddim_step(torch.tensor(1.0), torch.tensor(1.0), 0.5, 0.6)
    with pytest.raises(RuntimeError, match="expected a floating-point dtype for x_t"):
        ops.ddim_step(torch.ones(3, 2, dtype=torch.int32), torch.ones(3, 2, dtype=torch.int32), 0.5, 0.6)
    with pytest.raises(RuntimeError, match="CPU kernel supports float32 and float64, got Half"):
        ops.large_step(x.half(), y.half(), 0.5, 0.6)
    with pytest.raises(RuntimeError, match="rk4_update: k3 must have the shape of x"):
        ops.rk4_update(x, y, z, torch.randn(2, 2), x, 0.1)
    with pytest.raises(ValueError, match="the step h must be finite"):
        ops.rk4_update(x, y, z, x, y, float("inf"))
    with pytest.raises(ValueError, match="unknown step 'euler'"):
        torch.ops.manifold_ext.diffusion_step_backward(x, "euler", torch.tensor(0.5), torch.tensor(0.6), 0.0)


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1_000, 2), (64, 3, 32, 32), (3, 9000), (5, 40)], ids=str)
def test_cuda_matches_cpu(shape):
    x_t, x_next, eps, noise = inputs(shape, torch.float64, "cpu")
    acc = torch.randn(shape[0], dtype=torch.float64)
    abar_t, abar_next = per_sample_abar(shape[0], "cpu")
    cuda = lambda *ts: [t.cuda() if isinstance(t, torch.Tensor) else t for t in ts]  # noqa: E731
    cases = [
        (ops.diffusion_nll_step, (acc, x_t, x_next, eps, 0.9, 0.8)),
        (ops.diffusion_nll_step, (acc, x_t, x_next, eps, abar_t, abar_next)),
        (ops.diffusion_nll_step_and_forward, (acc, x_t, x_next, eps, noise, 1.0, 0.9, 0.5)),
        (ops.diffusion_forward_step, (x_t, noise, abar_t, abar_next)),
        (ops.ddpm_step, (x_t, eps, 0.5, 0.6, noise)),
        (ops.ddim_step, (x_t, eps, abar_next, abar_t, 0.4, noise)),
        (ops.large_step, (x_t, eps, 0.5, 1.0, noise)),
        (ops.rk4_update, (x_t, x_next, eps, noise, x_t, 0.2)),
        (ops.rk4_combine, (x_t, x_next, eps, noise)),
    ]
    for op, args in cases:
        expected = op(*args)
        got = op(*cuda(*args))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-8)
    abars = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    grads_cpu = torch.ops.manifold_ext.diffusion_nll_step_backward(acc, x_t, x_next, eps, *abars)
    grads_gpu = torch.ops.manifold_ext.diffusion_nll_step_backward(*cuda(acc, x_t, x_next, eps), *abars)
    for a, b in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(a.cpu(), b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_half_precision_accumulates_in_float32(dtype):
    x_t, x_next, eps, noise = inputs((256, 3, 8, 8), torch.float32, "cuda")
    low = [t.to(dtype) for t in (x_t, x_next, eps, noise)]
    acc = torch.zeros(256, device="cuda")
    out = ops.diffusion_nll_step(acc, *low[:3], 0.9, 0.8)
    expected = ref.diffusion_nll_step_reference(acc.double(), *(t.double() for t in low[:3]), 0.9, 0.8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-1)
    step = ops.ddim_step(low[0], low[1], 0.4, 0.6, 0.5, low[2])
    assert step.dtype == dtype
    expected = ref.ddim_step_reference(*(t.float() for t in low[:2]), 0.4, 0.6, 0.5, low[2].float())
    torch.testing.assert_close(step.float(), expected, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------
# Issue 13: devices of the fake kernels, schedules that overflow float32,
# gradients refused for abar, schedule values printed exactly
# ---------------------------------------------------------------------------
def test_per_sample_abar_on_meta_is_refused():
    """A meta per-sample abar with real inputs ran the fake kernel and returned uninitialised memory."""
    x, y, z = inputs((3, 2), torch.float32, "cpu", 3)
    acc = torch.zeros(3, dtype=torch.float64)
    abar_t = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64, device="meta")
    with pytest.raises(
        RuntimeError, match=r"a per-sample abar_t must be on the device of the inputs \(cpu\), got meta"
    ):
        ops.diffusion_nll_step(acc, x, y, z, abar_t, 0.5)
    with pytest.raises(RuntimeError, match="abar_prev is a 0-dim tensor on the meta device"):
        ops.ddim_step(x, y, 0.4, torch.tensor(0.6, dtype=torch.float64, device="meta"))
    with pytest.raises(RuntimeError, match="a per-sample abar_a must be on the device of the inputs"):
        torch.ops.manifold_ext.diffusion_step_backward(x, "ddpm", abar_t, torch.tensor(0.9, dtype=torch.float64), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_schedule_whose_coefficients_overflow_float32(dtype):
    """(abar_t, abar_next) = (1, 1e-300) multiplied by 1e150 in float32: inf and NaN (0 * inf) before."""
    x, y, z = inputs((3, 4), dtype, "cpu", 3)
    acc = torch.zeros(3, dtype=torch.float64)
    if dtype == torch.float32:
        with pytest.raises(
            ValueError,
            match=r"abar_t = 1.0 and abar_next = 1e-300, gives the step a coefficient of "
            r"1e\+150, beyond the largest float32",
        ):
            ops.diffusion_nll_step(acc, x, y, z, 1.0, 1e-300)
        with pytest.raises(ValueError, match="the schedule at sample 1, abar_t = 0.5 and abar_next = 1e-100"):
            ops.diffusion_nll_step(
                acc,
                x,
                y,
                z,
                torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64),
                torch.tensor([0.5, 1e-100, 0.5], dtype=torch.float64),
            )
        with pytest.raises(ValueError, match="beyond the largest float32"):
            ops.ddpm_step(x, y, 1e-90, 1.0)
    else:  # float64 computes every valid schedule
        out = ops.diffusion_nll_step(acc, x, y, z, 1.0, 1e-300)
        assert torch.isfinite(out).all()
        expected = ref.diffusion_nll_step_reference(acc, x, y, z, 1.0, 1e-300)
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=0)
    # small but representable schedules still work in float32
    out = ops.diffusion_nll_step(acc, x.float(), y.float(), z.float(), 1.0, 1e-30)
    assert torch.isfinite(out).all()


def test_gradient_for_abar_is_refused_not_zero():
    x, y, z = (t.requires_grad_() for t in inputs((3, 2), torch.float64, "cpu", 3))
    acc = torch.zeros(3, dtype=torch.float64)
    abar = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable in abar_t"):
        ops.diffusion_nll_step(acc, x, y, z, abar, 0.5).sum().backward()
    with pytest.raises(RuntimeError, match="not differentiable in abar_prev"):
        ops.ddim_step(x, y, 0.3, abar, 0.2, z).sum().backward()
    # without a gradient for abar, the same call is fine
    ops.diffusion_nll_step(acc, x, y, z, abar.detach(), 0.5).sum().backward()
    assert x.grad is not None


def test_schedule_errors_print_values_exactly():
    """0.1 + 0.2 and 0.3 printed with 6 digits both read 0.3: the violated inequality looked satisfied."""
    x, y, z = inputs((3, 2), torch.float32, "cpu", 3)
    with pytest.raises(ValueError, match=r"abar_t = 0.30000000000000004 and abar_next = 0.30000000000000004"):
        ops.diffusion_nll_step(torch.zeros(3, dtype=torch.float64), x, y, z, 0.1 + 0.2, 0.1 + 0.2)


def test_scalar_arguments_are_not_truncated():
    x, y = inputs((3, 2), torch.float32, "cpu", 2)
    with pytest.raises(TypeError, match="abar_t must be a real number, got the bool True"):
        ops.ddim_step(x, y, True, 0.6)
    with pytest.raises(TypeError, match="h must be a real number"):
        ops.rk4_update(x, y, y, y, y, "0.1")
    ops.ddim_step(x, y, __import__("numpy").float64(0.4), 0.6)  # NumPy numbers are numbers
