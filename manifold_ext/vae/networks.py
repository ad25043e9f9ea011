"""Encoder and decoder building blocks for small images (8x8, 8x16, 28x28, 28x56).

They are plain ``nn.Module`` pieces meant to be reused by every autoencoder in
``manifold_ext.vae`` (GridVAE, RAE, the GMM classifier, later VAE classifiers):
an encoder maps ``[B, C, H, W]`` to a feature vector ``[B, out_features]``
(a model splits it into mean and log-variance, or uses it as a code), a
decoder maps a latent ``[B, latent_dim]`` to per-pixel outputs ``[B, C, H, W]``
(logits for a Bernoulli likelihood, or means).

The conv nets follow the paper's "small ResNet and its mirror" (§4.1.2): two
stride-2 stages with a residual block each, so H and W must be divisible by 4.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions, channel count unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _check_image_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
    channels, height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(f"the conv nets downsample twice by 2: H and W must be divisible by 4, got {height}x{width}")
    return channels, height, width


class ConvEncoder(nn.Module):
    """[B, C, H, W] -> [B, out_features]: conv stem, two (stride-2 conv, residual block) stages, MLP head."""

    def __init__(self, image_shape: tuple[int, int, int], out_features: int, hidden: int = 32, head_width: int = 256):
        super().__init__()
        channels, height, width = _check_image_shape(image_shape)
        self.image_shape = tuple(image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * hidden, 4, stride=2, padding=1),
            ResidualBlock(2 * hidden),
            nn.ReLU(),
            nn.Conv2d(2 * hidden, 2 * hidden, 4, stride=2, padding=1),
            ResidualBlock(2 * hidden),
            nn.ReLU(),
            nn.Flatten(),
        )
        flat = 2 * hidden * (height // 4) * (width // 4)
        self.head = nn.Sequential(nn.Linear(flat, head_width), nn.ReLU(), nn.Linear(head_width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """[B, latent_dim] -> [B, C, H, W]: the mirror of ConvEncoder (MLP, two upsampling stages, conv out)."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], hidden: int = 32, head_width: int = 256):
        super().__init__()
        channels, height, width = _check_image_shape(image_shape)
        self.image_shape = tuple(image_shape)
        self.grid = (2 * hidden, height // 4, width // 4)
        self.head = nn.Sequential(
            nn.Linear(latent_dim, head_width), nn.ReLU(), nn.Linear(head_width, math.prod(self.grid)), nn.ReLU()
        )
        self.body = nn.Sequential(
            ResidualBlock(2 * hidden),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * hidden, hidden, 4, stride=2, padding=1),
            ResidualBlock(hidden),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(z).view(-1, *self.grid))


class MLPEncoder(nn.Module):
    """[B, *shape] -> [B, out_features]: flatten, then fully connected ReLU layers."""

    def __init__(self, image_shape: tuple[int, ...], out_features: int, hidden: tuple[int, ...] = (512, 256)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        widths = [math.prod(image_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """[B, latent_dim] -> [B, *shape]: fully connected ReLU layers, reshaped."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, ...], hidden: tuple[int, ...] = (256, 512)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        widths = [latent_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], math.prod(image_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)


def make_encoder(kind: str, image_shape: tuple[int, int, int], out_features: int, hidden: int = 32) -> nn.Module:
    """``kind``: ``"conv"`` (ConvEncoder) or ``"mlp"`` (MLPEncoder, widths 16*hidden, 8*hidden)."""
    if kind == "conv":
        return ConvEncoder(image_shape, out_features, hidden)
    if kind == "mlp":
        return MLPEncoder(image_shape, out_features, (16 * hidden, 8 * hidden))
    raise ValueError(f"unknown network kind {kind!r}; expected 'conv' or 'mlp'")


def make_decoder(kind: str, latent_dim: int, image_shape: tuple[int, int, int], hidden: int = 32) -> nn.Module:
    """The mirror of ``make_encoder``."""
    if kind == "conv":
        return ConvDecoder(latent_dim, image_shape, hidden)
    if kind == "mlp":
        return MLPDecoder(latent_dim, image_shape, (8 * hidden, 16 * hidden))
    raise ValueError(f"unknown network kind {kind!r}; expected 'conv' or 'mlp'")


LIKELIHOODS = ("bernoulli", "gaussian", "sigmoid-mse")


def reconstruction_nll(output: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Per-sample reconstruction loss, -log p(x|z) up to a constant and scale:

    * ``"bernoulli"``: output = logits, x in [0, 1], binary cross-entropy;
    * ``"gaussian"``: output = mean, unit variance: half the squared error;
    * ``"sigmoid-mse"``: ||x - sigmoid(output)||^2, the squared error of a decoder with a
      sigmoid output layer (thesis 004 Eq. 4.6 with §4.8.1's sigmoid final activation).
    """
    if likelihood == "bernoulli":
        per_pixel = nn.functional.binary_cross_entropy_with_logits(output, x, reduction="none")
    elif likelihood == "gaussian":
        per_pixel = 0.5 * (output - x) ** 2
    elif likelihood == "sigmoid-mse":
        per_pixel = (torch.sigmoid(output) - x) ** 2
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {', '.join(LIKELIHOODS)}")
    return per_pixel.flatten(1).sum(1)


def decoder_mean(output: torch.Tensor, likelihood: str) -> torch.Tensor:
    """The image a decoder output stands for (the sigmoid of the output for ``"bernoulli"`` and
    ``"sigmoid-mse"``, the Gaussian mean itself for ``"gaussian"``)."""
    return output if likelihood == "gaussian" else torch.sigmoid(output)
