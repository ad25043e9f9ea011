"""Multi-scale Glow: exact inverses, log-determinants against autograd Jacobians,
normalisation of log p, conditional coupling, bad input, training on digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from manifold_ext.flows import (
    ConditionalAffineCoupling,
    FlowStep,
    GaussianPrior,
    MultiScaleGlow,
    Squeeze,
    bits_per_dim,
    dequantize,
    standard_normal_log_prob,
)

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(module: nn.Module, scale: float = 0.3) -> nn.Module:
    """Move parameters off their identity-like initial values (zero-initialised
    convolutions, unit priors) so the tests see real, non-trivial maps."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def _flat_latents(latents) -> torch.Tensor:
    return torch.cat([z.flatten(1) for z in latents], dim=1)


def _slogdet_of(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the square Jacobian of a per-sample map fn: R^n -> R^n, per sample of x."""
    out = []
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda xb: fn(xb.unsqueeze(0)).flatten(), x[b])
        n = x[b].numel()
        sign, logabsdet = torch.linalg.slogdet(jac.reshape(n, n))
        assert sign != 0
        out.append(logabsdet)
    return torch.stack(out)


def make_glow(**kwargs) -> MultiScaleGlow:
    defaults = dict(in_channels=1, levels=2, steps_per_level=2, hidden_channels=8)
    defaults.update(kwargs)
    return _randomise(MultiScaleGlow(**defaults), 0.15).double().eval()


class PointwiseNet(nn.Module):
    """A user-supplied coupling network (1x1 convolutions only): any module works."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, 16, 1), nn.Tanh(), nn.Conv2d(16, c_out, 1))

    def forward(self, x):
        return self.body(x)


GLOW_VARIANTS = {
    "glow-2-levels": dict(),
    "glow-3-levels": dict(levels=3),
    "glow-exp-scale": dict(scale="exp"),
    "glow-softclamp": dict(scale="softclamp"),
    "glow-custom-net": dict(coupling_net=PointwiseNet),
    "glow-rgb": dict(in_channels=3),
    "glow-conditional": dict(condition_channels=2),
}


def _inputs(variant: dict, batch=3, size=8):
    x = torch.randn(batch, variant.get("in_channels", 1), size, size, dtype=torch.float64)
    cond = None
    if variant.get("condition_channels"):
        cond = torch.randn(batch, variant["condition_channels"], size // 2, size // 2, dtype=torch.float64)
    return x, cond


# ---------------------------------------------------------------------------
# Invertibility
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GLOW_VARIANTS))
def test_whole_model_inverse_is_exact(name):
    variant = GLOW_VARIANTS[name]
    model = make_glow(**variant)
    x, cond = _inputs(variant)
    latents, logdet = model(x, cond)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes(8, 8)
    assert sum(z[0].numel() for z in latents) == x[0].numel()  # a bijection of R^D
    torch.testing.assert_close(model.inverse(latents, cond), x, rtol=1e-10, atol=1e-10)
    # and the other way round: latents -> image -> the same latents
    fresh = [z + 0.1 * torch.randn_like(z) for z in latents]  # near the data: random maps can blow up far out
    again, _ = model(model.inverse(fresh, cond), cond)
    for a, b in zip(again, fresh):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _layer_cases():
    cond = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    return {
        "squeeze": (Squeeze(), None, (2, 3, 4, 6)),
        "conditional-coupling": (ConditionalAffineCoupling(4, 1, 8), cond, (2, 4, 4, 4)),
        "conditional-coupling-exp-eq16": (ConditionalAffineCoupling(4, 1, 8, scale="exp"), cond, (2, 4, 4, 4)),
        "flowstep": (FlowStep(4, 8), None, (2, 4, 3, 3)),
        "flowstep-conditional": (FlowStep(4, 8, condition_channels=1), cond, (2, 4, 4, 4)),
    }


@pytest.mark.parametrize("name", list(_layer_cases()))
def test_layer_inverse_is_exact(name):
    layer, cond, shape = _layer_cases()[name]
    layer = _randomise(layer).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    args = (cond,) if cond is not None else ()
    y, logdet = layer(x, *args)
    x_back, logdet_inv = layer.inverse(y, *args)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=1e-10, atol=1e-10)


def test_gaussian_prior_standardises_exactly():
    prior = _randomise(GaussianPrior(3, context_channels=2)).double()
    z = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    context = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    eps, logdet = prior.standardize(z, context)
    h = prior.mean_and_log_scale_params(z, context)
    mu, log_sigma = h[:, :3], h[:, 3:]
    torch.testing.assert_close(eps, (z - mu) / log_sigma.exp(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, -log_sigma.flatten(1).sum(1), rtol=1e-12, atol=1e-12)
    # log N(z; mu, sigma^2) = log N(eps; 0, I) - sum log sigma
    expected = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(standard_normal_log_prob(eps) + logdet, expected, rtol=1e-12, atol=1e-12)
    z_back, _ = prior.destandardize(eps, context)
    torch.testing.assert_close(z_back, z, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Log-determinants against autograd Jacobians
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(_layer_cases()))
def test_layer_logdet_matches_autograd_jacobian(name):
    layer, cond, _ = _layer_cases()[name]
    layer = _randomise(layer).double().eval()
    shape = (2, 4, 2, 2) if name != "squeeze" else (2, 1, 2, 4)
    x = torch.randn(shape, dtype=torch.float64)
    if cond is not None:
        cond = cond[:1]  # one condition, shared by the per-sample Jacobians below
    args = (cond,) if cond is not None else ()
    _, logdet = layer(x, *(a.expand(2, -1, -1, -1) for a in args))
    torch.testing.assert_close(logdet, _slogdet_of(lambda xb: layer(xb, *args)[0], x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["glow-2-levels", "glow-exp-scale", "glow-custom-net", "glow-conditional"])
def test_whole_model_log_prob_is_change_of_variables(name):
    """log p(x) = log N(eps(x); 0, I) + log|det d eps / dx| with the Jacobian from autograd."""
    variant = GLOW_VARIANTS[name]
    model = make_glow(**variant)
    x, cond = _inputs(variant, batch=2, size=4)
    if cond is not None:
        cond = cond[:1].expand(2, -1, -1, -1)
    log_p = model.log_prob(x, cond)
    cond1 = None if cond is None else cond[:1]
    logabsdet = _slogdet_of(lambda xb: _flat_latents(model(xb, cond1)[0]), x)
    eps = _flat_latents(model(x, cond)[0])
    torch.testing.assert_close(log_p, standard_normal_log_prob(eps) + logabsdet, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------
# log p normalises
# ---------------------------------------------------------------------------


def _grid(dims: int, points: int, half_width: float):
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    cell = (axis[1] - axis[0]).item() ** dims
    mesh = torch.stack(torch.meshgrid(*([axis] * dims), indexing="ij"), -1).reshape(-1, dims)
    return mesh, cell


def _pointwise_net(c_in: int, c_out: int) -> nn.Module:
    """A coupling network of 1x1 convolutions (an MLP per pixel): the natural choice on
    1x1 images, and much faster there than 3x3 convolutions."""
    last = nn.Conv2d(32, c_out, 1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(c_in, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(), last)


def _train_briefly(model, sample_batch, steps: int, lr: float = 3e-3):
    """Fit ``model`` for a few steps by maximum likelihood; ``sample_batch()`` -> (x, cond)."""
    model.train()
    with torch.no_grad():
        model.log_prob(*sample_batch(1024))  # ActNorm's data-dependent initialisation
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = -model.log_prob(*sample_batch(256)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.double().eval()


def test_log_p_integrates_to_one_on_a_2d_toy_for_each_condition():
    """A 2-D Glow (two channels on a 1x1 image, no squeeze) conditioned on a scalar c, trained
    on two moons shifted and scaled by c: exp(log p(x | c)) integrates to 1 over a dense grid
    for every condition, seen in training or not."""
    from sklearn.datasets import make_moons

    moons = torch.tensor(make_moons(8192, noise=0.1, random_state=0)[0], dtype=torch.float32)

    def batch(n):
        c = torch.randint(-1, 3, (n, 1)).float()
        x = moons[torch.randint(0, len(moons), (n,))] * (1 + 0.3 * c) + c
        return x.view(n, 2, 1, 1), c.view(n, 1, 1, 1)

    model = _train_briefly(
        MultiScaleGlow(
            2, levels=1, steps_per_level=4, squeeze=False, condition_channels=1, coupling_net=_pointwise_net
        ),
        batch,
        100,
    )
    mesh, cell = _grid(2, 241, 8.0)
    x = mesh.view(-1, 2, 1, 1)
    for c in (-1.0, 0.0, 0.5, 2.0):
        cond = torch.full((len(x), 1, 1, 1), c, dtype=torch.float64)
        with torch.no_grad():
            mass = (model.log_prob(x, cond).exp().sum() * cell).item()
        assert abs(mass - 1.0) < 5e-3, (c, mass)


def test_log_p_integrates_to_one_on_2x2_images():
    """One squeezing level on 1x2x2 images (4 dimensions), trained on a two-component
    image mixture: a 4-D grid integral of exp(log p) is ~1."""
    pattern = torch.tensor([1.0, -1.0, 0.5, 0.0]).view(1, 1, 2, 2)

    def batch(n):
        sign = torch.randint(0, 2, (n, 1, 1, 1)).float() * 2 - 1
        return (sign * pattern + 0.4 * torch.randn(n, 1, 2, 2),)

    model = _train_briefly(MultiScaleGlow(1, levels=1, steps_per_level=3, coupling_net=_pointwise_net), batch, 80)
    mesh, cell = _grid(4, 25, 4.0)
    with torch.no_grad():
        mass = sum((model.log_prob(chunk.view(-1, 1, 2, 2)).exp().sum() * cell).item() for chunk in mesh.split(500_000))
    assert abs(mass - 1.0) < 2e-2, mass


def test_log_p_normalises_with_split_priors_importance_sampling():
    """Two levels with a learned split prior on 1x4x4 digits (16 dimensions, too many for a
    grid): the importance-sampling estimate E_q[p/q], q a broad Gaussian, is ~1."""
    from sklearn.datasets import load_digits

    digits = torch.nn.functional.avg_pool2d(torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1), 2)
    digits = digits / 16 - 0.5

    def batch(n):
        return (digits[torch.randint(0, len(digits), (n,))] + 0.05 * torch.randn(n, 1, 4, 4),)

    model = _train_briefly(MultiScaleGlow(1, levels=2, steps_per_level=2, hidden_channels=16), batch, 60)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # q: a Gaussian fitted to model samples, widened so that it covers p's mass.
        samples = model.sample(20000, image_size=(4, 4), generator=generator).flatten(1)
        q = torch.distributions.MultivariateNormal(samples.mean(0), 2.0 * torch.cov(samples.T))
        draws = q.sample((50_000,))
        weights = (model.log_prob(draws.view(-1, 1, 4, 4)) - q.log_prob(draws)).exp()
        mass = weights.mean().item()
        rel_stderr = (weights.std() / math.sqrt(len(draws)) / weights.mean()).item()
    assert rel_stderr < 0.03, rel_stderr
    assert abs(mass - 1.0) < 4 * rel_stderr + 0.01, (mass, rel_stderr)


# ---------------------------------------------------------------------------
# Sampling, dequantisation, bits per dimension
# ---------------------------------------------------------------------------


def test_sample_temperature():
    model = make_glow(image_size=(8, 8))
    zero = model.sample(3, temperature=0.0)
    torch.testing.assert_close(
        zero, model.inverse([torch.zeros(3, *s, dtype=torch.float64) for s in model.latent_shapes(8, 8)])
    )
    spread = [
        model.sample(400, temperature=t, generator=torch.Generator().manual_seed(1)).std().item() for t in (0.3, 1.0)
    ]
    assert spread[0] < spread[1]


def test_dequantize_stays_in_its_bin_and_bits_per_dim_formula():
    levels = torch.randint(0, 17, (64, 1, 8, 8))
    x = dequantize(levels, 17, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor((x + 0.5) * 17).long(), levels)
    assert torch.allclose(dequantize(levels, 17, noise=False), (levels + 0.5) / 17 - 0.5)
    model = make_glow()
    log_p = model.log_prob(x.double())
    expected = -(log_p - 64 * math.log(17)) / (64 * math.log(2))
    torch.testing.assert_close(model.bits_per_dim(x.double(), 17), expected)
    torch.testing.assert_close(bits_per_dim(log_p, 64, 17), expected)
    with pytest.raises(ValueError, match=r"dequantize: levels must lie in \[0, 16\]"):
        dequantize(torch.tensor([17]), 17)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_bad_input_names_the_problem():
    model = MultiScaleGlow(1, levels=2, steps_per_level=1, hidden_channels=4)
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 1, H, W\], got \(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"2 squeezing levels need H and W divisible by 4, got \(6, 8\)"):
        model(torch.randn(2, 1, 6, 8))
    with pytest.raises(ValueError, match=r"Squeeze: spatial size \(5, 4\) must be divisible by 2"):
        Squeeze()(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"Squeeze: expected an image batch \[B, C, H, W\]"):
        Squeeze()(torch.randn(4, 4))
    with pytest.raises(ValueError, match="built with condition_channels=0 but given a condition"):
        model(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="expected 2 latents, got 1"):
        model.inverse([torch.randn(2, 2, 4, 4)])
    with pytest.raises(ValueError, match="pass image_size"):
        model.sample(2)
    conditional = MultiScaleGlow(1, levels=1, steps_per_level=1, hidden_channels=4, condition_channels=3)
    with pytest.raises(ValueError, match="this model is conditional .* pass cond="):
        conditional(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"expected a condition of shape \[2, 3, h, w\], got \(2, 1, 2, 2\)"):
        conditional(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 2, 2))
    with pytest.raises(ValueError, match="a level needs at least 2 channels"):
        MultiScaleGlow(1, levels=1, squeeze=False)
    with pytest.raises(ValueError, match=r"coupling network returned shape \(2, 3, 2, 2\), expected \(2, 4, 2, 2\)"):
        MultiScaleGlow(1, levels=1, coupling_net=lambda c_in, c_out: nn.Conv2d(c_in, 3, 1))(torch.randn(2, 1, 4, 4))


# ---------------------------------------------------------------------------
# Training on the 8x8 digits lowers the NLL
# ---------------------------------------------------------------------------


def test_short_training_on_digits_lowers_bits_per_dim():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1)  # levels 0..16
    train, test = images[:1500], images[1500:]
    generator = torch.Generator().manual_seed(0)
    model = MultiScaleGlow(1, levels=2, steps_per_level=2, hidden_channels=16, image_size=(8, 8))
    model.train()
    with torch.no_grad():
        model.log_prob(dequantize(train[:512], 17, generator))  # ActNorm's data-dependent initialisation
    test_x = dequantize(test, 17, generator)

    def test_bpd():
        with torch.no_grad():
            return model.bits_per_dim(test_x, 17).mean().item()

    initial = test_bpd()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(80):
        batch = dequantize(train[torch.randint(0, len(train), (128,), generator=generator)], 17, generator)
        loss = model.bits_per_dim(batch, 17).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    final = test_bpd()
    assert math.isfinite(final)
    assert final < initial - 0.5, (initial, final)


def test_same_model_on_the_eager_reference_matches_the_op():
    """The benchmark's eager baseline: the same parameters with the plain-PyTorch coupling
    give the same log p and the same gradients as the fused op."""
    import copy

    from manifold_ext.flows import use_coupling_implementation
    from manifold_ext.reference import affine_coupling_reference

    ours = make_glow(condition_channels=1)
    eager = use_coupling_implementation(copy.deepcopy(ours), affine_coupling_reference)
    x, cond = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    log_p_ours, log_p_eager = ours.log_prob(x, cond), eager.log_prob(x, cond)
    torch.testing.assert_close(log_p_ours, log_p_eager, rtol=1e-12, atol=1e-10)
    log_p_ours.sum().backward()
    log_p_eager.sum().backward()
    for a, b in zip(ours.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9)
