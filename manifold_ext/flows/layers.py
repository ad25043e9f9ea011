"""Invertible layers of a Glow flow step (paper 000 §2.1; Kingma & Dhariwal 2018).

Every layer maps ``x`` of shape ``[B, C, *spatial]`` (``spatial`` may be empty
for vector data) and returns ``(y, logdet)`` with ``logdet`` of shape ``[B]``,
the log|det| of the layer's Jacobian per sample. ``inverse(y)`` returns
``(x, logdet)`` with the log|det| of the inverse map (the negative).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from manifold_ext.ops import affine_coupling


class FlowLayer(nn.Module):
    """Interface of an invertible layer with a tractable log-determinant."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


def _check_channels(layer: str, x: torch.Tensor, channels: int) -> None:
    if x.dim() < 2 or x.shape[1] != channels:
        raise ValueError(f"{layer}: expected input of shape [B, {channels}, *spatial], got {tuple(x.shape)}")


def _spatial_size(x: torch.Tensor) -> int:
    return math.prod(x.shape[2:])


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a [C] parameter so that it broadcasts over [B, C, *spatial]."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class ActNorm(FlowLayer):
    """Per-channel affine map y = (x + bias) * exp(log_scale) with data-dependent
    initialisation: the first batch seen in training gets zero mean and unit
    variance per channel (Glow §3.1). logdet = S * sum(log_scale).

    The initialisation is data-dependent, so it runs outside any compiled graph:
    in eager mode the first training forward does it (lazily, as before); before
    ``torch.compile(..., fullgraph=True)`` call ``initialize(x)`` (or
    ``data_initialize(model, batch)`` for a whole model). The forward branches only
    on a Python flag, which ``torch.compile`` guards on as a constant, so an
    initialised layer traces as one graph. The statistics are never traced: with
    ``fullgraph=True`` an uninitialised layer fails with a message naming
    ``data_initialize``; without it, torch.compile falls back to eager for that
    call, which initialises the layer as before.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        # the buffer keeps the state in state_dicts; the Python mirror is what forward reads
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False

    @property
    def is_initialized(self) -> bool:
        """Whether the data-dependent initialisation has run (or was loaded from a state_dict)."""
        return self._initialized

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias and log_scale so that ``x`` gets zero mean and unit variance per channel (Glow §3.1)."""
        _check_channels("ActNorm", x, self.channels)
        per_channel = x.detach().transpose(0, 1).reshape(self.channels, -1)
        if per_channel.shape[1] == 0:
            raise ValueError("ActNorm.initialize: needs a non-empty batch to compute per-channel statistics")
        mean = per_channel.mean(dim=1)
        std = per_channel.std(dim=1, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def forward(self, x):
        _check_channels("ActNorm", x, self.channels)
        if self.training and not self._initialized:  # a Python flag: a constant to torch.compile
            if torch.compiler.is_compiling():  # never trace the data-dependent statistics into a graph
                raise RuntimeError(
                    "ActNorm: the data-dependent initialisation runs eagerly; call "
                    "manifold_ext.flows.data_initialize(model, batch) or ActNorm.initialize(x) before "
                    "torch.compile(..., fullgraph=True)"
                )
            self.initialize(x)
        y = (x + _per_channel(self.bias, x)) * _per_channel(self.log_scale.exp(), x)
        logdet = (_spatial_size(x) * self.log_scale.sum()).expand(x.shape[0])
        return y, logdet

    def inverse(self, y):
        _check_channels("ActNorm", y, self.channels)
        x = y * _per_channel(torch.exp(-self.log_scale), y) - _per_channel(self.bias, y)
        logdet = (-_spatial_size(y) * self.log_scale.sum()).expand(y.shape[0])
        return x, logdet


@torch.no_grad()
def data_initialize(model: nn.Module, *inputs, method: str = "forward", **kwargs) -> int:
    """Initialise every ActNorm of ``model`` from one batch, eagerly, before ``torch.compile``.

    Runs ``getattr(model, method)(*inputs, **kwargs)`` once in training mode without
    gradients (e.g. ``method="log_prob"`` for ``MultiScaleGlow`` or ``StandardNormalFlow``),
    so each ActNorm takes its Glow §3.1 statistics from the activations it sees; the
    model's previous training/eval mode is restored. Returns how many ActNorm layers
    were initialised by this call.
    """
    layers = [m for m in model.modules() if isinstance(m, ActNorm)]
    pending = sum(not layer.is_initialized for layer in layers)
    was_training = model.training
    model.train()
    try:
        getattr(model, method)(*inputs, **kwargs)
    finally:
        model.train(was_training)
    return pending - sum(not layer.is_initialized for layer in layers)


class InvertibleConv1x1(FlowLayer):
    """Invertible 1x1 convolution, LU-decomposed (Glow §3.2):
    W = P L (U + diag(sign(s) * exp(log|s|))), with P fixed, L unit lower
    triangular and U strictly upper triangular; logdet = S * sum(log|s|).
    On vector data ([B, C]) it is an invertible linear map."""

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        self.channels = channels
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))  # random rotation
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), diagonal=-1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, diagonal=1))
        self.log_abs_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> torch.Tensor:
        """The C x C matrix W."""
        eye = torch.eye(self.channels, device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_abs_s))
        return self.permutation @ lower @ upper

    @staticmethod
    def _mix_channels(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # y[b, i, ...] = sum_j W[i, j] x[b, j, ...]
        return torch.einsum("ij,bj...->bi...", matrix, x)

    def forward(self, x):
        _check_channels("InvertibleConv1x1", x, self.channels)
        logdet = (_spatial_size(x) * self.log_abs_s.sum()).expand(x.shape[0])
        return self._mix_channels(self.weight(), x), logdet

    def inverse(self, y):
        _check_channels("InvertibleConv1x1", y, self.channels)
        logdet = (-_spatial_size(y) * self.log_abs_s.sum()).expand(y.shape[0])
        return self._mix_channels(torch.linalg.inv(self.weight()), y), logdet


class ZeroInitConv(nn.Module):
    """Last layer of the coupling network: starts at zero so each coupling
    starts close to a fixed map (Glow's 'zero initialisation')."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        nn.init.zeros_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)

    def forward(self, x):
        return self.layer(x)


def default_coupling_net(in_channels: int, out_channels: int, hidden_channels: int, spatial_dims: int) -> nn.Module:
    """Glow's coupling network: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised
    3x3 conv. For vector data (spatial_dims = 0) the same shape as an MLP."""
    if spatial_dims == 0:
        return nn.Sequential(
            nn.Linear(in_channels, hidden_channels),
            nn.ReLU(),
            nn.Linear(hidden_channels, hidden_channels),
            nn.ReLU(),
            ZeroInitConv(nn.Linear(hidden_channels, out_channels)),
        )
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(spatial_dims)
    if conv is None:
        raise ValueError(f"default_coupling_net: spatial_dims must be 0, 1, 2 or 3, got {spatial_dims}")
    return nn.Sequential(
        conv(in_channels, hidden_channels, 3, padding=1),
        nn.ReLU(),
        conv(hidden_channels, hidden_channels, 1),
        nn.ReLU(),
        ZeroInitConv(conv(hidden_channels, out_channels, 3, padding=1)),
    )


class AffineCoupling(FlowLayer):
    """Affine coupling layer on the fused op (``manifold_ext.ops.affine_coupling``).

    The first ``channels // 2`` channels are passive (passed through and fed to
    the network); the rest are active and transformed with the shift and scale
    the network predicts. ``net`` maps ``[B, passive, *spatial]`` to
    ``[B, 2 * active, *spatial]`` in the chosen ``layout``; by default Glow's
    network (``default_coupling_net``) is used.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 64,
        net: nn.Module | None = None,
        *,
        scale: str = "glow",
        layout: str = "cross",
        clamp: float = 2.0,
        spatial_dims: int = 2,
    ):
        super().__init__()
        if channels < 2:
            raise ValueError(f"AffineCoupling: needs at least 2 channels to split, got {channels}")
        self.channels = channels
        self.passive_channels = channels // 2
        self.active_channels = channels - self.passive_channels
        self.scale, self.layout, self.clamp = scale, layout, clamp
        self.net = (
            net
            if net is not None
            else default_coupling_net(self.passive_channels, 2 * self.active_channels, hidden_channels, spatial_dims)
        )

    def _params(self, passive: torch.Tensor) -> torch.Tensor:
        h = self.net(passive)
        expected = (passive.shape[0], 2 * self.active_channels, *passive.shape[2:])
        if tuple(h.shape) != expected:
            raise ValueError(
                f"AffineCoupling: the coupling network returned shape {tuple(h.shape)}, expected {expected}"
            )
        return h

    def _couple(self, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _check_channels("AffineCoupling", x, self.channels)
        passive, active = x[:, : self.passive_channels], x[:, self.passive_channels :]
        out, logdet = affine_coupling(
            active, self._params(passive), scale=self.scale, layout=self.layout, clamp=self.clamp, reverse=reverse
        )
        return torch.cat([passive, out], dim=1), logdet

    def forward(self, x):
        return self._couple(x, reverse=False)

    def inverse(self, y):
        return self._couple(y, reverse=True)


class FlowSequential(FlowLayer):
    """A chain of flow layers; log-determinants add up."""

    def __init__(self, *layers: FlowLayer):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y):
        logdet = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            y, layer_logdet = layer.inverse(y)
            logdet = logdet + layer_logdet
        return y, logdet


class GlowStep(FlowSequential):
    """One Glow flow step: ActNorm -> invertible 1x1 conv -> affine coupling."""

    def __init__(self, channels: int, hidden_channels: int = 64, **coupling_kwargs):
        super().__init__(
            ActNorm(channels), InvertibleConv1x1(channels), AffineCoupling(channels, hidden_channels, **coupling_kwargs)
        )


class StandardNormalFlow(nn.Module):
    """A flow with a standard normal base density: log p(x) = log N(f(x); 0, I) + log|det J_f(x)|
    (change of variables, paper 000 Eq. 5)."""

    def __init__(self, flow: FlowLayer):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.flow(x)
        log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).flatten(1).sum(1)
        return log_pz + logdet

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], temperature: float = 1.0, generator=None) -> torch.Tensor:
        param = next(self.parameters())
        z = torch.randn((n, *shape), generator=generator, device=param.device, dtype=param.dtype) * temperature
        return self.flow.inverse(z)[0]


__all__ = [
    "FlowLayer",
    "ActNorm",
    "data_initialize",
    "InvertibleConv1x1",
    "AffineCoupling",
    "FlowSequential",
    "GlowStep",
    "StandardNormalFlow",
    "default_coupling_net",
]
