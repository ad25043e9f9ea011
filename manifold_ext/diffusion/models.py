"""Noise-prediction networks eps_theta(x_t, t), and the one way the library calls them.

The contract (every caller in the library follows it: training, likelihood,
samplers): ``model(x, t)`` with ``x`` a ``[B, *]`` float tensor and ``t`` a
``[B]`` **int64** tensor of step indices in 1..T on ``x.device``
(:func:`time_tensor` makes one); the model returns eps with ``x``'s shape.
When a whole batch shares one time (likelihood, sampling) ``t`` is an
*expanded* one-element tensor (stride 0), which a model may use to compute its
time path once (:func:`shared_time`). The one exception is the probability-flow
ODE sampler, which evaluates between steps and passes a float32 ``[B]`` tensor
of fractional times.

The built-in networks also accept a Python number for ``t`` (one time for the
batch) and fractional times, and they refuse a schedule with a different T
(:func:`check_model_schedule`): their time embedding is scaled by 1000 / T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from manifold_ext._args import as_int
from manifold_ext.diffusion import _mlp


def time_tensor(t, batch: int, device: torch.device | str) -> torch.Tensor:
    """The ``[batch]`` time tensor passed to eps-networks: int64 for a step index, float32 for a fractional time.

    One value for the whole batch, as an expanded (stride-0) view of one element.
    """
    if isinstance(t, float) and not t.is_integer():
        value = torch.tensor([t], dtype=torch.float32, device=device)
    else:
        value = torch.tensor([as_int(int(t) if isinstance(t, float) else t, "t")], dtype=torch.int64, device=device)
    return value.expand(batch)


def shared_time(t: torch.Tensor) -> bool:
    """True when every entry of the ``[B]`` time tensor ``t`` is the same element (one or stride 0)."""
    return t.dim() == 0 or t.numel() <= 1 or (t.dim() == 1 and t.stride(0) == 0)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; CPU for a model that has none."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_model_schedule(model: nn.Module, schedule) -> None:
    """ValueError when the model was built for a different number of steps than the schedule has."""
    model_T = getattr(model, "T", None)
    if isinstance(model_T, int) and not isinstance(model_T, bool) and model_T != schedule.T:
        raise ValueError(
            f"the model was built for T = {model_T} steps ({type(model).__name__}(T={model_T})) but the schedule "
            f"has T = {schedule.T}: its time embedding scales t by 1000 / T, so every time would be misread; "
            f"build the model with T={schedule.T} or use a schedule with T = {model_T}"
        )


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al.; DDPM): [n] times -> [n, dim]."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _times(t, batch: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """([1] or [B] float32 tensor, shared?) from a number, a 0-d tensor or a [B] tensor."""
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        if t.dim() != 1 or t.numel() != batch:
            raise ValueError(f"t must be a number or a [B] = [{batch}] tensor, got shape {list(t.shape)}")
        if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
            if shared_time(t):
                return t[:1].to(device=device, dtype=torch.float32), True
            return t.to(device=device, dtype=torch.float32), False
        raise TypeError(f"t must hold step indices (int64) or float times, got dtype {t.dtype}")
    if isinstance(t, bool):
        raise TypeError("t must be a time step, got a bool")
    return torch.tensor([float(t)], device=device), True


class PointEpsNet(nn.Module):
    """MLP noise predictor for low-dimensional points (e.g. 2-D toy data).

    ``hidden`` units, ``layers`` hidden layers with SiLU; the time embedding
    (sinusoidal -> MLP) is projected to a bias for every hidden layer.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time_dim: int = 64, T: int = 100):
        super().__init__()
        dim, hidden, layers = as_int(dim, "dim", 1), as_int(hidden, "hidden", 1), as_int(layers, "layers", 1)
        time_dim, T = as_int(time_dim, "time_dim", 2), as_int(T, "T", 1)
        self.config = dict(dim=dim, hidden=hidden, layers=layers, time_dim=time_dim, T=T)
        self.T = T
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.time_to_bias = nn.Linear(hidden, hidden * layers)
        self.inputs = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def time_biases(self, t: torch.Tensor) -> list[torch.Tensor]:
        # Times are scaled to 0..1000 whatever T is, so the embedding's frequencies fit.
        features = self.time_mlp(timestep_embedding(t * (1000.0 / self.T), self.time_dim))
        return list(self.time_to_bias(features).chunk(len(self.hidden) + 1, dim=1))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        times, shared = _times(t, x.shape[0], x.device)
        biases = self.time_biases(times)  # [1 or B, hidden] each
        layers = [self.inputs, *self.hidden]
        if shared and _mlp.applies(x, [layer.weight for layer in layers] + [self.output.weight]):
            # Inference with one time for the batch (likelihood, sampling): chunked, oneDNN-backed (see _mlp).
            folded = [(layer.weight, layer.bias + bias[0]) for layer, bias in zip(layers, biases)]
            return _mlp.shared_time_mlp(x, folded, self.output.weight, self.output.bias)
        h = x
        inplace = not torch.is_grad_enabled()  # inference: no copy for the activation
        for layer, bias in zip(layers, biases):
            if shared:  # one time for the batch: fold it into the layer's bias (one addmm, no extra pass)
                h = F.silu(F.linear(h, layer.weight, layer.bias + bias[0]), inplace=inplace)
            else:
                h = F.silu(layer(h) + bias)
        return self.output(h)


class _ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, time_channels: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_channels, out_channels)
        self.norm2 = nn.GroupNorm(min(groups, out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(time_features)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SmallUNet(nn.Module):
    """A small U-Net noise predictor for small images ([B, C, H, W], H and W divisible by 2**(levels-1)).

    ``channel_mults`` sets the width per resolution (e.g. (1, 2) for 8x8, (1, 2, 2) for 32x32);
    one residual block per level on the way down and up, time embedding added in every block.
    """

    def __init__(self, channels: int = 1, base: int = 32, channel_mults: tuple[int, ...] = (1, 2), T: int = 100):
        super().__init__()
        channels, base, T = as_int(channels, "channels", 1), as_int(base, "base", 1), as_int(T, "T", 1)
        self.config = dict(channels=channels, base=base, channel_mults=tuple(channel_mults), T=T)
        self.T = T
        time_channels = 4 * base
        self.time_dim = base
        self.time_mlp = nn.Sequential(
            nn.Linear(base, time_channels), nn.SiLU(), nn.Linear(time_channels, time_channels)
        )
        self.stem = nn.Conv2d(channels, base, 3, padding=1)
        widths = [base * m for m in channel_mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = base
        for level, width in enumerate(widths):
            self.down.append(_ResBlock(previous, width, time_channels))
            previous = width
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = _ResBlock(previous, previous, time_channels)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            self.up.append(_ResBlock(previous + width, width, time_channels))
            previous = width
            self.upsample.append(nn.Identity() if level == 0 else nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(
            nn.GroupNorm(min(8, previous), previous), nn.SiLU(), nn.Conv2d(previous, channels, 3, padding=1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        times, _ = _times(t, x.shape[0], x.device)
        time_features = self.time_mlp(timestep_embedding(times * (1000.0 / self.T), self.time_dim))
        if time_features.shape[0] == 1 and x.shape[0] != 1:
            time_features = time_features.expand(x.shape[0], -1)
        h = self.stem(x)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, time_features)
            skips.append(h)
            h = down(h)
        h = self.middle(h, time_features)
        for block, up in zip(self.up, self.upsample):
            h = block(torch.cat([h, skips.pop()], dim=1), time_features)
            h = up(h)
        return self.head(h)


MODELS = {"PointEpsNet": PointEpsNet, "SmallUNet": SmallUNet}


def build_model(name: str, config: dict) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; expected one of {', '.join(MODELS)}")
    return MODELS[name](**config)
