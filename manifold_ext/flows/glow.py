"""Multi-scale Glow on the fused coupling op (paper 000 §2.1, Fig. 1; Kingma & Dhariwal 2018),
optionally conditioned on an image (slides 002, conditional coupling, Eq. 16).

Architecture (``L`` levels, ``K`` steps per level)::

    x ─ squeeze ─ K x [ActNorm → 1x1 conv → affine coupling] ─ split ─┬─ keep ─ squeeze ─ ... ─ top prior
                                                                     └─ factored-out half: learned Gaussian prior

The model is a bijection between ``x`` and its standardised latents
``(eps_1, ..., eps_L)``: every factored-out half ``z`` is mapped to
``eps = (z - mu) / sigma`` where ``mu`` and ``log sigma`` are predicted from the
kept half (and the condition) by a zero-initialised convolution. So

    log p(x) = sum_l log N(eps_l; 0, I) + log|det d(eps_1..eps_L)/dx|

where the log-determinant collects the flow steps and the priors' ``-sum log sigma``
(the change of variables, paper 000 Eq. 5). The standardisation is itself the
fused affine coupling op (``scale="exp"``, ``layout="split"``, ``reverse=True``),
so the prior's Gaussian log-density costs one fused pass plus a sum of squares.

Conventions:

* Images are continuous ``[B, C, H, W]`` tensors; discrete images are
  dequantised with :func:`dequantize` (``x = (k + u) / n_bins - 1/2``,
  ``u ~ U[0, 1)``), and :func:`bits_per_dim` turns the continuous log-density
  into the usual discrete bound ``-(log p(x) - D log n_bins) / (D log 2)``.
* ``sample(n, temperature)`` draws ``eps ~ N(0, T^2 I)`` at every level,
  i.e. Glow's temperature: each Gaussian's standard deviation is scaled by ``T``.
* A condition ``cond`` ``[B, C_c, h, w]`` of any spatial size is resized to each
  level's resolution (area-averaged when smaller, bilinear when larger) and fed to
  every coupling network and every prior.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_ext.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    InvertibleConv1x1,
    ZeroInitConv,
    default_coupling_net,
)
from manifold_ext.ops import affine_coupling

# A factory (in_channels, out_channels) -> module mapping [B, in, h, w] to [B, out, h, w].
CouplingNetFactory = Callable[[int, int], nn.Module]

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------
# Squeeze and condition resizing
# ---------------------------------------------------------------------------


class Squeeze(FlowLayer):
    """Space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (a permutation, log-det 0).

    Output channel ``c * 4 + 2 * i + j`` holds input channel ``c`` at pixel
    offset ``(i, j)`` of each 2x2 block (the layout of Glow and ``pixel_unshuffle``).
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        if factor < 1:
            raise ValueError(f"Squeeze: factor must be >= 1, got {factor}")
        self.factor = factor

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"Squeeze: expected an image batch [B, C, H, W], got shape {tuple(x.shape)}")
        height, width = x.shape[2:]
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"Squeeze: spatial size ({height}, {width}) must be divisible by {self.factor} "
                f"(got shape {tuple(x.shape)})"
            )
        return F.pixel_unshuffle(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, y):
        if y.dim() != 4 or y.shape[1] % (self.factor**2):
            raise ValueError(f"Squeeze.inverse: expected [B, C * {self.factor**2}, H, W], got shape {tuple(y.shape)}")
        return F.pixel_shuffle(y, self.factor), y.new_zeros(y.shape[0])


def resize_condition(cond: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a condition image ``[B, C_c, h, w]`` to ``size``: area average when
    shrinking (exact for integer factors), bilinear when enlarging."""
    size = tuple(int(s) for s in size)
    if tuple(cond.shape[2:]) == size:
        return cond
    if cond.shape[2] >= size[0] and cond.shape[3] >= size[1]:
        return F.adaptive_avg_pool2d(cond, size)
    return F.interpolate(cond, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------
# Conditional coupling (slides 002, Eq. 16)
# ---------------------------------------------------------------------------


class ConditionalAffineCoupling(AffineCoupling):
    """Affine coupling whose network also sees a condition image (slides 002, Eq. 16):

        z_0 = y_0,    z_1 = A(y_0, c) + s_1(y_0, c) * y_1

    ``y_0`` is the passive half, ``y_1`` the active half; the network maps
    ``cat(y_0, resize(c))`` to the shift ``A`` and raw scale of ``s_1``, which the
    fused op applies (``scale="exp"`` or ``"softclamp"`` is literally Eq. 16;
    ``"glow"`` shifts first, ``(y_1 + A) * s_1``). The slides' ``s_0`` scale of the
    passive half is the preceding ActNorm's. Without a condition
    (``condition_channels=0``) this is :class:`AffineCoupling`.
    """

    # The coupling implementation: the fused op. Benchmarks and tests may set an
    # instance's ``coupling_fn`` to ``manifold_ext.reference.affine_coupling_reference``
    # to run the same model on eager PyTorch ops.
    coupling_fn = staticmethod(affine_coupling)

    def __init__(
        self,
        channels: int,
        condition_channels: int,
        hidden_channels: int = 64,
        net: nn.Module | None = None,
        *,
        scale: str = "glow",
        layout: str = "cross",
        clamp: float = 2.0,
    ):
        if condition_channels < 0:
            raise ValueError(f"ConditionalAffineCoupling: condition_channels must be >= 0, got {condition_channels}")
        if channels < 2:
            raise ValueError(f"ConditionalAffineCoupling: needs at least 2 channels to split, got {channels}")
        passive, active = channels // 2, channels - channels // 2
        if net is None:
            net = default_coupling_net(passive + condition_channels, 2 * active, hidden_channels, 2)
        super().__init__(channels, hidden_channels, net, scale=scale, layout=layout, clamp=clamp)
        self.condition_channels = condition_channels

    def _couple_given(self, x: torch.Tensor, cond: torch.Tensor | None, reverse: bool):
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"ConditionalAffineCoupling: expected input of shape [B, {self.channels}, H, W], got {tuple(x.shape)}"
            )
        passive, active = x[:, : self.passive_channels], x[:, self.passive_channels :]
        net_input = passive
        if self.condition_channels:
            cond = check_condition("ConditionalAffineCoupling", cond, self.condition_channels, x.shape[0])
            net_input = torch.cat([passive, resize_condition(cond, x.shape[2:])], dim=1)
        elif cond is not None:
            raise ValueError("ConditionalAffineCoupling: built with condition_channels=0 but given a condition")
        out, logdet = self.coupling_fn(
            active, self._params(net_input), scale=self.scale, layout=self.layout, clamp=self.clamp, reverse=reverse
        )
        return torch.cat([passive, out], dim=1), logdet

    def forward(self, x, cond=None):
        return self._couple_given(x, cond, reverse=False)

    def inverse(self, y, cond=None):
        return self._couple_given(y, cond, reverse=True)


def check_condition(where: str, cond: torch.Tensor | None, channels: int, batch: int) -> torch.Tensor:
    if cond is None:
        raise ValueError(f"{where}: this model is conditional ({channels} condition channels); pass cond=")
    if cond.dim() != 4 or cond.shape[1] != channels or cond.shape[0] != batch:
        raise ValueError(f"{where}: expected a condition of shape [{batch}, {channels}, h, w], got {tuple(cond.shape)}")
    return cond


class FlowStep(nn.Module):
    """One Glow step, ActNorm -> invertible 1x1 conv -> (conditional) affine coupling;
    ``forward(x, cond)`` and ``inverse(y, cond)`` return ``(out, logdet [B])``."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 64,
        *,
        condition_channels: int = 0,
        coupling_net: CouplingNetFactory | None = None,
        scale: str = "glow",
        clamp: float = 2.0,
    ):
        super().__init__()
        passive, active = channels // 2, channels - channels // 2
        net = coupling_net(passive + condition_channels, 2 * active) if coupling_net is not None else None
        self.actnorm = ActNorm(channels)
        self.invconv = InvertibleConv1x1(channels)
        self.coupling = ConditionalAffineCoupling(
            channels, condition_channels, hidden_channels, net, scale=scale, clamp=clamp
        )

    def forward(self, x, cond=None):
        x, logdet_norm = self.actnorm(x)
        x, logdet_conv = self.invconv(x)
        x, logdet_coupling = self.coupling(x, cond)
        return x, logdet_norm + logdet_conv + logdet_coupling

    def inverse(self, y, cond=None):
        y, logdet_coupling = self.coupling.inverse(y, cond)
        y, logdet_conv = self.invconv.inverse(y)
        y, logdet_norm = self.actnorm.inverse(y)
        return y, logdet_coupling + logdet_conv + logdet_norm


# ---------------------------------------------------------------------------
# Learned Gaussian priors (split and top)
# ---------------------------------------------------------------------------


class GaussianPrior(nn.Module):
    """Diagonal Gaussian ``N(z; mu, sigma^2)`` over ``[B, C, h, w]``.

    ``mu`` and ``log sigma`` come from a zero-initialised 3x3 convolution of a
    context (the split's kept half and/or the condition); without a context
    they are free per-channel parameters (Glow's learned top prior). At
    initialisation the prior is ``N(0, I)``.

    ``standardize(z)`` returns ``eps = (z - mu) / sigma`` and ``-sum log sigma``,
    so ``log N(z; mu, sigma^2) = log N(eps; 0, I) - sum log sigma``; it runs on the
    fused coupling op (``scale="exp"``, ``layout="split"``, ``reverse=True``).
    """

    coupling_fn = staticmethod(affine_coupling)  # see ConditionalAffineCoupling.coupling_fn

    def __init__(self, channels: int, context_channels: int = 0):
        super().__init__()
        self.channels = channels
        self.context_channels = context_channels
        if context_channels > 0:
            self.net = ZeroInitConv(nn.Conv2d(context_channels, 2 * channels, 3, padding=1))
            self.register_parameter("params", None)
        else:
            self.net = None
            self.params = nn.Parameter(torch.zeros(2 * channels))  # [mu, log sigma] per channel

    def mean_and_log_scale_params(self, like: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """``h = [mu, log sigma]`` stacked on channels: ``[B, 2C, h, w]`` (the op's split layout)."""
        if self.net is not None:
            if context is None:
                raise ValueError("GaussianPrior: this prior needs a context tensor")
            return self.net(context)
        batch, _, height, width = like.shape
        return self.params.view(1, -1, 1, 1).expand(batch, -1, height, width)

    def standardize(self, z: torch.Tensor, context: torch.Tensor | None = None):
        h = self.mean_and_log_scale_params(z, context)
        return self.coupling_fn(z, h, scale="exp", layout="split", reverse=True)

    def destandardize(self, eps: torch.Tensor, context: torch.Tensor | None = None):
        h = self.mean_and_log_scale_params(eps, context)
        return self.coupling_fn(eps, h, scale="exp", layout="split", reverse=False)


def use_coupling_implementation(model: nn.Module, fn) -> nn.Module:
    """Make every coupling and prior in ``model`` call ``fn`` (same signature as
    :func:`manifold_ext.ops.affine_coupling`), e.g. the plain-PyTorch reference, to
    compare the same model on eager ops. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, (ConditionalAffineCoupling, GaussianPrior)):
            module.coupling_fn = fn
    return model


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    """``log N(eps; 0, I)`` summed over all non-batch dimensions: ``[B]``."""
    return -0.5 * (eps.flatten(1).square().sum(1) + eps[0].numel() * LOG_2PI)


# ---------------------------------------------------------------------------
# Multi-scale Glow
# ---------------------------------------------------------------------------


class GlowLevel(nn.Module):
    """Squeeze (optional), ``K`` flow steps, then a split (or the top prior on the last level)."""

    def __init__(
        self,
        channels_in: int,
        steps: int,
        hidden_channels: int,
        *,
        squeeze: bool,
        is_last: bool,
        condition_channels: int,
        coupling_net: CouplingNetFactory | None,
        scale: str,
        clamp: float,
    ):
        super().__init__()
        self.squeeze = Squeeze(2) if squeeze else None
        channels = channels_in * 4 if squeeze else channels_in
        if channels < 2:
            raise ValueError(
                f"MultiScaleGlow: a level needs at least 2 channels to couple, got {channels} "
                f"(use squeeze=True or more input channels)"
            )
        self.channels = channels
        self.steps = nn.ModuleList(
            FlowStep(
                channels,
                hidden_channels,
                condition_channels=condition_channels,
                coupling_net=coupling_net,
                scale=scale,
                clamp=clamp,
            )
            for _ in range(steps)
        )
        self.is_last = is_last
        self.condition_channels = condition_channels
        if is_last:
            self.kept_channels = channels
            self.prior = GaussianPrior(channels, context_channels=condition_channels)
        else:
            self.kept_channels = channels // 2
            self.prior = GaussianPrior(
                channels - self.kept_channels, context_channels=self.kept_channels + condition_channels
            )

    def _context(self, kept: torch.Tensor | None, cond: torch.Tensor | None, size) -> torch.Tensor | None:
        parts = [] if kept is None else [kept]
        if self.condition_channels:
            parts.append(resize_condition(cond, size))
        return torch.cat(parts, dim=1) if parts else None

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None):
        """Returns (kept half or None, eps of the factored-out part, logdet)."""
        logdet = h.new_zeros(h.shape[0])
        if self.squeeze is not None:
            h, _ = self.squeeze(h)
        for step in self.steps:
            h, step_logdet = step(h, cond)
            logdet = logdet + step_logdet
        if self.is_last:
            eps, prior_logdet = self.prior.standardize(h, self._context(None, cond, h.shape[2:]))
            return None, eps, logdet + prior_logdet
        kept, factored = h[:, : self.kept_channels], h[:, self.kept_channels :]
        eps, prior_logdet = self.prior.standardize(factored, self._context(kept, cond, h.shape[2:]))
        return kept, eps, logdet + prior_logdet

    def inverse(self, kept: torch.Tensor | None, eps: torch.Tensor, cond: torch.Tensor | None):
        if self.is_last:
            h, _ = self.prior.destandardize(eps, self._context(None, cond, eps.shape[2:]))
        else:
            factored, _ = self.prior.destandardize(eps, self._context(kept, cond, eps.shape[2:]))
            h = torch.cat([kept, factored], dim=1)
        for step in reversed(self.steps):
            h, _ = step.inverse(h, cond)
        if self.squeeze is not None:
            h, _ = self.squeeze.inverse(h)
        return h


class MultiScaleGlow(nn.Module):
    """Multi-scale Glow (Kingma & Dhariwal 2018) on the fused coupling op; see the module docstring.

    Args:
        in_channels: image channels ``C``.
        levels: number of levels ``L`` (each squeezes by 2 when ``squeeze``).
        steps_per_level: flow steps ``K`` per level.
        hidden_channels: width of the default coupling network.
        condition_channels: channels of a condition image (0: unconditional).
        coupling_net: optional factory ``(in_channels, out_channels) -> nn.Module``
            for the coupling networks (any module mapping ``[B, in, h, w]`` to
            ``[B, out, h, w]``); default Glow's 3x3-1x1-3x3 conv net.
        scale: the coupling's scale parameterisation (``"glow"``, ``"exp"``, ``"softclamp"``).
        squeeze: squeeze at the start of every level (off for inputs that are
            already 1x1 or have enough channels, e.g. autoencoder latents).
        image_size: ``(H, W)`` used by :meth:`sample` when no size is passed.
    """

    def __init__(
        self,
        in_channels: int,
        levels: int = 2,
        steps_per_level: int = 4,
        hidden_channels: int = 64,
        *,
        condition_channels: int = 0,
        coupling_net: CouplingNetFactory | None = None,
        scale: str = "glow",
        clamp: float = 2.0,
        squeeze: bool = True,
        image_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        if levels < 1 or steps_per_level < 1:
            raise ValueError(
                f"MultiScaleGlow: levels and steps_per_level must be >= 1, got {levels}, {steps_per_level}"
            )
        self.in_channels = in_channels
        self.condition_channels = condition_channels
        self.squeeze = squeeze
        self.image_size = tuple(image_size) if image_size is not None else None
        self.levels = nn.ModuleList()
        channels = in_channels
        for index in range(levels):
            level = GlowLevel(
                channels,
                steps_per_level,
                hidden_channels,
                squeeze=squeeze,
                is_last=index == levels - 1,
                condition_channels=condition_channels,
                coupling_net=coupling_net,
                scale=scale,
                clamp=clamp,
            )
            self.levels.append(level)
            channels = level.kept_channels

    # -- shapes and checks ----------------------------------------------------

    @property
    def spatial_factor(self) -> int:
        return 2 ** len(self.levels) if self.squeeze else 1

    def _check_input(self, x: torch.Tensor, cond: torch.Tensor | None) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MultiScaleGlow: expected images of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        factor = self.spatial_factor
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"MultiScaleGlow: {len(self.levels)} squeezing levels need H and W divisible by {factor}, "
                f"got ({x.shape[2]}, {x.shape[3]})"
            )
        self._check_cond(cond, x.shape[0])

    def _check_cond(self, cond: torch.Tensor | None, batch: int) -> None:
        if self.condition_channels:
            check_condition("MultiScaleGlow", cond, self.condition_channels, batch)
        elif cond is not None:
            raise ValueError("MultiScaleGlow: built with condition_channels=0 but given a condition")

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Shapes ``(C_l, h_l, w_l)`` of the standardised latents for ``H x W`` inputs."""
        shapes = []
        for level in self.levels:
            if level.squeeze is not None:
                height, width = height // 2, width // 2
            factored = level.channels if level.is_last else level.channels - level.kept_channels
            shapes.append((factored, height, width))
        return shapes

    # -- the bijection --------------------------------------------------------

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        """``x -> (latents, logdet)``: the standardised latents ``eps_l`` (one per
        level, each ``N(0, I)`` under the model) and ``log|det d(eps)/dx|`` ``[B]``."""
        self._check_input(x, cond)
        latents, logdet, h = [], x.new_zeros(x.shape[0]), x
        for level in self.levels:
            h, eps, level_logdet = level(h, cond)
            latents.append(eps)
            logdet = logdet + level_logdet
        return latents, logdet

    def inverse(self, latents: Sequence[torch.Tensor], cond: torch.Tensor | None = None) -> torch.Tensor:
        """The exact inverse of :meth:`forward`: latents -> image."""
        if len(latents) != len(self.levels):
            raise ValueError(f"MultiScaleGlow.inverse: expected {len(self.levels)} latents, got {len(latents)}")
        self._check_cond(cond, latents[0].shape[0])
        h = None
        for level, eps in zip(reversed(self.levels), reversed(list(latents))):
            h = level.inverse(h, eps, cond)
        return h

    # -- densities ------------------------------------------------------------

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Continuous log-density ``log p(x | cond)`` in nats per sample ``[B]`` (Eq. 5)."""
        latents, logdet = self(x, cond)
        return sum(standard_normal_log_prob(eps) for eps in latents) + logdet

    def bits_per_dim(self, x: torch.Tensor, n_bins: int, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Bits per dimension ``[B]`` of dequantised images ``x`` (see :func:`dequantize`)."""
        return bits_per_dim(self.log_prob(x, cond), x[0].numel(), n_bins)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        cond: torch.Tensor | None = None,
        image_size: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` images with every latent ``eps ~ N(0, T^2 I)`` (Glow's temperature ``T``)."""
        size = image_size or self.image_size
        if size is None:
            raise ValueError("MultiScaleGlow.sample: pass image_size=(H, W) or build the model with image_size")
        if temperature < 0:
            raise ValueError(f"MultiScaleGlow.sample: temperature must be >= 0, got {temperature}")
        self._check_cond(cond, n)
        param = next(self.parameters())
        latents = [
            temperature * torch.randn((n, *shape), generator=generator, device=param.device, dtype=param.dtype)
            for shape in self.latent_shapes(*size)
        ]
        return self.inverse(latents, cond)


# ---------------------------------------------------------------------------
# Dequantisation and bits per dimension
# ---------------------------------------------------------------------------


def dequantize(
    levels: torch.Tensor, n_bins: int, generator: torch.Generator | None = None, noise: bool = True
) -> torch.Tensor:
    """Map integer levels ``k in {0, ..., n_bins - 1}`` to continuous values
    ``(k + u) / n_bins - 1/2`` in ``[-1/2, 1/2)`` with ``u ~ U[0, 1)`` (uniform
    dequantisation; ``noise=False`` uses the bin centres ``u = 1/2``)."""
    levels = levels.to(torch.get_default_dtype()) if not levels.is_floating_point() else levels
    if (levels < 0).any() or (levels > n_bins - 1).any():
        raise ValueError(f"dequantize: levels must lie in [0, {n_bins - 1}]")
    u = torch.rand(levels.shape, generator=generator, device=levels.device, dtype=levels.dtype) if noise else 0.5
    return (levels + u) / n_bins - 0.5


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, n_bins: int) -> torch.Tensor:
    """Bits per dimension of the discrete data from the continuous log-density of
    its dequantised version: ``-(log p(x) - D log n_bins) / (D log 2)`` (the
    dequantisation bound; ``x`` scaled to bins of width ``1 / n_bins``)."""
    return -(log_prob - num_dims * math.log(n_bins)) / (num_dims * math.log(2.0))


__all__ = [
    "ConditionalAffineCoupling",
    "FlowStep",
    "GaussianPrior",
    "GlowLevel",
    "MultiScaleGlow",
    "Squeeze",
    "bits_per_dim",
    "dequantize",
    "resize_condition",
    "standard_normal_log_prob",
    "use_coupling_implementation",
]
