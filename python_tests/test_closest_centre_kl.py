"""Closest-centre and nearest-centre Gaussian KL ops against their plain-PyTorch references."""

from __future__ import annotations

import math

import pytest
import torch
from op_contract.cases import CLOSEST_MODES

from manifold_ext.ops import closest_centre_kl, nearest_centre_kl
from manifold_ext.reference import closest_centre_kl_reference, nearest_centre_kl_reference

# [B, n]: batch 0 and 1, n = 0, 1, 2 (the paper's grid), odd sizes, 40 (CelebA
# attributes), rows longer than the CPU loops' 1024-element block.
SHAPES = [(1, 1), (1, 2), (7, 2), (5, 3), (33, 40), (0, 4), (3, 0), (2, 17), (3, 1500), (129, 5)]

MODES = list(CLOSEST_MODES)


def make_inputs(shape, mode, dtype=torch.float64, device="cpu", spread=3.0):
    batch, n = shape
    mu = torch.randn(shape, dtype=dtype, device=device) * spread
    logvar = torch.randn(shape, dtype=dtype, device=device) - 4.0
    kwargs = {}
    if mode in ("guided", "partial-dim"):
        kwargs["target"] = torch.randint(0, 2, shape, device=device).to(dtype)
    if mode == "partial-dim":
        kwargs["mask"] = torch.rand(n, device=device) > 0.5
    elif mode == "partial-elem":
        kwargs["target"] = torch.randn(shape, dtype=dtype, device=device)
        kwargs["mask"] = torch.rand(shape, device=device) > 0.3
    kwargs.update(CLOSEST_MODES[mode])
    return mu, logvar, kwargs


def tolerances(dtype, n):
    # The KL sums n terms of size up to ~ (mu - c)^2 / sigma0^2 = 256 * 9.
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-10 * max(n, 1))
    return dict(rtol=1e-5, atol=1e-4 * max(n, 1))


# ---------------------------------------------------------------------------
# Values and gradients against the reference
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_forward_matches_reference(device, shape, mode, dtype):
    mu, logvar, kwargs = make_inputs(shape, mode, dtype, device)
    kl, centre = closest_centre_kl(mu, logvar, **kwargs)
    kl_ref, centre_ref = closest_centre_kl_reference(mu, logvar, **kwargs)
    assert kl.shape == (shape[0],) and centre.shape == shape
    assert kl.dtype == dtype and centre.dtype == dtype
    assert torch.equal(centre, centre_ref)  # the same rounding, clipping and selection, bit for bit
    torch.testing.assert_close(kl, kl_ref, **tolerances(dtype, shape[1]))


@pytest.mark.parametrize("shape", [(1, 1), (7, 2), (33, 40), (0, 4), (3, 1500)], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_reference(device, shape, mode):
    mu, logvar, kwargs = make_inputs(shape, mode, torch.float64, device)
    grad_kl = torch.randn(shape[0], dtype=torch.float64, device=device)
    target = kwargs.pop("target", None)

    def grads(fn):
        inputs = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
        extra = {}
        if target is not None:
            inputs.append(target.clone().requires_grad_())
            extra["target"] = inputs[-1]
        kl, _ = fn(inputs[0], inputs[1], **kwargs, **extra)
        return torch.autograd.grad((kl * grad_kl).sum(), inputs)

    for ours, ref in zip(grads(closest_centre_kl), grads(closest_centre_kl_reference)):
        torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(device, mode):
    mu, logvar, kwargs = make_inputs((4, 5), mode, torch.float64, device)
    # Keep mu away from the half-way points where the chosen centre jumps, so
    # the finite differences see one smooth piece.
    grid_spacing = kwargs.get("spacing", 1.0)
    mu = (torch.round(mu / grid_spacing) + 0.6 * (torch.rand_like(mu) - 0.5)) * grid_spacing
    inputs = [mu.requires_grad_(), logvar.requires_grad_()]
    target = kwargs.pop("target", None)
    if target is not None:
        inputs.append(target.requires_grad_())

    def fn(*args):
        extra = {"target": args[2]} if len(args) > 2 else {}
        return closest_centre_kl(args[0], args[1], **kwargs, **extra)[0]

    assert torch.autograd.gradcheck(fn, tuple(inputs))


def test_centre_is_not_differentiable_and_only_kl_carries_gradient():
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    kl, centre = closest_centre_kl(mu, logvar)
    assert kl.requires_grad and not centre.requires_grad


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("sigma0", [1 / 16, 1 / 3, 0.7])
def test_kl_is_exactly_zero_on_a_centre_with_the_prior_variance(device, dtype, sigma0):
    centres = torch.randint(-2, 4, (65, 40), device=device).to(dtype)
    logvar = torch.full_like(centres, math.log(sigma0**2))
    kl, centre = closest_centre_kl(centres, logvar, sigma0=sigma0, low=-2, high=3)
    assert torch.equal(centre, centres)
    assert torch.equal(kl, torch.zeros_like(kl))
    kl_guided, _ = closest_centre_kl(centres, logvar, sigma0=sigma0, target=centres)
    assert torch.equal(kl_guided, torch.zeros_like(kl))
    # and it is positive as soon as either moves
    kl_moved, _ = closest_centre_kl(centres + 0.01, logvar, sigma0=sigma0)
    kl_wider, _ = closest_centre_kl(centres, logvar + 0.01, sigma0=sigma0)
    assert (kl_moved > 0).all() and (kl_wider > 0).all()


def test_rounding_ties_to_even_like_torch_round(device):
    mu = torch.tensor([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]], device=device)
    _, centre = closest_centre_kl(mu, torch.zeros_like(mu))
    assert torch.equal(centre, torch.round(mu))
    # KL is continuous at a tie: both neighbouring centres are equally far
    kl_tie, _ = closest_centre_kl(mu, torch.zeros_like(mu))
    kl_other, _ = closest_centre_kl(
        mu, torch.zeros_like(mu), target=torch.round(mu) + torch.where(torch.round(mu) < mu, 1.0, -1.0)
    )
    torch.testing.assert_close(kl_tie, kl_other)


def test_clipping_keeps_far_points_on_the_grid_edge(device):
    mu = torch.tensor([[-10.0, 10.0], [-2.4, 3.4], [0.2, 0.8]], device=device)
    _, centre = closest_centre_kl(mu, torch.zeros_like(mu), low=-2, high=3)
    assert centre.tolist() == [[-2.0, 3.0], [-2.0, 3.0], [0.0, 1.0]]
    _, centre = closest_centre_kl(mu, torch.zeros_like(mu), high=0.0)
    assert centre.tolist() == [[-10.0, 0.0], [-2.0, 0.0], [0.0, 0.0]]


def test_mask_ignores_target_where_false(device):
    mu = torch.tensor([[0.2, 1.7, -0.9]], device=device)
    target = torch.tensor([[float("nan"), 5.0, float("nan")]], device=device)
    mask = torch.tensor([False, True, False], device=device)
    kl, centre = closest_centre_kl(mu, torch.zeros_like(mu), target=target, mask=mask)
    assert centre.tolist() == [[0.0, 5.0, -1.0]]
    assert torch.isfinite(kl).all()


def test_nan_mu_gives_nan_kl_and_centre(device):
    mu = torch.tensor([[float("nan"), 0.0]], device=device)
    kl, centre = closest_centre_kl(mu, torch.zeros_like(mu), low=-2, high=3)
    assert torch.isnan(kl).all() and torch.isnan(centre[0, 0]) and centre[0, 1] == 0


def test_large_batch_matches_reference():
    mu, logvar, kwargs = make_inputs((65536, 40), "clipped", torch.float32)
    kl, centre = closest_centre_kl(mu, logvar, **kwargs)
    kl_ref, centre_ref = closest_centre_kl_reference(mu.double(), logvar.double(), **kwargs)
    assert torch.equal(centre, centre_ref.float())
    torch.testing.assert_close(kl.double(), kl_ref, rtol=1e-5, atol=1e-2)


# ---------------------------------------------------------------------------
# nearest_centre_kl
# ---------------------------------------------------------------------------
NEAREST_SHAPES = [(1, 1, 1), (7, 2, 36), (33, 40, 5), (0, 3, 4), (5, 3, 1), (100, 17, 1024), (3, 1500, 9), (4, 0, 3)]


@pytest.mark.parametrize("batch,n,num_centres", NEAREST_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_nearest_matches_reference(device, batch, n, num_centres, dtype):
    mu = torch.randn(batch, n, dtype=dtype, device=device) * 2
    logvar = torch.randn(batch, n, dtype=dtype, device=device) - 4
    centres = torch.randn(num_centres, n, dtype=dtype, device=device) * 2
    kl, index = nearest_centre_kl(mu, logvar, centres, 0.25)
    kl_ref, index_ref = nearest_centre_kl_reference(mu, logvar, centres, 0.25)
    assert index.dtype == torch.int64 and index.shape == (batch,)
    # The reference's cdist uses |mu|^2 - 2 mu.c + |c|^2 for large sizes: it may
    # pick another centre only on a near-tie. Check the exact distances instead.
    exact = ((mu.double()[:, None] - centres.double()[None]) ** 2).sum(-1)
    best = exact.min(1).values
    chosen = exact.gather(1, index[:, None])[:, 0]
    torch.testing.assert_close(chosen, best, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    agree = index == index_ref
    assert agree.float().mean() >= 0.99 if batch else True
    torch.testing.assert_close(kl[agree], kl_ref[agree], **tolerances(dtype, n))


def test_nearest_picks_the_first_centre_on_ties(device):
    centres = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], device=device)
    mu = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], device=device)
    _, index = nearest_centre_kl(mu, torch.zeros_like(mu), centres)
    assert index.tolist() == [0, 0, 0]
    # many equal centres: the first of them, whichever SIMD lane holds it
    centres = torch.zeros(300, 3, device=device)
    centres[:57] = 9.0
    _, index = nearest_centre_kl(torch.zeros(5, 3, device=device), torch.zeros(5, 3, device=device), centres)
    assert index.tolist() == [57] * 5


def test_nearest_on_the_grid_equals_closest_centre(device):
    """The 6x6 grid as an explicit centre set gives the same KL as rounding and clipping."""
    axis = torch.arange(-2.0, 4.0, device=device)
    centres = torch.cartesian_prod(axis, axis)  # [36, 2]
    mu = torch.rand(500, 2, device=device) * 7 - 3
    logvar = torch.randn(500, 2, device=device) - 3
    kl_grid, centre = closest_centre_kl(mu, logvar, sigma0=1 / 3, low=-2, high=3)
    kl_set, index = nearest_centre_kl(mu, logvar, centres, 1 / 3)
    assert torch.equal(centres[index], centre)
    torch.testing.assert_close(kl_set, kl_grid)


@pytest.mark.parametrize("batch,n,num_centres", [(7, 2, 36), (33, 40, 5), (3, 1500, 9), (0, 3, 4)], ids=str)
def test_nearest_gradients_match_reference(device, batch, n, num_centres):
    mu = torch.randn(batch, n, dtype=torch.float64, device=device)
    logvar = torch.randn(batch, n, dtype=torch.float64, device=device) - 2
    centres = torch.randn(num_centres, n, dtype=torch.float64, device=device)
    grad_kl = torch.randn(batch, dtype=torch.float64, device=device)

    def grads(fn):
        inputs = [t.clone().requires_grad_() for t in (mu, logvar, centres)]
        kl, _ = fn(*inputs, 0.3)
        return torch.autograd.grad((kl * grad_kl).sum(), inputs)

    for ours, ref in zip(grads(nearest_centre_kl), grads(nearest_centre_kl_reference)):
        torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-11)


def test_nearest_gradcheck_float64(device):
    centres = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 1.0], [-2.0, 1.0, 0.0]], dtype=torch.float64, device=device)
    mu = centres[torch.tensor([0, 1, 2, 1])] + 0.3 * torch.randn(4, 3, dtype=torch.float64, device=device)
    logvar = torch.randn(4, 3, dtype=torch.float64, device=device)
    inputs = (mu.requires_grad_(), logvar.requires_grad_(), centres.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda m, lv, c: nearest_centre_kl(m, lv, c, 0.5)[0], inputs)


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the problem
# ---------------------------------------------------------------------------
def test_shape_mismatch():
    with pytest.raises(RuntimeError, match=r"logvar must have the shape of mu \[4, 3\], got \[4, 2\]"):
        closest_centre_kl(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(RuntimeError, match=r"mu must have shape \[B, n\], got shape \[4, 3, 2\]"):
        closest_centre_kl(torch.randn(4, 3, 2), torch.randn(4, 3, 2))
    with pytest.raises(RuntimeError, match=r"target must have the shape of mu \[4, 3\], got \[4, 2\]"):
        closest_centre_kl(torch.randn(4, 3), torch.randn(4, 3), target=torch.randn(4, 2))


@pytest.mark.parametrize("sigma0", [-0.1, 0.0, float("inf"), float("nan")])
def test_bad_sigma0(sigma0):
    with pytest.raises(ValueError, match="sigma0 must be a finite number > 0"):
        closest_centre_kl(torch.randn(4, 3), torch.randn(4, 3), sigma0=sigma0)
    with pytest.raises(ValueError, match="sigma0 must be a finite number > 0"):
        nearest_centre_kl(torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3), sigma0)


def test_bad_grid():
    mu = torch.randn(4, 3)
    with pytest.raises(ValueError, match="spacing must be a finite number > 0, got -1"):
        closest_centre_kl(mu, mu, spacing=-1.0)
    with pytest.raises(ValueError, match="low must be <= high, got low = 3 and high = -2"):
        closest_centre_kl(mu, mu, low=3, high=-2)


def test_bad_mask():
    mu, target = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"mask must have shape \[n\] = \[3\] or \[B, n\] = \[4, 3\], got \[4\]"):
        closest_centre_kl(mu, mu, target=target, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="mask must be a bool tensor, got Float"):
        closest_centre_kl(mu, mu, target=target, mask=torch.ones(3))
    with pytest.raises(ValueError, match="pass target as well"):
        closest_centre_kl(mu, mu, mask=torch.ones(3, dtype=torch.bool))


def test_dtype_problems():
    with pytest.raises(RuntimeError, match="same dtype, got mu Float and logvar Double"):
        closest_centre_kl(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="CPU kernel supports float32 and float64, got Half"):
        closest_centre_kl(torch.randn(4, 3).half(), torch.randn(4, 3).half())
    with pytest.raises(RuntimeError, match="expected a floating-point dtype"):
        closest_centre_kl(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"target must have the dtype of mu \(Float\), got Double"):
        closest_centre_kl(torch.randn(4, 3), torch.randn(4, 3), target=torch.randn(4, 3, dtype=torch.float64))


def test_bad_centres():
    mu = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"centres must have shape \[K, n\] with n = 3 .*got \[5, 2\]"):
        nearest_centre_kl(mu, mu, torch.randn(5, 2))
    with pytest.raises(RuntimeError, match=r"at least one centre \(K >= 1\)"):
        nearest_centre_kl(mu, mu, torch.randn(0, 3))
    with pytest.raises(RuntimeError, match=r"centres must have the dtype of mu \(Float\), got Double"):
        nearest_centre_kl(mu, mu, torch.randn(5, 3, dtype=torch.float64))


def test_backward_bad_inputs():
    mu = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"grad_kl must have shape \[B\] = \[4\], got \[3\]"):
        torch.ops.manifold_ext.closest_centre_kl_backward(torch.randn(3), mu, mu, mu, 0.25)
    with pytest.raises(RuntimeError, match="index 7 of sample 0 is out of range for 5 centres"):
        torch.ops.manifold_ext.nearest_centre_kl_backward(
            torch.randn(4), mu, mu, torch.randn(5, 3), torch.tensor([7, 0, 0, 0]), 0.25
        )


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_device_mismatch():
    with pytest.raises(RuntimeError, match="same device"):
        closest_centre_kl(torch.randn(4, 3), torch.randn(4, 3, device="cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(65536, 40), (257, 2), (3, 1500), (5, 17)], ids=str)
def test_cuda_matches_cpu(mode, shape):
    mu, logvar, kwargs = make_inputs(shape, mode, torch.float64)
    kl_cpu, centre_cpu = closest_centre_kl(mu, logvar, **kwargs)
    cuda_kwargs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    kl_gpu, centre_gpu = closest_centre_kl(mu.cuda(), logvar.cuda(), **cuda_kwargs)
    assert torch.equal(centre_gpu.cpu(), centre_cpu)
    torch.testing.assert_close(kl_gpu.cpu(), kl_cpu, rtol=1e-12, atol=1e-9)
    grad_kl = torch.randn(shape[0], dtype=torch.float64)
    g_cpu = torch.ops.manifold_ext.closest_centre_kl_backward(grad_kl, mu, logvar, centre_cpu, 1 / 16)
    g_gpu = torch.ops.manifold_ext.closest_centre_kl_backward(
        grad_kl.cuda(), mu.cuda(), logvar.cuda(), centre_cpu.cuda(), 1 / 16
    )
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("batch,n,num_centres", [(4096, 40, 1024), (1000, 2, 36), (7, 300, 3)], ids=str)
def test_cuda_nearest_matches_cpu(batch, n, num_centres):
    mu = torch.randn(batch, n, dtype=torch.float64)
    logvar = torch.randn(batch, n, dtype=torch.float64)
    centres = torch.randn(num_centres, n, dtype=torch.float64)
    kl_cpu, index_cpu = nearest_centre_kl(mu, logvar, centres)
    kl_gpu, index_gpu = nearest_centre_kl(mu.cuda(), logvar.cuda(), centres.cuda())
    assert torch.equal(index_gpu.cpu(), index_cpu)
    torch.testing.assert_close(kl_gpu.cpu(), kl_cpu, rtol=1e-12, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_half_precision_accumulates_in_float32(dtype):
    mu, logvar, kwargs = make_inputs((512, 40), "clipped", torch.float32, "cuda", spread=1.0)
    kl, centre = closest_centre_kl(mu.to(dtype), logvar.to(dtype), **kwargs)
    assert kl.dtype == torch.float32 and centre.dtype == dtype
    kl_ref, _ = closest_centre_kl_reference(mu.to(dtype).float(), logvar.to(dtype).float(), **kwargs)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-4, atol=1e-2)


# ---------------------------------------------------------------------------
# Issue 13 item 7 (NaN rule) and issue 20 item 6 (defaults and their scale)
# ---------------------------------------------------------------------------
def test_nearest_never_skips_a_nan_centre(device):
    """A NaN centre was skipped and a plausible finite KL returned; now it is chosen (as torch.argmin) and the KL
    is NaN, like the plain-PyTorch reference."""
    mu = torch.zeros(2, 2, device=device)
    centres = torch.tensor([[5.0, 5.0], [float("nan"), 0.0], [0.0, 0.0], [float("nan"), 1.0]], device=device)
    kl, index = nearest_centre_kl(mu, torch.zeros_like(mu), centres)
    assert index.tolist() == [1, 1] and torch.isnan(kl).all()
    kl_ref, index_ref = nearest_centre_kl_reference(mu, torch.zeros_like(mu), centres)
    assert torch.equal(index, index_ref) and torch.isnan(kl_ref).all()
    # a NaN in mu: every distance is NaN, the first centre is taken
    kl, index = nearest_centre_kl(torch.tensor([[float("nan"), 0.0]], device=device), mu[:1], centres[2:])
    assert index.tolist() == [0] and torch.isnan(kl).all()
    # an infinite mu never picks a padding column of the search (inf - inf)
    kl, index = nearest_centre_kl(torch.full((1, 2), float("inf"), device=device), mu[:1], centres[[0, 2]])
    assert index.tolist() == [0] and kl.item() == float("inf")


@pytest.mark.parametrize("dtype,sigma0", [(torch.float32, 1e-25), (torch.float64, 1e-160)], ids=["f32", "f64"])
def test_sigma0_too_small_for_the_dtype_is_refused(dtype, sigma0):
    """On its centre the KL was 0 * inf = NaN when 1/sigma0^2 overflowed."""
    mu = torch.zeros(2, 3, dtype=dtype)
    logvar = torch.full_like(mu, 2 * math.log(sigma0))
    with pytest.raises(ValueError, match=rf"sigma0 = {sigma0!r} is too small: the kernels multiply by 1/sigma0\^2"):
        closest_centre_kl(mu, logvar, sigma0=sigma0)
    with pytest.raises(ValueError, match="is too small"):
        nearest_centre_kl(mu, logvar, mu[:1], sigma0)
    with pytest.raises(ValueError, match="is too small"):  # the fake kernel says the same at trace time
        closest_centre_kl(mu.to("meta"), logvar.to("meta"), sigma0=sigma0)
    small = 1e-19 if dtype == torch.float32 else 1e-150  # still representable: the exact 0
    kl, _ = closest_centre_kl(mu, torch.full_like(mu, 2 * math.log(small)), sigma0=small)
    assert torch.equal(kl, torch.zeros_like(kl))


def test_default_sigma0_and_its_scale():
    """Documented: sigma0 = 1/16 (Eq. 27) costs a unit-variance posterior on a centre 124.7 nats per dimension;
    GridVAE's sigma = 1/3 (Eq. 24) costs 2.90."""
    from manifold_ext.ops.closest_centre_kl import DEFAULT_SIGMA0, GRID_PRIOR_SIGMA

    assert DEFAULT_SIGMA0 == 1 / 16 and GRID_PRIOR_SIGMA == 1 / 3
    posterior = torch.zeros(1, 2, dtype=torch.float64)  # N(0, I) on the centre 0
    kl, _ = closest_centre_kl(posterior, posterior)
    assert kl.item() == pytest.approx(249.45, abs=0.01)
    kl, _ = closest_centre_kl(posterior, posterior, sigma0=GRID_PRIOR_SIGMA)
    assert kl.item() / 2 == pytest.approx(2.90, abs=0.01)


def test_grid_vae_passes_its_prior_sigma_to_the_op():
    """The model's default agrees with its prior (sigma = 1/3), not with the op's Eq. 27 default."""
    from manifold_ext.ops.closest_centre_kl import GRID_PRIOR_SIGMA
    from manifold_ext.vae import GridPrior, GridVAE

    assert GridPrior().sigma == GRID_PRIOR_SIGMA
    model = GridVAE()
    assert model.sigma0 == model.prior.sigma == GRID_PRIOR_SIGMA


def _nan_centre_inputs():
    """A NaN in centre 2 and a NaN in sample 1: by the NaN rule (as torch.argmin) a NaN distance counts as nearest,
    so every sample picks its first centre with a NaN distance: centre 2, and centre 0 for sample 1."""
    generator = torch.Generator().manual_seed(3)
    mu = torch.randn(6, 3, generator=generator)
    mu[1, 0] = float("nan")
    centres = torch.randn(5, 3, generator=generator)
    centres[2, 1] = float("nan")
    return mu, torch.zeros_like(mu), centres


def test_nearest_centre_nan_centre_is_chosen_on_cpu():
    mu, logvar, centres = _nan_centre_inputs()
    kl, index = nearest_centre_kl(mu, logvar, centres)
    assert index.tolist() == [2, 0, 2, 2, 2, 2]
    assert torch.isnan(kl).all()
    assert torch.equal(index, torch.argmin(((mu[:, None] - centres[None]) ** 2).sum(-1), dim=1))


@pytest.mark.cuda
def test_nearest_centre_nan_rule_cuda_matches_cpu():
    """The CUDA search applies the shared is_nearer rule too (it once compared with `<`, skipping NaN centres)."""
    mu, logvar, centres = _nan_centre_inputs()
    kl_cpu, index_cpu = nearest_centre_kl(mu, logvar, centres)
    kl_cuda, index_cuda = nearest_centre_kl(mu.cuda(), logvar.cuda(), centres.cuda())
    assert torch.equal(index_cuda.cpu(), index_cpu)
    torch.testing.assert_close(kl_cuda.cpu(), kl_cpu, equal_nan=True)
