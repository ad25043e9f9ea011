"""GridVAE: a VAE with a mixture-of-Gaussians prior whose components sit on a
Cartesian grid (paper 000 §4.1-4.2, Eq. 23-27).

Prior (Eq. 24): p(z) = 1/K sum_k N(z | mu_k, sigma^2 I), the mu_k being every
point of a grid {a_1, ..., a_m}^n (default: n = 2, a = -2, -1, 0, 1, 2, 3,
sigma = 1/3, so K = 36 components, one per two-digit class). Because the
weights are equal and the grid is a Cartesian product, this mixture factorises
over dimensions:

    p(z) = prod_i (1/m) sum_j N(z_i | a_j, sigma^2),

so log p(z) costs O(n m) instead of O(m^n); ``GridPrior.log_prob`` uses this
(``log_prob_components`` is the literal K-component form, for checking).

KL term of the ELBO (Eq. 23), two ways (``kl=``):

* ``"mc"``: Eq. 25, E_q[log q(z|x) - log p(z)] with the full mixture prior,
  estimated with the reparametrised sample z (the entropy of q is taken in
  closed form, which has the same expectation and less variance);
* ``"closest"``: Eq. 27, the closed-form KL to the closest grid component only,
  through the fused ``closest_centre_kl`` op (any latent size).

Guided training (§4.2.2) replaces the closest centre by the attribute's
centre (``target``); partially guided training does so on a ``mask`` of
dimensions. In ``"mc"`` mode, guided dimensions use the one component
N(target_i, sigma^2) instead of the mixture.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from manifold_ext._training import train_loop
from manifold_ext.ops import closest_centre_kl
from manifold_ext.vae.networks import decoder_mean, make_decoder, make_encoder, reconstruction_nll

LOG_2PI = math.log(2.0 * math.pi)


class GridPrior(nn.Module):
    """The grid mixture prior of Eq. 24: components N(c, sigma^2 I) at every point c of axis^n.

    Args:
        dim: latent size n.
        axis: the grid coordinates of every dimension, evenly spaced and increasing
            (default -2, -1, 0, 1, 2, 3).
        sigma: standard deviation of each component (default 1/3).
    """

    def __init__(self, dim: int = 2, axis: Sequence[float] = (-2, -1, 0, 1, 2, 3), sigma: float = 1.0 / 3.0):
        super().__init__()
        axis = torch.as_tensor(axis, dtype=torch.float64)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if axis.dim() != 1 or len(axis) < 1:
            raise ValueError("axis must be a non-empty 1-D sequence of grid coordinates")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
        steps = axis.diff()
        if len(axis) > 1 and (steps.min() <= 0 or (steps - steps[0]).abs().max() > 1e-9 * steps[0]):
            raise ValueError(f"axis must be evenly spaced and increasing, got {axis.tolist()}")
        self.dim = dim
        self.sigma = float(sigma)
        self.spacing = float(steps[0]) if len(axis) > 1 else 1.0
        self.low, self.high = float(axis[0]), float(axis[-1])
        self.register_buffer("axis", axis.float())

    @property
    def points_per_dim(self) -> int:
        return len(self.axis)

    @property
    def num_components(self) -> int:
        return self.points_per_dim**self.dim

    def centres(self) -> torch.Tensor:
        """All K = m^n component means, [K, n] (row k = grid_index k in row-major order)."""
        return torch.cartesian_prod(*[self.axis] * self.dim).reshape(-1, self.dim)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of Eq. 24, [B], via the per-dimension factorisation."""
        diff = (z.unsqueeze(-1) - self.axis) / self.sigma  # [B, n, m]
        log_normal = -0.5 * diff**2 - math.log(self.sigma) - 0.5 * LOG_2PI
        return (torch.logsumexp(log_normal, dim=-1) - math.log(self.points_per_dim)).sum(-1)

    def log_prob_components(self, z: torch.Tensor) -> torch.Tensor:
        """The same log p(z), literally as 1/K sum_k N(z | mu_k, sigma^2 I) (small grids only)."""
        diff = (z.unsqueeze(1) - self.centres()) / self.sigma  # [B, K, n]
        log_normal = (-0.5 * diff**2 - math.log(self.sigma) - 0.5 * LOG_2PI).sum(-1)
        return torch.logsumexp(log_normal, dim=1) - math.log(self.num_components)

    def component_log_prob(self, z: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Per-dimension log N(z_i | centre_i, sigma^2), [B, n]."""
        return -0.5 * ((z - centre) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * LOG_2PI

    def nearest_index(self, z: torch.Tensor) -> torch.Tensor:
        """Per-dimension index (0..m-1) of the nearest grid coordinate, [B, n] int64."""
        index = torch.round((z - self.low) / self.spacing)
        return index.clamp(0, self.points_per_dim - 1).long()

    def coordinates(self, index: torch.Tensor) -> torch.Tensor:
        """Grid coordinates of per-dimension indices (e.g. attribute values 0..m-1), float."""
        if (index < 0).any() or (index >= self.points_per_dim).any():
            raise ValueError(f"grid indices must be in 0..{self.points_per_dim - 1}")
        return self.axis[index.long()]

    def component_index(self, index: torch.Tensor) -> torch.Tensor:
        """Row of ``centres()`` for per-dimension indices [B, n] (row-major flattening)."""
        flat = torch.zeros(index.shape[:-1], dtype=torch.long, device=index.device)
        for i in range(self.dim):
            flat = flat * self.points_per_dim + index[..., i]
        return flat

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` draws of z ~ p(z), [count, n]."""
        index = torch.randint(0, self.points_per_dim, (count, self.dim), generator=generator, device=self.axis.device)
        noise = torch.randn(count, self.dim, generator=generator, device=self.axis.device)
        return self.axis[index] + self.sigma * noise


class GridVAE(nn.Module):
    """VAE with the grid MoG prior (Eq. 23-27) for small images.

    Args:
        image_shape: (C, H, W) of the inputs, values in [0, 1] for the Bernoulli likelihood.
        latent_dim: n.
        prior: the grid prior (default ``GridPrior(latent_dim)``: axis -2..3, sigma 1/3).
        kl: ``"closest"`` (Eq. 27, fused op) or ``"mc"`` (Eq. 25, full mixture).
        sigma0: the component standard deviation used by ``"closest"`` (default: ``prior.sigma``).
        net: ``"conv"`` or ``"mlp"`` encoder/decoder (see ``manifold_ext.vae.networks``);
            or pass ``encoder`` (-> [B, 2n]) and ``decoder`` modules.
        hidden: width of the default networks.
        likelihood: ``"bernoulli"`` (decoder outputs logits) or ``"gaussian"``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 8, 16),
        latent_dim: int = 2,
        *,
        prior: GridPrior | None = None,
        kl: str = "closest",
        sigma0: float | None = None,
        net: str = "conv",
        hidden: int = 32,
        likelihood: str = "bernoulli",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        if kl not in ("closest", "mc"):
            raise ValueError(f"kl must be 'closest' (Eq. 27) or 'mc' (Eq. 25), got {kl!r}")
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.prior = prior if prior is not None else GridPrior(latent_dim)
        if self.prior.dim != latent_dim:
            raise ValueError(f"prior has dim {self.prior.dim} but latent_dim is {latent_dim}")
        self.kl_mode = kl
        self.sigma0 = float(sigma0) if sigma0 is not None else self.prior.sigma
        self.likelihood = likelihood
        self.encoder = encoder if encoder is not None else make_encoder(net, image_shape, 2 * latent_dim, hidden)
        self.decoder = decoder if decoder is not None else make_decoder(net, latent_dim, image_shape, hidden)

    # -- the model ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar))): ``(mu, logvar)``, each [B, n]."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-15.0, 10.0)  # keeps exp(logvar) finite early in training

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for z [B, n]: logits (Bernoulli) or means, [B, C, H, W]."""
        return self.decoder(z)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The images decoded from z, in [0, 1] for the Bernoulli likelihood."""
        return decoder_mean(self.decode(z), self.likelihood)

    def kl_divergence(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        z: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per sample, [B] (see the module docstring for the two modes).

        ``target`` [B, n]: guided centres (grid coordinates); ``mask`` [n] or [B, n] bool:
        which dimensions ``target`` guides (partially guided). ``z`` is needed by ``"mc"``.
        """
        prior = self.prior
        if self.kl_mode == "closest":
            kl, _ = closest_centre_kl(
                mu,
                logvar,
                sigma0=self.sigma0,
                spacing=prior.spacing,
                offset=prior.low,
                low=prior.low,
                high=prior.high,
                target=target,
                mask=mask,
            )
            return kl
        if z is None:
            raise ValueError("kl='mc' estimates Eq. 25 from a sample: pass z")
        neg_entropy = -0.5 * (LOG_2PI + 1.0 + logvar).sum(1)  # E_q log q(z|x), closed form
        diff = (z.unsqueeze(-1) - prior.axis) / prior.sigma  # [B, n, m]
        mixture = torch.logsumexp(-0.5 * diff**2, dim=-1) - math.log(prior.points_per_dim)  # per dimension
        log_prior = mixture - math.log(prior.sigma) - 0.5 * LOG_2PI  # [B, n]
        if target is not None:
            guided = prior.component_log_prob(z, target)
            log_prior = guided if mask is None else torch.where(mask, guided, log_prior)
        return neg_entropy - log_prior.sum(1)

    def forward(
        self, x: torch.Tensor, target: torch.Tensor | None = None, mask: torch.Tensor | None = None, beta: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """The negative ELBO (Eq. 23) of a batch: ``{"loss", "recon", "kl", "mu", "logvar"}``
        (``loss = mean(recon + beta * kl)``; recon and kl per sample)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparametrisation
        recon = reconstruction_nll(self.decode(z), x, self.likelihood)
        kl = self.kl_divergence(mu, logvar, z, target, mask)
        return {"loss": (recon + beta * kl).mean(), "recon": recon, "kl": kl, "mu": mu, "logvar": logvar}

    # -- using the grid -------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Posterior means mu(x), [B, n] (in evaluation batches)."""
        return torch.cat([self.encode(chunk)[0] for chunk in x.split(batch_size)])

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """Per-dimension grid index (0..m-1) of the centre nearest to mu(x), [B, n]."""
        return self.prior.nearest_index(self.embed(x))

    @torch.no_grad()
    def traverse(self, z0: torch.Tensor, dim: int, values: Sequence[float]) -> torch.Tensor:
        """Decode z0 [n] with dimension ``dim`` set to each of ``values``: [len(values), C, H, W]."""
        z = z0.reshape(1, -1).repeat(len(values), 1)
        z[:, dim] = torch.as_tensor(values, dtype=z.dtype, device=z.device)
        return self.decode_mean(z)

    @torch.no_grad()
    def sample_at(
        self,
        centres: torch.Tensor,
        per_centre: int = 1,
        spread: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images from chosen centres [K, n] (grid coordinates): ``per_centre`` draws of
        z ~ N(centre, spread^2 I) each (spread defaults to the prior's sigma; 0 decodes the
        centre itself). Returns [K, per_centre, C, H, W]."""
        spread = self.prior.sigma if spread is None else spread
        z = centres.unsqueeze(1).expand(-1, per_centre, -1)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        images = self.decode_mean((z + spread * noise).reshape(-1, self.latent_dim))
        return images.reshape(len(centres), per_centre, *images.shape[1:])

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` images from z ~ p(z), [count, C, H, W]."""
        return self.decode_mean(self.prior.sample(count, generator))


def train_grid_vae(
    model: GridVAE,
    images: torch.Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    attributes: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    warmup_steps: int = 0,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` by Adam on the negative ELBO; returns the per-step losses.

    Args:
        images: [N, C, H, W] training images.
        attributes: optional [N, n] per-dimension grid indices (0..m-1) of each image's
            attribute vector: guided training (the attribute's centre replaces the
            closest one, §4.2.2).
        mask: with ``attributes``, [n] or [N, n] bool: which dimensions are guided
            (partially guided); the others keep the closest centre / full mixture.
        warmup_steps: the KL weight rises linearly from 0 to 1 over these steps.
    """
    device = torch.device(device)
    model.to(device).train()
    images = images.to(device)
    targets = model.prior.coordinates(attributes.to(device)) if attributes is not None else None
    if mask is not None:
        if attributes is None:
            raise ValueError("a mask selects which attribute dimensions guide training: pass attributes too")
        mask = mask.to(device)

    def step_loss(step: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        batch = torch.randint(0, len(images), (batch_size,), device=device, generator=generator)
        beta = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        batch_target = targets[batch] if targets is not None else None
        batch_mask = mask[batch] if mask is not None and mask.dim() == 2 else mask
        out = model(images[batch], target=batch_target, mask=batch_mask, beta=beta)
        return {"loss": out["loss"], "kl": out["kl"].detach().mean()}

    log = train_loop(
        model.parameters(),
        step_loss,
        steps=steps,
        lr=lr,
        min_lr_fraction=0.05,
        generator=generator,
        desc=f"training GridVAE ({model.kl_mode} KL)",
        progress=progress,
        postfix=("kl",),
    )
    return log.loss
