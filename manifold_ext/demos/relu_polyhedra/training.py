"""Training the regression networks of Section 4.1 (paper 001), all seeds of one architecture at once.

The paper trains model (1) with PyTorch on 10,000 uniform points of [-1, 1]^2
(125,000 of [-1, 1]^3 in Section 4.1.3) until the validation loss stops
improving, and reports the validation MSE (Table 1). It gives no
initialisation, learning rate or batch size. The recipe here is chosen so that
no unit starts dead and every architecture reaches the paper's validation MSE:

* the target is standardised for training (mean 0, SD 1 over the training
  points) and the output layer is folded back afterwards, so the output bias
  effectively starts at the target's mean (-2 for the 3-D target: a net whose
  output starts at 0 spends its first steps shifting the output and kills units);
* weights start He-normal (variance 2 / fan-in), and each hidden unit's bias is
  set, layer by layer, to minus the median of its pre-activation over the
  training points: every unit starts active on half of the data, so every
  hyperplane starts inside the training area;
* Adam, 10,000 steps of mini-batches of 256, learning rate warmed up linearly
  over 300 steps to 3e-3 then cosine-decayed to 3e-5; the weights of the best
  validation MSE (checked every ``eval_every`` steps) are kept: early stopping
  on the validation loss. 10,000 steps bring 3 x 10 and 3 x 20 to the paper's
  MSE (6,000 left them ~30% above it); the warm-up keeps deep narrow nets alive.

All seeds of one architecture are trained as one stacked model (weights
``[S, out, in]``, batched matmuls): for nets of a few hundred parameters the
per-step overhead dominates, so S nets cost little more than one.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time

import numpy as np
import torch
from torch import nn

from manifold_ext._machine import torch_threads
from manifold_ext.relu_geometry import ReLUNetwork

# Section 4.1.1 and 4.1.3: the target is sum(x_i^2) minus this constant.
TARGET_OFFSET = {2: 0.4, 3: 3.0}
# Section 4.1.1 / 4.1.3: points sampled uniformly from [-1, 1]^d.
DATA_POINTS = {2: 10_000, 3: 125_000}


def target(x: torch.Tensor) -> torch.Tensor:
    """The paper's function ``x1^2 + x2^2 - 0.4`` (2-D) or ``x1^2 + x2^2 + x3^2 - 3`` (3-D), ``[..., 1]``."""
    d = x.shape[-1]
    if d not in TARGET_OFFSET:
        raise ValueError(f"target: the paper defines the target for 2-D and 3-D inputs, got dimension {d}")
    return (x**2).sum(-1, keepdim=True) - TARGET_OFFSET[d]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Optimiser settings (see the module docstring for why)."""

    steps: int = 10_000
    lr: float = 3e-3
    final_lr_fraction: float = 0.01
    warmup_steps: int = 300
    batch: int = 256
    eval_every: int = 250
    validation_fraction: float = 0.2
    init: str = "median"  # or "pytorch": nn.Linear's default initialisation (an ablation; units may start dead)

    def as_dict(self) -> dict:
        init = {
            "median": {
                "weights": "He normal",
                "hidden_bias": "minus the median pre-activation over the training points",
            },
            "pytorch": {"weights_and_biases": "nn.Linear default, uniform in +-1/sqrt(fan_in)"},
        }[self.init]
        return {
            **dataclasses.asdict(self),
            "optimiser": "Adam, cosine decay",
            **init,
            "target": "standardised for training (output layer folded back)",
            "checkpoint": "best validation MSE",
        }


@dataclasses.dataclass
class TrainedNets:
    """One architecture trained from several seeds."""

    widths: list[int]
    input_dim: int
    seeds: list[int]
    networks: list[ReLUNetwork]
    validation_mse: np.ndarray  # [S], in the target's units
    seconds: float
    cpu_seconds: float

    @property
    def name(self) -> str:
        return f"{len(self.widths)}x{self.widths[0]}"


def sample_datasets(seeds: list[int], d: int, n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform points of [-1, 1]^d and their targets, one independent set per seed: ``[S, N, d]``, ``[S, N, 1]``."""
    x = torch.stack(
        [torch.rand(n_points, d, generator=torch.Generator().manual_seed(10_000 + s)) * 2 - 1 for s in seeds]
    )
    return x, target(x)


class StackedMLP(nn.Module):
    """``S`` independent ReLU MLPs of the same shape, evaluated together: ``x [S, B, d] -> [S, B, 1]``."""

    INITS = ("median", "pytorch")

    def __init__(
        self,
        n_models: int,
        d: int,
        widths: list[int],
        x_train: torch.Tensor,
        generator: torch.Generator,
        init: str = "median",
    ):
        super().__init__()
        if init not in self.INITS:
            raise ValueError(f"StackedMLP: init must be one of {self.INITS}, got {init!r}")
        sizes = [d, *widths, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        h = x_train
        for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
            if init == "median":
                w = torch.randn(n_models, fan_out, fan_in, generator=generator) * math.sqrt(2.0 / fan_in)
                z = torch.bmm(h, w.transpose(1, 2))
                b = -z.median(dim=1, keepdim=True).values  # each unit active on half of the training points
                h = torch.relu(z + b)
            else:
                w, b = self._pytorch_default(n_models, fan_in, fan_out, generator)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        if init == "median":
            w_out = torch.randn(n_models, 1, sizes[-2], generator=generator) * math.sqrt(1.0 / sizes[-2])
            b_out = torch.zeros(n_models, 1, 1)  # the standardised target's mean
        else:
            w_out, b_out = self._pytorch_default(n_models, sizes[-2], 1, generator)
        self.weights.append(nn.Parameter(w_out))
        self.biases.append(nn.Parameter(b_out))

    @staticmethod
    def _pytorch_default(n_models: int, fan_in: int, fan_out: int, generator: torch.Generator):
        """``nn.Linear``'s default: weights and biases uniform in +-1/sqrt(fan_in) (kaiming_uniform, a = sqrt(5))."""
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(n_models, fan_out, fan_in, generator=generator) * 2 - 1) * bound
        b = (torch.rand(n_models, 1, fan_out, generator=generator) * 2 - 1) * bound
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.weights) - 1
        for j, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if j < last:
                h = torch.relu(h)
        return h

    def sequential(self, s: int, scale: float, shift: float) -> nn.Sequential:
        """Model ``s`` as an ``nn.Sequential`` (float64) whose output is ``scale * output + shift``."""
        layers: list[nn.Module] = []
        last = len(self.weights) - 1
        for j, (w, b) in enumerate(zip(self.weights, self.biases)):
            weight, bias = w[s].detach().double(), b[s, 0].detach().double()
            if j == last:
                weight, bias = weight * scale, bias * scale + shift
            linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
            layers.append(linear)
            if j < last:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)


def _lr_factor(recipe: Recipe, step: int) -> float:
    """Linear warm-up over ``warmup_steps`` (at most a tenth of the run), then cosine decay from 1 to
    ``final_lr_fraction``. Without the warm-up Adam's first full-size steps kill every unit of a layer in
    some deep narrow nets (measured: 1 of 10 seeds of 10 x 5 ended constant, validation MSE 0.18)."""
    warmup = min(recipe.warmup_steps, recipe.steps // 10)
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    progress = min(1.0, step / max(1, recipe.steps))
    floor = recipe.final_lr_fraction
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# One intra-op thread: with a few hundred parameters, more threads only add synchronisation
# (27x slower on a busy 2-core machine, measured).
@torch_threads(1)
def train_networks(
    widths: list[int], d: int, seeds: list[int], recipe: Recipe = Recipe(), n_points: int | None = None
) -> TrainedNets:
    """Train one network per seed on the paper's target; returns them as :class:`ReLUNetwork` s."""
    if not seeds:
        raise ValueError("train_networks: needs at least one seed")
    if not widths or min(widths) < 1:
        raise ValueError(f"train_networks: widths must be a non-empty list of positive sizes, got {widths}")
    started, cpu_started = time.perf_counter(), time.process_time()
    n_points = n_points or DATA_POINTS[d]
    x, y = sample_datasets(seeds, d, n_points)
    split = round((1 - recipe.validation_fraction) * n_points)
    x_train, y_train, x_val, y_val = x[:, :split], y[:, :split], x[:, split:], y[:, split:]
    mean = y_train.mean(dim=(1, 2), keepdim=True)
    std = y_train.std(dim=(1, 2), keepdim=True)
    y_train_std = (y_train - mean) / std
    generator = torch.Generator().manual_seed(seeds[0] * 7919 + sum(widths) * 31 + d)
    torch.manual_seed(seeds[0])
    model = StackedMLP(len(seeds), d, widths, x_train, generator, recipe.init)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, functools.partial(_lr_factor, recipe))
    best_mse = torch.full((len(seeds),), float("inf"))
    best = [p.detach().clone() for p in model.parameters()]
    rows = torch.arange(split)
    for step in range(recipe.steps):
        batch = rows[torch.randint(0, split, (recipe.batch,), generator=generator)]
        residual = model(x_train[:, batch]) - y_train_std[:, batch]
        loss = residual.pow(2).mean(dim=(1, 2)).sum()  # the sum keeps each model's gradient its own
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if (step + 1) % recipe.eval_every == 0 or step == recipe.steps - 1:
            with torch.no_grad():
                mse = ((model(x_val) * std + mean - y_val) ** 2).mean(dim=(1, 2))
                improved = mse < best_mse
                best_mse = torch.where(improved, mse, best_mse)
                for kept, p in zip(best, model.parameters()):
                    kept[improved] = p.detach()[improved]
    with torch.no_grad():
        for kept, p in zip(best, model.parameters()):
            p.copy_(kept)
    networks = [ReLUNetwork.from_module(model.sequential(s, float(std[s]), float(mean[s]))) for s in range(len(seeds))]
    return TrainedNets(
        list(widths),
        d,
        list(seeds),
        networks,
        best_mse.double().numpy(),
        time.perf_counter() - started,
        time.process_time() - cpu_started,
    )
