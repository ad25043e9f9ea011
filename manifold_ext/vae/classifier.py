"""VAE-classifier (paper 000 §3.1, Eq. 21; Yang et al., 2022).

A VAE whose latent code also feeds a classification head: the encoder
q_phi(z|x) = N(mu(x), diag exp(logvar(x))), the decoder
p_theta(x|z) = N(x_mean(z), sigma_x^2 I) with a fixed pixel noise sigma_x, the
standard normal prior p(z), and the head h_psi(z). Training maximises Eq. 21,

    ELBO(x) + lambda * E_{z ~ q(z|x)}[y^T log h_psi(z)],

i.e. minimises mean_b [-ELBO_b + lambda * CE_b] with one reparameterised sample
per image. At test time the classifier is h_psi(mu(x)) (deterministic, so
white-box attacks get exact gradients), and ``elbo(x)`` is what test-time
purification (``manifold_ext.attacks.purify``, Eq. 22) maximises over x.

The ELBO's Gaussian terms (reconstruction log-likelihood and the closed-form
KL) run in the fused ``manifold_ext.ops.gaussian_elbo`` operator.

The networks are small MLPs on the flattened image (``net="mlp"``) or the
small ResNet and its mirror of ``vae.networks`` (``net="conv"``, the
convolutional VAE-classifier of the Table 1 reproduction): right-sized for
scikit-learn's 8x8 digits (the shipped stand-in for the paper's CelebA gender
task), and usable on small colour images (e.g. 32x32 CelebA crops) with wider
layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_ext._training import train_loop
from manifold_ext.ops import gaussian_elbo
from manifold_ext.vae.networks import ConvDecoder, ConvEncoder


def _mlp(sizes: Sequence[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class VAEClassifier(nn.Module):
    """VAE + latent classification head, trained jointly on ELBO + lambda * CE (Eq. 21).

    Args:
        image_shape: ``(C, H, W)`` of the inputs (pixels in [0, 1]).
        num_classes: number of classes of the head.
        latent_dim: dimension m of z.
        hidden: widths of the encoder's hidden layers (the decoder mirrors them), for ``net="mlp"``.
        classifier_hidden: width of the head's hidden layer (0: a linear head).
        decoder_std: sigma_x of the Gaussian decoder p(x|z) = N(x_mean(z), sigma_x^2 I).
        net: ``"mlp"`` (default: MLPs on the flattened image, widths ``hidden``) or ``"conv"``
            (``ConvEncoder`` / ``ConvDecoder``: the small ResNet and its mirror of ``vae.networks``,
            ``channels`` wide; H and W must be divisible by 4).
        channels: base channel count of the conv nets (``net="conv"`` only).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 2,
        latent_dim: int = 8,
        hidden: Sequence[int] = (256, 128),
        classifier_hidden: int = 64,
        decoder_std: float = 0.1,
        net: str = "mlp",
        channels: int = 32,
    ):
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(
                f"VAEClassifier: image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}"
            )
        if num_classes < 2:
            raise ValueError(f"VAEClassifier: num_classes must be >= 2, got {num_classes}")
        if latent_dim < 1:
            raise ValueError(f"VAEClassifier: latent_dim must be >= 1, got {latent_dim}")
        if not (decoder_std > 0 and math.isfinite(decoder_std)):
            raise ValueError(f"VAEClassifier: decoder_std must be a finite number > 0, got {decoder_std}")
        if net not in ("mlp", "conv"):
            raise ValueError(f"VAEClassifier: net must be 'mlp' or 'conv', got {net!r}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.latent_dim = int(latent_dim)
        self.decoder_logvar = 2.0 * math.log(decoder_std)  # log sigma_x^2, a constant of the model
        pixels = math.prod(self.image_shape)
        self.net = net
        if net == "conv":
            self.encoder = ConvEncoder(self.image_shape, 2 * latent_dim, hidden=channels)
            self.decoder = ConvDecoder(latent_dim, self.image_shape, hidden=channels)
        else:
            hidden = [int(h) for h in hidden]
            self.encoder = _mlp([pixels, *hidden, 2 * latent_dim])
            self.decoder = _mlp([latent_dim, *reversed(hidden), pixels])
        head = [latent_dim, classifier_hidden, num_classes] if classifier_hidden else [latent_dim, num_classes]
        self.head = _mlp(head)

    # -- the three maps: f (encoder), f^dagger (decoder), h (head) --------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``[B, latent_dim]``, of q(z|x)."""
        self._check_input(x)
        stats = self.encoder(x if self.net == "conv" else x.flatten(1))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean ``x_mean(z)`` in [0, 1], ``[B, C, H, W]``."""
        return torch.sigmoid(self.decoder(z)).view(z.shape[0], *self.image_shape)

    def classify_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of the head h_psi(z)."""
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of the image-space classifier h(mu(x)) (what attacks target)."""
        mu, _ = self.encode(x)
        return self.classify_latent(mu)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``x_mean(mu(x))``: the decoder's picture of what the encoder saw."""
        return self.decode(self.encode(x)[0])

    # -- the objective ---------------------------------------------------------------------------
    def sample_latent(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reparameterised ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``."""
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * noise

    def elbo(self, x: torch.Tensor, *, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-image ELBO ``[B]`` (nats): E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), Eq. 21-22.

        The expectation is estimated with ``samples`` reparameterised draws
        (differentiable in x and in the parameters).
        """
        if samples < 1:
            raise ValueError(f"VAEClassifier.elbo: samples must be >= 1, got {samples}")
        mu, logvar = self.encode(x)
        total = x.new_zeros(x.shape[0])
        for _ in range(samples):
            z = self.sample_latent(mu, logvar, generator)
            elbo, _ = gaussian_elbo(x, self.decode(z), mu, logvar, decoder_logvar=self.decoder_logvar)
            total = total + elbo
        return total / samples

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, *, lam: float = 1.0, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Eq. 21 as a loss to minimise: ``mean(-ELBO + lam * CE)``, one z sample per image.

        Returns a dict with ``loss`` (scalar) and the detached batch means
        ``elbo``, ``kl``, ``ce`` and ``accuracy`` (of h on the sampled z).
        """
        mu, logvar = self.encode(x)
        z = self.sample_latent(mu, logvar, generator)
        elbo, kl = gaussian_elbo(x, self.decode(z), mu, logvar, decoder_logvar=self.decoder_logvar)
        logits = self.classify_latent(z)
        ce = F.cross_entropy(logits, y, reduction="none")
        loss = (-elbo + lam * ce).mean()
        return {
            "loss": loss,
            "elbo": elbo.detach().mean(),
            "kl": kl.detach().mean(),
            "ce": ce.detach().mean(),
            "accuracy": (logits.argmax(1) == y).float().mean().detach(),
        }

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"VAEClassifier: expected images [B, {', '.join(map(str, self.image_shape))}], "
                f"got shape {tuple(x.shape)}"
            )


@dataclasses.dataclass
class TrainingHistory:
    steps: int
    loss: list[float]
    elbo: list[float]
    ce: list[float]
    accuracy: list[float]


def train_vae_classifier(
    model: VAEClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 2e-3,
    lam: float = 20.0,
    seed: int = 0,
    progress: bool = True,
) -> TrainingHistory:
    """Fit ``model`` jointly on ELBO + lam * CE (Eq. 21) with Adam and a cosine learning-rate schedule.

    Seeded: minibatches and reparameterisation noise come from generators
    seeded with ``seed`` (parameter initialisation is the caller's, e.g.
    ``torch.manual_seed`` before building the model). Leaves the model in
    ``eval()`` mode.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"train_vae_classifier: need as many labels as images (> 0), got {x.shape[0]} and {y.shape[0]}"
        )
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_vae_classifier: steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if y.min() < 0 or y.max() >= model.num_classes:
        raise ValueError(f"train_vae_classifier: labels must lie in 0..{model.num_classes - 1}")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    noise_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def step_loss(step: int, batch_generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=batch_generator).to(device)
        return model.loss(x[index], y[index], lam=lam, generator=noise_generator)

    model.train()
    log = train_loop(
        model.parameters(),
        step_loss,
        steps=steps,
        lr=lr,
        seed=seed,
        desc="training VAE-classifier",
        progress=progress,
        log_every=100,
        postfix=("elbo", "ce"),
    )
    model.eval()
    return TrainingHistory(steps, log.loss, log.metrics["elbo"], log.metrics["ce"], log.metrics["accuracy"])
