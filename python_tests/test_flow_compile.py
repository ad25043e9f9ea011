"""Every flow module trains under ``torch.compile(..., fullgraph=True)`` (issue 20 item 2).

ActNorm's data-dependent first-batch initialisation used to sit inside the traced
forward ("Could not guard on data-dependent expression" for GlowStep(4, 32,
spatial_dims=0) in train mode). It now runs eagerly through ``data_initialize`` /
``ActNorm.initialize``; the forward only reads a Python flag. Each case below
initialises eagerly, then runs the same training steps on an eager copy and on a
``fullgraph=True`` compiled copy of the loss (the module's forward, ``log_prob`` or
``standardize`` traced as one graph) and checks that losses and parameters agree.
The ``aot_eager`` backend traces the whole graph (dynamo + AOT autograd, the fused
ops' fake kernels and autograd formulas included) without C++ code generation; one
case also runs Inductor.
"""

from __future__ import annotations

import copy

import pytest
import torch

from manifold_ext.flows import (
    ActNorm,
    AffineCoupling,
    ConditionalAffineCoupling,
    FlowSequential,
    FlowStep,
    GaussianPrior,
    GlowStep,
    HierarchicalFlow,
    InvertibleConv1x1,
    MultiScaleGlow,
    Squeeze,
    StandardNormalFlow,
    data_initialize,
)

BATCH = 16


def _gaussian_nll(out) -> torch.Tensor:
    """The flow's maximum-likelihood loss from (y, logdet)."""
    y, logdet = out
    return (0.5 * y.flatten(1).square().sum(1) - logdet).mean()


class _Trainable(torch.nn.Module):
    """A parameter-free layer (Squeeze) gets a learnable input scale so there is something to train."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.layer(x * self.scale)


def _cases():
    """(name, module, call(module, inputs) -> loss, inputs)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    image, vector, cond = rand(BATCH, 4, 8, 8), rand(BATCH, 4), rand(BATCH, 1, 4, 4)

    def forward(m, x):
        return _gaussian_nll(m(x))

    def forward_cond(m, x):
        return _gaussian_nll(m(x, cond))

    def log_prob(m, x):
        return -m.log_prob(x).mean()

    def standardize(m, x):
        return _gaussian_nll(m.standardize(x, x))

    def hierarchical(m, x):
        return m.autoencoder_loss(x) + m.flow_loss(x)

    return [
        ("ActNorm-vector", ActNorm(4), forward, vector),
        ("ActNorm-image", ActNorm(4), forward, image),
        ("InvertibleConv1x1", InvertibleConv1x1(4), forward, image),
        ("AffineCoupling-vector", AffineCoupling(4, 16, spatial_dims=0), forward, vector),
        ("AffineCoupling-image", AffineCoupling(4, 16), forward, image),
        ("GlowStep-vector", GlowStep(4, 32, spatial_dims=0), forward, vector),
        ("GlowStep-image", GlowStep(4, 16), forward, image),
        ("FlowSequential", FlowSequential(*[GlowStep(4, 16, spatial_dims=0) for _ in range(3)]), forward, vector),
        ("StandardNormalFlow", StandardNormalFlow(FlowSequential(GlowStep(4, 16, spatial_dims=0))), log_prob, vector),
        ("Squeeze", _Trainable(Squeeze()), forward, image),
        ("ConditionalAffineCoupling", ConditionalAffineCoupling(4, 1, 16), forward_cond, image),
        ("FlowStep-conditional", FlowStep(4, 16, condition_channels=1), forward_cond, image),
        ("GaussianPrior-context", GaussianPrior(4, context_channels=4), standardize, image),
        (
            "MultiScaleGlow",
            MultiScaleGlow(1, levels=2, steps_per_level=2, hidden_channels=16, image_size=(8, 8)),
            log_prob,
            rand(BATCH, 1, 8, 8),
        ),
        (
            "MultiScaleGlow-conditional",
            MultiScaleGlow(1, levels=2, steps_per_level=1, hidden_channels=16, condition_channels=1, image_size=(8, 8)),
            lambda m, x: -m.log_prob(x, cond).mean(),
            rand(BATCH, 1, 8, 8),
        ),
        (
            "HierarchicalFlow",
            HierarchicalFlow(image_size=8, levels=2, latent_channels=2, ae_hidden=8, flow_steps=1, flow_hidden=8),
            hierarchical,
            rand(BATCH, 1, 8, 8),
        ),
    ]


CASES = _cases()


def _initialise(module, call, x):
    """Eager, gradient-free pass in train mode: every ActNorm takes its first-batch statistics."""
    module.train()
    with torch.no_grad():
        call(module, x)
    assert all(m.is_initialized for m in module.modules() if isinstance(m, ActNorm))


def _train(module, call, x, steps=2):
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = call(module, x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.parametrize("name, module, call, x", CASES, ids=[case[0] for case in CASES])
def test_fullgraph_compiled_training_step_matches_eager(name, module, call, x):
    torch.manual_seed(0)
    _initialise(module, call, x)
    eager, compiled_copy = module, copy.deepcopy(module)
    torch._dynamo.reset()
    # the whole loss (the module's forward / log_prob / standardize inlined) as one graph
    compiled_loss = torch.compile(call, fullgraph=True, backend="aot_eager", dynamic=False)
    eager_losses = _train(eager, call, x)
    compiled_losses = _train(compiled_copy, compiled_loss, x)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-5)
    for (key, a), b in zip(eager.state_dict().items(), compiled_copy.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name}: {key} differs after training")


def test_glow_step_vector_compiles_fullgraph_with_inductor():
    """The exact case of issue 20: GlowStep(4, 32, spatial_dims=0) in train mode, Inductor, fullgraph."""
    torch.manual_seed(0)
    step = GlowStep(4, 32, spatial_dims=0)
    x = torch.randn(64, 4)
    assert data_initialize(step, x) == 1
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    optimiser = torch.optim.Adam(step.parameters(), lr=1e-3)
    for _ in range(2):
        loss = _gaussian_nll(compiled(x))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    assert torch.isfinite(loss)


def test_uninitialised_actnorm_under_fullgraph_names_the_fix():
    step = GlowStep(4, 32, spatial_dims=0).train()
    torch._dynamo.reset()
    with pytest.raises(Exception, match="data_initialize"):
        torch.compile(step, fullgraph=True, backend="aot_eager")(torch.randn(8, 4))
    assert not step.layers[0].is_initialized


def test_uninitialised_actnorm_without_fullgraph_initialises_eagerly():
    """Without fullgraph the initialisation is a graph break that runs eagerly, as before."""
    torch.manual_seed(0)
    layer = ActNorm(3).train()
    x = 2.0 + 3.0 * torch.randn(256, 3)
    torch._dynamo.reset()
    y, _ = torch.compile(layer, backend="aot_eager")(x)
    assert layer.is_initialized
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_data_initialize_counts_layers_and_restores_mode():
    model = FlowSequential(GlowStep(4, 8, spatial_dims=0), GlowStep(4, 8, spatial_dims=0)).eval()
    x = torch.randn(32, 4)
    assert data_initialize(model, x) == 2
    assert not model.training
    assert data_initialize(model, x) == 0  # already initialised: nothing changes
    flow = StandardNormalFlow(FlowSequential(GlowStep(4, 8, spatial_dims=0)))
    assert data_initialize(flow, x, method="log_prob") == 1


def test_actnorm_initialised_state_survives_state_dict_round_trip():
    source = ActNorm(3)
    source.initialize(torch.randn(64, 3))
    target = ActNorm(3).train()
    assert not target.is_initialized
    target.load_state_dict(source.state_dict())
    assert target.is_initialized
    before = target.bias.detach().clone()
    target(torch.randn(8, 3) * 10)  # an initialised layer keeps its loaded statistics
    torch.testing.assert_close(target.bias.detach(), before)


def test_actnorm_initialize_rejects_wrong_channels_and_empty_batches():
    layer = ActNorm(3)
    with pytest.raises(ValueError, match=r"expected input of shape \[B, 3"):
        layer.initialize(torch.randn(4, 2))
    with pytest.raises(ValueError, match="non-empty batch"):
        layer.initialize(torch.randn(0, 3))
