"""Benchmark cases for the flow models (family ``glow``): one Glow step and a whole
multi-scale Glow training step, each as

* ``eager``: the same model (same parameters) with the coupling and the priors on
  the plain-PyTorch reference ``manifold_ext.reference.affine_coupling_reference``;
* ``compile``: that eager model under ``torch.compile``;
* ``ours``: the model on the fused ``manifold_ext::affine_coupling`` op.

Everything except the coupling (ActNorm, the LU 1x1 convolution, the coupling
network's convolutions) is the same PyTorch code in all three, so the ratios show
what the fused op buys inside a real model, not in isolation.
"""

from __future__ import annotations

import copy

import torch

from manifold_ext.benchmark.harness import BenchCase
from manifold_ext.flows import FlowStep, MultiScaleGlow, Squeeze, use_coupling_implementation
from manifold_ext.reference import affine_coupling_reference

# The Glow step: B = 64, 32x32 RGB, squeezed to 12 channels at 16x16.
STEP_SHAPE = (64, 3, 32, 32)
STEP_HIDDEN = 128
TINY_STEP_SHAPE = (2, 3, 8, 8)
# The whole-model training step: 3 levels x 4 steps, hidden 64, on the same batch.
MODEL_SHAPE = (64, 3, 32, 32)
MODEL_CONFIG = dict(levels=3, steps_per_level=4, hidden_channels=64)
TINY_MODEL_SHAPE = (2, 3, 8, 8)


class SqueezeThenStep(torch.nn.Module):
    """Squeeze (3 -> 12 channels) then one Glow step: ActNorm -> 1x1 conv -> coupling."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.squeeze = Squeeze(2)
        self.step = FlowStep(4 * channels, hidden)

    def forward(self, x):
        y, _ = self.squeeze(x)
        return self.step(y)


def _three_versions(model: torch.nn.Module, example: tuple):
    """(ours, eager, compiled eager) sharing one set of parameters' values; checks they agree."""
    model.eval()
    with torch.no_grad():  # move the zero-initialised last layers so the coupling does real work
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    eager = use_coupling_implementation(copy.deepcopy(model), affine_coupling_reference)
    compiled = torch.compile(eager, dynamic=False)
    with torch.no_grad():
        a, b = model(*example), eager(*example)
    for u, v in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-3)
    return model, eager, compiled


def _step_case(shape, hidden, device, backward: bool, label: str) -> BenchCase:
    def make():
        x = torch.randn(shape, device=device)
        model = SqueezeThenStep(shape[1], hidden).to(device)
        ours, eager, compiled = _three_versions(model, (x,))
        if not backward:

            def run(m):
                with torch.no_grad():
                    return m(x)
        else:
            xg = x.clone().requires_grad_(True)

            def run(m):
                y, logdet = m(xg)
                loss = y.square().mean() - logdet.mean()
                return torch.autograd.grad(loss, [xg, *m.parameters()])

        return {"eager": lambda: run(eager), "compile": lambda: run(compiled), "ours": lambda: run(ours)}

    return BenchCase(
        family="glow",
        name=f"{label} Glow step {'fwd+bwd' if backward else 'fwd'} (squeeze, ActNorm, 1x1 conv, coupling)",
        shape="x " + "x".join(map(str, shape)) + f" -> {4 * shape[1]}ch, hidden {hidden}",
        dtype="float32",
        make=make,
        note="model benchmark, no op target: the coupling network (3x3, 1x1, 3x3 convs) is the same PyTorch "
        "code in all three",
        has_target=False,
    )


def _training_case(shape, device, label: str, config: dict) -> BenchCase:
    def make():
        x = torch.rand(shape, device=device) - 0.5
        model = MultiScaleGlow(shape[1], **config, image_size=shape[2:]).to(device)
        model.train()
        with torch.no_grad():
            model.log_prob(x)  # ActNorm's data-dependent initialisation, before copying
        ours, eager, compiled_eager = _three_versions(model, (x,))
        for m in (ours, eager):
            m.train()
        optimisers = {id(m): torch.optim.Adam(m.parameters(), lr=1e-5) for m in (ours, eager)}
        compiled_log_prob = torch.compile(eager.log_prob, dynamic=False)

        def train_step(m, log_prob):
            loss = -log_prob(x).mean()
            optimiser = optimisers[id(m)]
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            return loss

        return {
            "eager": lambda: train_step(eager, eager.log_prob),
            "compile": lambda: train_step(eager, compiled_log_prob),
            "ours": lambda: train_step(ours, ours.log_prob),
        }

    levels, steps, hidden = config["levels"], config["steps_per_level"], config["hidden_channels"]
    return BenchCase(
        family="glow",
        name=f"{label} multi-scale Glow training step (log p, backward, Adam)",
        shape="x " + "x".join(map(str, shape)) + f", {levels} levels x {steps} steps, hidden {hidden}",
        dtype="float32",
        make=make,
        note="model benchmark, no op target: compile = torch.compile of the eager model's log_prob "
        "(forward+backward graph)",
        has_target=False,
    )


def cases(device: torch.device, quick: bool = False) -> list[BenchCase]:
    if quick:
        tiny_config = dict(levels=2, steps_per_level=1, hidden_channels=8)
        return [
            _step_case(TINY_STEP_SHAPE, 8, device, backward=False, label="tiny"),
            _step_case(TINY_STEP_SHAPE, 8, device, backward=True, label="tiny"),
            _training_case(TINY_MODEL_SHAPE, device, "tiny", tiny_config),
        ]
    return [
        _step_case(STEP_SHAPE, STEP_HIDDEN, device, backward=False, label="main"),
        _step_case(STEP_SHAPE, STEP_HIDDEN, device, backward=True, label="main"),
        _training_case(MODEL_SHAPE, device, "main", MODEL_CONFIG),
    ]
