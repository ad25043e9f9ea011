"""Regularised deterministic autoencoders with ex-post density estimation, and a
GMM classifier with rejection (thesis 004, ch. 3 and 4).

* ``RAE`` (thesis 004 Eq. 3.11): a deterministic autoencoder trained on
  L = L_REC + beta * 1/2 ||z||^2 + lambda * L_REG, with L_REG the decoder's
  weight decay (RAE-L2) or the gradient penalty ||grad_z D(z)||^2 (RAE-GP).
* ``ExPostGMM`` (§3.6): a Gaussian mixture fitted to the codes after training
  (scikit-learn ``GaussianMixture``), giving the RAE a sampler and a log-density.
* ``GMMClassifier`` (ch. 4, Eq. 4.6): one fixed latent centre per class; trained
  on ||x - g(f(x) + eps)||^2 + alpha ||f(x) - mu_y||^2 with constant-variance
  noise eps; predicts the nearest centre (the ``nearest_centre_kl`` op) and
  rejects inputs whose code is too far from it (Mahalanobis distance against a
  chi-square quantile) or whose reconstruction is too poor (§4.6); ``reclassify``
  labels an input by inverting the decoder from every class centre (§4.7, Eq. 4.8)
  and ``predict_with_defence`` composes the two (rejection, then reclassification
  of the rejected inputs, then rejection of fooling samples).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from manifold_ext._optional import require
from manifold_ext._progress import transient_bar
from manifold_ext._training import train_loop
from manifold_ext.ops import closest_centre_kl, nearest_centre_kl
from manifold_ext.vae.networks import decoder_mean, make_decoder, make_encoder, reconstruction_nll


class RAE(nn.Module):
    """Regularised autoencoder (thesis 004 Eq. 3.11).

    Args:
        image_shape: (C, H, W); latent_dim: code size.
        beta: weight of L_Z = 1/2 ||z||^2 (bounds the latent space).
        regulariser: ``"l2"`` (decoder weight decay), ``"gp"`` (decoder gradient penalty) or ``"none"``.
        lam: weight of the regulariser.
        net, hidden, likelihood, encoder, decoder: as for ``GridVAE``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int = 8,
        *,
        beta: float = 1e-2,
        regulariser: str = "l2",
        lam: float = 1e-4,
        net: str = "conv",
        hidden: int = 32,
        likelihood: str = "bernoulli",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        if regulariser not in ("l2", "gp", "none"):
            raise ValueError(f"regulariser must be 'l2', 'gp' or 'none', got {regulariser!r}")
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.beta, self.lam, self.regulariser, self.likelihood = beta, lam, regulariser, likelihood
        self.encoder = encoder if encoder is not None else make_encoder(net, image_shape, latent_dim, hidden)
        self.decoder = decoder if decoder is not None else make_decoder(net, latent_dim, image_shape, hidden)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return decoder_mean(self.decoder(z), self.likelihood)

    def regularisation(self, z: torch.Tensor) -> torch.Tensor:
        """L_REG of Eq. 3.11 (a scalar)."""
        if self.regulariser == "l2":
            return sum(p.square().sum() for p in self.decoder.parameters())
        if self.regulariser == "gp":
            z = z.detach().requires_grad_()
            out = self.decoder(z)
            (grad,) = torch.autograd.grad(out.sum(), z, create_graph=True)
            return grad.square().sum(1).mean()
        return z.new_zeros(())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        recon = reconstruction_nll(self.decoder(z), x, self.likelihood)
        code_penalty = 0.5 * z.square().sum(1)
        reg = self.regularisation(z)
        loss = (recon + self.beta * code_penalty).mean() + self.lam * reg
        return {"loss": loss, "recon": recon, "code_penalty": code_penalty, "regulariser": reg, "z": z}

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        return torch.cat([self.encode(chunk) for chunk in x.split(batch_size)])

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Per-sample squared error ||x - D(E(x))||^2, [B]."""
        return torch.cat(
            [(self.decode_mean(self.encode(c)) - c).square().flatten(1).sum(1) for c in x.split(batch_size)]
        )


class ExPostGMM:
    """Ex-post density estimate q_delta(z) of codes (thesis 004 §3.6): a scikit-learn
    ``GaussianMixture``, with torch in and out."""

    def __init__(self, n_components: int = 10, covariance_type: str = "full", seed: int = 0, **kwargs):
        mixture = require("sklearn.mixture", feature="ExPostGMM")
        self.gmm = mixture.GaussianMixture(
            n_components=n_components, covariance_type=covariance_type, random_state=seed, **kwargs
        )

    def fit(self, codes: torch.Tensor) -> "ExPostGMM":
        codes = codes.detach().cpu().double().numpy()
        if len(codes) < self.gmm.n_components:
            raise ValueError(
                f"need at least {self.gmm.n_components} codes to fit {self.gmm.n_components} components, "
                f"got {len(codes)}"
            )
        self.gmm.fit(codes)
        return self

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log q_delta(z), [B] float64."""
        return torch.from_numpy(self.gmm.score_samples(codes.detach().cpu().double().numpy()))

    def sample(self, count: int) -> torch.Tensor:
        """``count`` codes drawn from the mixture, [count, d] float32 (shuffled: scikit-learn
        returns them grouped by component)."""
        codes, _ = self.gmm.sample(count)
        order = np.random.default_rng(self.gmm.random_state).permutation(count)
        return torch.from_numpy(codes[order]).float()


def train_autoencoder(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "training",
    seed: int | None = None,
) -> list[float]:
    """Adam on ``model(x)["loss"]`` (or ``model(x, y)["loss"]`` with labels); returns the losses.

    Minibatches are drawn from a generator seeded with ``seed``, or from torch's global
    generator when ``seed`` is None (seed it with ``torch.manual_seed``).
    """
    device = torch.device(device)
    model.to(device).train()
    images = images.to(device)
    labels = labels.to(device) if labels is not None else None

    def step_loss(step: int, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:
            batch = torch.randint(0, len(images), (batch_size,), device=device)
        else:
            batch = torch.randint(0, len(images), (batch_size,), generator=generator).to(device)
        out = model(images[batch]) if labels is None else model(images[batch], labels[batch])
        return out["loss"]

    log = train_loop(
        model.parameters(), step_loss, steps=steps, lr=lr, min_lr_fraction=0.05, seed=seed, desc=desc, progress=progress
    )
    model.eval()
    return log.loss


def _threshold(index: int, doc: str) -> property:
    """A float property stored in ``self.thresholds[index]`` (a buffer, so the thresholds travel with the
    state dict and the device)."""

    def get(self) -> float:
        return float(self.thresholds[index])

    def set(self, value: float) -> None:
        self.thresholds[index] = float(value)

    return property(get, set, doc=doc)


class GMMClassifier(nn.Module):
    """Classifier with a Gaussian-mixture latent space and rejection (thesis 004 ch. 4).

    Each class y owns a fixed latent centre mu_y (default: the one-hot vectors
    scaled by ``centre_scale``, so ``latent_dim = num_classes``). Training loss
    (Eq. 4.6): ||x - g(f(x) + eps)||^2 + alpha ||f(x) - mu_y||^2, eps ~ N(0, noise_std^2 I);
    the second term is 2 noise_std^2 times the guided closest-centre KL of a
    constant-variance posterior (``closest_centre_kl`` with ``target = mu_y``).

    After training, ``calibrate`` fits per class the covariance of the training
    codes around mu_y (ex post) and the two thresholds: tau_enc, the chi-square
    quantile of the squared Mahalanobis distance (``df = latent_dim``; the
    default 0.997 is the univariate 3-sigma rule), and tau_dec, the same
    quantile of the training reconstruction errors.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        latent_dim: int | None = None,
        centres: torch.Tensor | None = None,
        centre_scale: float = 3.0,
        noise_std: float = 0.5,
        alpha: float = 1.0,
        net: str = "conv",
        hidden: int = 32,
        likelihood: str = "bernoulli",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        if centres is None:
            latent_dim = latent_dim or num_classes
            if latent_dim < num_classes:
                raise ValueError("one-hot centres need latent_dim >= num_classes; pass centres for a smaller latent")
            centres = centre_scale * torch.eye(num_classes, latent_dim)
        if centres.shape[0] != num_classes:
            raise ValueError(f"centres must have one row per class ({num_classes}), got shape {tuple(centres.shape)}")
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.latent_dim = centres.shape[1]
        self.noise_std, self.alpha, self.likelihood = noise_std, alpha, likelihood
        self.register_buffer("centres", centres.float())
        self.encoder = encoder if encoder is not None else make_encoder(net, image_shape, self.latent_dim, hidden)
        self.decoder = decoder if decoder is not None else make_decoder(net, self.latent_dim, image_shape, hidden)
        self.register_buffer("precision", torch.eye(self.latent_dim).repeat(num_classes, 1, 1))  # [C, d, d]
        # (tau_enc, tau_dec), a buffer so that a saved state_dict keeps the calibration
        self.register_buffer("thresholds", torch.full((2,), math.inf, dtype=torch.float64))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return decoder_mean(self.decoder(z), self.likelihood)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        recon = reconstruction_nll(self.decoder(z + self.noise_std * torch.randn_like(z)), x, self.likelihood)
        # alpha ||f(x) - mu_y||^2 as the guided KL of N(f(x), noise_std^2 I) to N(mu_y, noise_std^2 I):
        # that KL is ||f(x) - mu_y||^2 / (2 noise_std^2).
        logvar = torch.full_like(z, 2.0 * math.log(self.noise_std))
        kl, _ = closest_centre_kl(z, logvar, sigma0=self.noise_std, target=self.centres[y])
        centre_term = 2.0 * self.noise_std**2 * kl
        return {"loss": (recon + self.alpha * centre_term).mean(), "recon": recon, "centre": centre_term, "z": z}

    @torch.no_grad()
    def nearest_class(self, z: torch.Tensor) -> torch.Tensor:
        """The class of the nearest centre (Euclidean), via the fused nearest-centre op."""
        _, index = nearest_centre_kl(z, torch.zeros_like(z), self.centres.to(z.dtype), 1.0)
        return index

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable class scores ``-1/2 ||f(x) - mu_c||^2``, [B, C].

        Up to a constant shared by all classes this is log N(f(x) | mu_c, I), so the
        argmax is the nearest centre (the label ``predict`` gives) and a softmax
        cross-entropy on these scores is the loss a white-box attacker on the
        classifier differentiates (the attacks in ``manifold_ext.attacks`` take
        ``model.logits`` as the model).
        """
        z = self.encode(x)
        return -0.5 * (z[:, None, :] - self.centres[None]).square().sum(-1)

    tau_enc = _threshold(0, "Rejection threshold on the squared Mahalanobis distance of the code (§4.6).")
    tau_dec = _threshold(1, "Rejection threshold on the reconstruction error (§4.6).")

    @property
    def calibrated(self) -> bool:
        """Whether ``calibrate`` has set both rejection thresholds (before it, both are +inf)."""
        return math.isfinite(self.tau_enc) and math.isfinite(self.tau_dec)

    def _mahalanobis2(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(z - mu_label)^T Sigma_label^{-1} (z - mu_label), [B] (the tau_enc test of §4.6)."""
        diff = z - self.centres[label]
        return torch.einsum("bi,bij,bj->b", diff, self.precision[label], diff)

    @staticmethod
    def _reconstruction_error(mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """||g(z) - x||^2 per sample over all but the first dimension, with g(z) the decoder's
        mean image (sigmoid of the logits for a Bernoulli decoder): the quantity tau_dec
        thresholds (§4.6) and Eq. 4.8 minimises."""
        return (mean - x).square().flatten(1).sum(1)

    @torch.no_grad()
    def scores(self, x: torch.Tensor, batch_size: int = 1024) -> dict[str, torch.Tensor]:
        """Per sample: ``label`` (nearest centre), ``mahalanobis2`` (squared Mahalanobis distance
        of the code to that class's centre), ``recon_error`` (squared error of the reconstruction)."""
        labels, distances, errors = [], [], []
        for chunk in x.split(batch_size):
            z = self.encode(chunk)
            label = self.nearest_class(z)
            distances.append(self._mahalanobis2(z, label))
            errors.append(self._reconstruction_error(self.decode_mean(z), chunk))
            labels.append(label)
        return {"label": torch.cat(labels), "mahalanobis2": torch.cat(distances), "recon_error": torch.cat(errors)}

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, y: torch.Tensor, quantile: float = 0.997, shrinkage: float = 1e-3) -> dict:
        """Fit the per-class code covariances and the rejection thresholds on training data."""
        chi2 = require("scipy.stats", feature="GMMClassifier.calibrate").chi2

        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        z = torch.cat([self.encode(chunk) for chunk in x.split(1024)])
        eye = torch.eye(self.latent_dim, device=z.device)
        for c in range(self.num_classes):
            diff = z[y == c] - self.centres[c]
            if len(diff) <= self.latent_dim:
                raise ValueError(f"class {c} has {len(diff)} samples: too few to fit a {self.latent_dim}-D covariance")
            cov = diff.T @ diff / len(diff)
            cov = cov + shrinkage * cov.diagonal().mean() * eye  # keeps it invertible
            self.precision[c] = torch.linalg.inv(cov)
        self.tau_enc = float(chi2.ppf(quantile, df=self.latent_dim))
        errors = self.scores(x)["recon_error"]
        self.tau_dec = float(torch.quantile(errors.double(), quantile))
        return {"tau_enc": self.tau_enc, "tau_dec": self.tau_dec}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``scores`` plus ``rejected_latent`` (mahalanobis2 > tau_enc), ``rejected_recon``
        (recon_error > tau_dec) and ``rejected`` (either)."""
        out = self.scores(x)
        out["rejected_latent"] = out["mahalanobis2"] > self.tau_enc
        out["rejected_recon"] = out["recon_error"] > self.tau_dec
        out["rejected"] = out["rejected_latent"] | out["rejected_recon"]
        return out

    def _check_input(self, x: torch.Tensor, who: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{who}: x must have a floating-point dtype, got {x.dtype}")
        if x.dim() != 1 + len(self.image_shape) or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{who}: x must be a batch of images [B, {', '.join(map(str, self.image_shape))}] "
                f"(the model's image_shape), got shape {tuple(x.shape)}"
            )
        if x.numel() and not torch.isfinite(x).all():
            raise ValueError(f"{who}: x contains NaN or infinite values")

    def _check_calibrated(self, who: str, alternative: str = "") -> None:
        if not self.calibrated:
            raise ValueError(
                f"{who}: the model is not calibrated (tau_enc = {self.tau_enc}, "
                f"tau_dec = {self.tau_dec}); call calibrate(x_train, y_train) first{alternative}"
            )

    def _invert_decoder(
        self, x: torch.Tensor, starts: torch.Tensor, steps: int, lr: float, bar
    ) -> tuple[torch.Tensor, ...]:
        """Eq. 4.8 for a chunk [B, ...]: z* = argmin_z ||g(z) - x||^2 from the k starts [k, d].

        The B*k problems are one Adam run on a [B, k, d] tensor: the loss is a sum of
        independent per-problem errors and Adam's moments are per coordinate, so each
        problem follows its own trajectory. Each keeps its best iterate; per sample the
        start with the lowest error wins. Returns (z* [B, d], error [B], start [B]).
        """
        batch, k = x.shape[0], starts.shape[0]
        target = x.detach().flatten(1)[:, None, :]  # [B, 1, P]
        z = starts[None].expand(batch, k, self.latent_dim).clone().requires_grad_(True)  # [B, k, d]
        optimiser = torch.optim.Adam([z], lr=lr)
        best_z = z.detach().clone()
        best_error = torch.full((batch, k), math.inf, device=x.device, dtype=target.dtype)
        for step in range(steps + 1):  # steps updates; the last pass only scores the final iterate
            with torch.enable_grad():
                mean = self.decode_mean(z.reshape(batch * k, self.latent_dim)).reshape(batch, k, target.shape[-1])
                error = (mean - target).square().sum(-1)  # [B, k], the per-problem ||g(z) - x||^2 of Eq. 4.8
                improved = error.detach() < best_error
                best_error = torch.where(improved, error.detach(), best_error)
                best_z = torch.where(improved[..., None], z.detach(), best_z)
                if step == steps:
                    break
                # only z gets a gradient: the decoder's parameters' .grad stay untouched
                (z.grad,) = torch.autograd.grad(error.sum(), z)
            optimiser.step()
            bar.update(1)
        start = best_error.argmin(1)  # §4.7: the start whose optimum reconstructs x best
        rows = torch.arange(batch, device=x.device)
        return best_z[rows, start], best_error[rows, start], start

    def reclassify(
        self,
        x: torch.Tensor,
        *,
        steps: int = 300,
        lr: float = 0.05,
        batch_size: int = 256,
        reject: bool = True,
        starts: torch.Tensor | None = None,
        progress: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Reclassification by decoder inversion (thesis 004 §4.7, Eq. 4.8).

        z* = argmin_z ||g(z) - x||^2 is found by Adam (``steps`` updates of size ``lr``)
        from each class centre mu_1..mu_k (k runs per image, batched together), keeping
        per image the run with the lowest reconstruction error; the label is the
        nearest centre of z*. The error is the one ``scores`` reports and ``tau_dec``
        thresholds: the squared distance between x and the decoder's mean image g(z).
        The optimisation is deterministic (no random starts).

        Args:
            x: images [B, *image_shape] (typically ones ``predict`` rejected).
            steps: Adam updates per run (>= 1); lr: Adam's step size (> 0).
            batch_size: images per chunk (each chunk optimises batch_size * k codes).
            reject: flag z* beyond tau_enc or an error beyond tau_dec as a fooling
                sample (needs ``calibrate``). ``False`` labels every image (higher
                coverage, for settings without fooling samples; §4.7), and the
                ``rejected*`` entries are then all False.
            starts: the initial codes [S, d] shared by every image; default the k
                class centres, the thesis' multi-start (one start can get stuck in a
                local minimum of Eq. 4.8; §4.7).

        Returns a dict of per-image tensors: ``label``, ``z`` (z*, [B, d]),
        ``recon_error``, ``mahalanobis2`` (of z* to its class's centre), ``start``
        (the index of the start of the winning run: its class with the default starts), ``rejected_latent``,
        ``rejected_recon`` and ``rejected`` (either).
        """
        who = "reclassify"
        self._check_input(x, who)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{who}: steps must be an integer >= 1, got {steps!r}")
        lr = float(lr)
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"{who}: lr must be a finite number > 0, got {lr}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{who}: batch_size must be an integer >= 1, got {batch_size!r}")
        if reject:
            self._check_calibrated(who, ", or pass reject=False to label every input without rejection")
        if starts is None:
            starts = self.centres
        if (
            not isinstance(starts, torch.Tensor)
            or starts.dim() != 2
            or starts.shape[0] < 1
            or starts.shape[1] != self.latent_dim
        ):
            shape = tuple(starts.shape) if isinstance(starts, torch.Tensor) else type(starts).__name__
            raise ValueError(f"{who}: starts must be codes [S, {self.latent_dim}] with S >= 1, got {shape}")
        starts = starts.detach().to(device=self.centres.device, dtype=self.centres.dtype)
        chunks = x.split(batch_size) if x.shape[0] else (x,)
        with transient_bar(steps * len(chunks), "reclassifying (Eq. 4.8)", progress) as bar:
            z, error, start = (
                torch.cat(parts) for parts in zip(*(self._invert_decoder(c, starts, steps, lr, bar) for c in chunks))
            )
        with torch.no_grad():
            label = self.nearest_class(z) if z.shape[0] else torch.zeros(0, dtype=torch.long, device=x.device)
            mahalanobis2 = self._mahalanobis2(z, label)
        out = {"label": label, "z": z, "recon_error": error, "mahalanobis2": mahalanobis2, "start": start}
        no = torch.zeros_like(label, dtype=torch.bool)
        out["rejected_latent"] = mahalanobis2 > self.tau_enc if reject else no
        out["rejected_recon"] = error > self.tau_dec if reject else no.clone()
        out["rejected"] = out["rejected_latent"] | out["rejected_recon"]
        return out

    def predict_with_defence(
        self,
        x: torch.Tensor,
        *,
        reject_fooling: bool = True,
        reclassify_all: bool = False,
        steps: int = 300,
        lr: float = 0.05,
        batch_size: int = 256,
        progress: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The full defence of thesis 004 §4.6-4.7: classify with rejection, then reclassify.

        1. ``predict``: nearest centre of f(x); flag x when its code is beyond tau_enc
           or its reconstruction g(f(x)) beyond tau_dec (§4.6).
        2. Every flagged image (all images with ``reclassify_all``) is reclassified by
           decoder inversion (``reclassify``, Eq. 4.8), which never trusts the encoder.
        3. With ``reject_fooling`` an image whose z* is still beyond a threshold is
           finally rejected as a fooling sample; without it every image gets a label.

        Needs ``calibrate`` first. Returns per-image tensors: ``label`` (final; for a
        finally rejected image, the label its z* would get), ``initial_label``
        (``predict``'s), ``rejected_initially`` (step 1), ``reclassified`` (went
        through step 2), ``label_changed`` (step 2 changed the label) and
        ``rejected`` (final). Accuracy with rejection, as in Table 4.1:
        ``correct = (label == y) & ~rejected``, error ``(label != y) & ~rejected``.
        """
        who = "predict_with_defence"
        self._check_input(x, who)
        self._check_calibrated(who)
        first = self.predict(x)
        flagged = first["rejected"]
        to_reclassify = torch.ones_like(flagged) if reclassify_all else flagged
        label = first["label"].clone()
        rejected = torch.zeros_like(flagged)
        if to_reclassify.any():
            second = self.reclassify(
                x[to_reclassify], steps=steps, lr=lr, batch_size=batch_size, reject=reject_fooling, progress=progress
            )
            label[to_reclassify] = second["label"]
            rejected[to_reclassify] = second["rejected"]
        return {
            "label": label,
            "initial_label": first["label"],
            "rejected_initially": flagged,
            "reclassified": to_reclassify,
            "label_changed": label != first["label"],
            "rejected": rejected,
        }
