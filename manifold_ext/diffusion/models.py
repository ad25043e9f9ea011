"""Noise-prediction networks eps_theta(x_t, t).

Both take ``t`` as a number (one time for the whole batch: the time path is
computed once and broadcast, which is what the likelihood and sampling loops
use) or as a ``[B]`` tensor (training, mixed times). Times are step indices
1..T; fractional times (the probability-flow ODE) are accepted.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


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
    """([1] or [B] float tensor, shared?)."""
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        if t.numel() != batch:
            raise ValueError(f"t must be a number or a [B] = [{batch}] tensor, got shape {list(t.shape)}")
        return t.to(device=device, dtype=torch.float32), False
    return torch.tensor([float(t)], device=device), True


class PointEpsNet(nn.Module):
    """MLP noise predictor for low-dimensional points (e.g. 2-D toy data).

    ``hidden`` units, ``layers`` hidden layers with SiLU; the time embedding
    (sinusoidal -> MLP) is projected to a bias for every hidden layer.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time_dim: int = 64, T: int = 100):
        super().__init__()
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
        self.config = dict(channels=channels, base=base, channel_mults=tuple(channel_mults), T=T)
        self.T = T
        time_channels = 4 * base
        self.time_dim = base
        self.time_mlp = nn.Sequential(nn.Linear(base, time_channels), nn.SiLU(), nn.Linear(time_channels, time_channels))
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
        self.head = nn.Sequential(nn.GroupNorm(min(8, previous), previous), nn.SiLU(), nn.Conv2d(previous, channels, 3, padding=1))
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
