"""Hierarchical autoencoders + normalising flows (paper 000 §2.1, Eq. 1-8, Fig. 1-4).

Levels ``i = 1..L`` run from the full image (``i = 1``) to the coarsest one; the
image pyramid is ``x_{i+1} = d(x_i)`` with ``d`` the 2x2 average pooling. Each
level has

* an autoencoder: encoder ``f_i: x_i -> y_i`` (``[c_y, r/2, r/2]``, fewer
  dimensions than ``x_i``) and decoder ``f'_i(y_i | x_{i+1})``, which sees the
  coarser image at every upsampling layer (the paper's conditioning of ``f'_i``);
* a flow ``g_i(y_i | x_{i+1}) = z_i ~ N(0, I)``: a multi-scale Glow whose
  coupling networks and priors see the coarser image (conditional coupling,
  slides 002 Eq. 16). The top level ``L`` is unconditional.

Generation follows Eq. 2-3 top-down: ``x'_L = f'_L(g'_L(z'_L))``, then
``x'_i = f'_i(g'_i(z'_i | x'_{i+1}) | x'_{i+1})``. Super-resolution runs the
same chain from a given low-resolution image (Fig. 4).

The log-likelihood (Eq. 5-8), per level, with everything in nats per image:

* ``log p_Z(z_i) = log N(z_i; 0, I)``, where ``z_i`` are the flow's standardised
  latents (so the learned split/top priors' ``-sum log sigma`` is part of
  ``log|det J_g|``). Eq. 6 as printed, ``1/2 log 2 pi + ||z_i||^2 / (2 d_i)``, is
  the *negative* of this divided by the latent dimension ``d_i`` (a per-dimension
  NLL); it is reported as ``nll_per_dim``.
* Eq. 5: ``log p_Y(y_i) = log p_Z(z_i) + log|det J_g(y_i)|`` (exact: ``g_i`` is a bijection).
* Eq. 7: ``log p_X(x_i) = log p_Y(y_i) + log|det J_f(x_i)|``. The encoder
  ``f_i: R^{D_i} -> R^{d_i}`` with ``d_i < D_i`` has a non-square ``d_i x D_i``
  Jacobian, so "``log|det J_f|``" is read as its volume factor
  ``sum_k log sigma_k(J_f) = 1/2 log det(J_f J_f^T)``, the sum of the logs of
  its ``d_i`` singular values: how ``f_i`` scales ``d_i``-dimensional volume in
  the directions it does not discard. It is computed exactly from the autograd
  Jacobian (``torch.func.jacrev``, one row per latent dimension) and the
  Cholesky factor of ``J_f J_f^T`` in float64; cost ``d_i`` backward passes per
  image: milliseconds at 8x8, seconds per image at 32x32 (``d_1 = 1024``).
* Eq. 8: ``log p(x) = sum_j [log p_X(x_j) + 1[j > 1] log|det J_d(x_{j-1})|]``.
  The downsampling ``d`` is linear; its ``D_j x D_{j-1}`` Jacobian has rows of
  four ``1/4`` entries, so ``J_d J_d^T = I / 4`` and the volume factor is
  ``-(D_j / 2) log 4 = -D_j log 2`` (a constant; checked against the generic
  singular-value formula in the tests).

These terms are the paper's; note what they are. With non-square autoencoders
``log p_X(x_i)`` is a density on the ``d_i``-dimensional manifold the
autoencoder spans (with respect to its volume), not a Lebesgue density on
``R^{D_i}``: off-manifold directions (the reconstruction error) are not scored.
Eq. 8 adds such per-level terms (each conditioned on the coarser level) as a
chain rule over the pyramid, so it is a likelihood *score* for comparing inputs
(Fig. 2, out-of-distribution detection), not a normalised density of ``x``.

Training follows the paper's order: all autoencoders jointly by the MSE of
Eq. 4 (decoders conditioned on the true coarser image), then, with the
autoencoders frozen, all flows jointly by ``-log p_Y`` (Eq. 5). See :func:`fit`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from manifold_ext import _checkpoint as ckpt
from manifold_ext._checkpoint import CheckpointError
from manifold_ext.flows.glow import MultiScaleGlow, standard_normal_log_prob

TRAINING_KIND = "flows.hierarchical.training"


def downsample(x: torch.Tensor) -> torch.Tensor:
    """The paper's downsampling block ``d``: 2x2 average pooling (halves H and W)."""
    return F.avg_pool2d(x, 2)


def downsample_log_volume(x_coarse_numel: int) -> float:
    """``log|det J_d|`` of 2x2 average pooling onto ``D`` coarse values: ``-D log 2``
    (``J_d J_d^T = I/4``; see the module docstring)."""
    return -x_coarse_numel * math.log(2.0)


def log_volume_factor(jacobian: torch.Tensor) -> torch.Tensor:
    """``sum_k log sigma_k(J)`` for a batch of Jacobians ``[B, m, n]``: the
    log-volume factor of a (possibly non-square) linear map, which equals
    ``log|det J|`` when ``m = n`` and ``1/2 log det(J J^T)`` when ``m < n``.

    Non-square: the Gram matrix of the smaller side is formed in float64 and its
    log-determinant taken by Cholesky (several times faster than an SVD of ``J``
    for ``1024 x 3072`` Jacobians); rank-deficient Jacobians fall back to the SVD
    (and give ``-inf``)."""
    m, n = jacobian.shape[-2:]
    if m == n:
        return torch.linalg.slogdet(jacobian).logabsdet
    wide = jacobian.double()
    gram = wide @ wide.mT if m < n else wide.mT @ wide
    chol, info = torch.linalg.cholesky_ex(gram)
    if bool((info == 0).all()):
        return chol.diagonal(dim1=-2, dim2=-1).log().sum(-1).to(jacobian.dtype)
    return torch.linalg.svdvals(jacobian).log().sum(-1)


def jacobian_log_volume(fn, x: torch.Tensor, rows_per_chunk: int = 2048) -> torch.Tensor:
    """``log_volume_factor`` of the Jacobian of ``fn`` (a per-sample map applied to a
    batch) at every sample of ``x`` ``[B, ...]``: ``[B]``. Exact, via autograd: one
    vector-Jacobian product per output dimension, batched over samples with
    ``vmap``; about ``rows_per_chunk`` products run at once to bound memory."""

    def single(sample: torch.Tensor) -> torch.Tensor:
        return fn(sample.unsqueeze(0)).flatten()

    if len(x) == 0:
        return x.new_zeros(0)
    out_dims = single(x[0].detach()).numel()
    jacobian_of = torch.func.vmap(torch.func.jacrev(single))
    out = []
    for chunk in x.split(max(1, rows_per_chunk // out_dims)):
        jac = jacobian_of(chunk.detach())  # [b, d_out, *x.shape[1:]]
        out.append(log_volume_factor(jac.flatten(2)))
    return torch.cat(out)


class LevelAutoencoder(nn.Module):
    """One level's autoencoder: ``f_i: [C, r, r] -> [c_y, r/2, r/2]`` and
    ``f'_i(y | x_{i+1})``. The conditional decoder predicts a residual on top of
    the upsampled coarse image and sees the coarse image at both resolutions.
    Smooth activations (SiLU) keep the encoder Jacobian defined everywhere."""

    def __init__(self, image_channels: int, latent_channels: int, hidden_channels: int, conditional: bool):
        super().__init__()
        self.image_channels = image_channels
        self.latent_channels = latent_channels
        self.conditional = conditional
        c, h = image_channels, hidden_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(c, h, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(h, h, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(h, latent_channels, 1),
        )
        cond_c = c if conditional else 0
        self.decoder_low = nn.Sequential(nn.Conv2d(latent_channels + cond_c, h, 3, padding=1), nn.SiLU())
        self.decoder_high = nn.Sequential(
            nn.Conv2d(h + cond_c, h, 3, padding=1), nn.SiLU(), nn.Conv2d(h, c, 3, padding=1)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, y: torch.Tensor, coarse: torch.Tensor | None) -> torch.Tensor:
        if self.conditional:
            if coarse is None:
                raise ValueError("LevelAutoencoder.decode: this level's decoder is conditioned on the coarser image")
            features = self.decoder_low(torch.cat([y, coarse], dim=1))
            up = F.interpolate(features, scale_factor=2, mode="nearest")
            coarse_up = F.interpolate(coarse, scale_factor=2, mode="nearest")
            return coarse_up + self.decoder_high(torch.cat([up, coarse_up], dim=1))
        features = F.interpolate(self.decoder_low(y), scale_factor=2, mode="nearest")
        return self.decoder_high(features)


@dataclasses.dataclass
class HierarchicalConfig:
    image_channels: int = 1
    image_size: int = 8
    levels: int = 3
    latent_channels: int = 2
    ae_hidden: int = 32
    flow_steps: int = 4
    flow_hidden: int = 32
    flow_levels: int = 2


@dataclasses.dataclass
class LevelLogProb:
    """Eq. 5-8 terms of one level, each ``[B]`` in nats (``nll_per_dim`` per dimension)."""

    log_pz: torch.Tensor  # log N(z_i; 0, I)
    nll_per_dim: torch.Tensor  # Eq. 6 as printed: -log_pz / d_i
    flow_logdet: torch.Tensor  # log|det J_g(y_i)|
    log_py: torch.Tensor  # Eq. 5
    ae_logdet: torch.Tensor  # log|det J_f(x_i)| (volume factor of the non-square Jacobian)
    log_px: torch.Tensor  # Eq. 7
    down_logdet: float  # log|det J_d(x_{i-1})| for i > 1, else 0 (Eq. 8)


class HierarchicalFlow(nn.Module):
    """The hierarchical normalising flow of paper 000 §2.1; see the module docstring."""

    def __init__(self, config: HierarchicalConfig | None = None, **overrides):
        super().__init__()
        config = dataclasses.replace(config or HierarchicalConfig(), **overrides)
        if config.levels < 1:
            raise ValueError(f"HierarchicalFlow: levels must be >= 1, got {config.levels}")
        if config.image_size % (2**config.levels):
            raise ValueError(
                f"HierarchicalFlow: image_size {config.image_size} must be divisible by 2**levels = {2**config.levels}"
            )
        self.config = config
        self.autoencoders = nn.ModuleList()
        self.flows = nn.ModuleList()
        for level in range(config.levels):
            conditional = level < config.levels - 1
            resolution = config.image_size // 2**level
            latent_size = resolution // 2
            self.autoencoders.append(
                LevelAutoencoder(config.image_channels, config.latent_channels, config.ae_hidden, conditional)
            )
            # Squeeze only where the latent grid allows; never squeeze below 1x1.
            squeeze_levels = int(math.log2(latent_size)) if latent_size > 1 else 0
            squeeze = squeeze_levels > 0
            flow_levels = max(1, min(config.flow_levels, squeeze_levels)) if squeeze else 1
            self.flows.append(
                MultiScaleGlow(
                    config.latent_channels,
                    flow_levels,
                    config.flow_steps,
                    config.flow_hidden,
                    condition_channels=config.image_channels if conditional else 0,
                    squeeze=squeeze,
                    image_size=(latent_size, latent_size),
                )
            )

    @property
    def levels(self) -> int:
        return self.config.levels

    def _check_image(self, x: torch.Tensor, level: int = 0) -> None:
        c, size = self.config.image_channels, self.config.image_size // 2**level
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, size, size):
            raise ValueError(
                f"HierarchicalFlow: expected images of shape [B, {c}, {size}, {size}], got {tuple(x.shape)}"
            )

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x_1, ..., x_L]`` with ``x_{i+1} = d(x_i)``."""
        self._check_image(x)
        out = [x]
        for _ in range(self.levels - 1):
            out.append(downsample(out[-1]))
        return out

    def _coarse(self, pyramid: list[torch.Tensor], level: int) -> torch.Tensor | None:
        return pyramid[level + 1] if level + 1 < self.levels else None

    # -- autoencoders (Eq. 4) ---------------------------------------------------

    def autoencoder_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 4, averaged over levels: ``1/(cN) sum_j ||x'_ij - x_ij||^2`` with each
        decoder conditioned on the true coarser image."""
        pyramid = self.pyramid(x)
        losses = [
            F.mse_loss(ae.decode(ae.encode(x_i), self._coarse(pyramid, i)), x_i)
            for i, (ae, x_i) in enumerate(zip(self.autoencoders, pyramid))
        ]
        return torch.stack(losses).mean()

    # -- flows (Eq. 5) ------------------------------------------------------------

    def flow_log_py(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``log p_Y(y_i | x_{i+1})`` per level (Eq. 5), each ``[B]``; gradients flow
        into the flows only when the autoencoders are frozen by the caller."""
        pyramid = self.pyramid(x)
        return [
            flow.log_prob(ae.encode(x_i), self._coarse(pyramid, i))
            for i, (ae, flow, x_i) in enumerate(zip(self.autoencoders, self.flows, pyramid))
        ]

    def flow_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Joint flow objective: ``-sum_i log p_Y(y_i)`` divided by ``sum_i d_i`` (nats per latent dimension)."""
        log_py = self.flow_log_py(x)
        dims = sum(flow.in_channels * math.prod(flow.image_size) for flow in self.flows)
        return -torch.stack(log_py).sum(0).mean() / dims

    # -- log-likelihood (Eq. 5-8) -----------------------------------------------

    def log_prob_terms(self, x: torch.Tensor, autoencoder_logdet: bool = True) -> list[LevelLogProb]:
        """Per-level Eq. 5-8 terms for images ``x`` ``[B, C, H, W]``. With
        ``autoencoder_logdet=False`` the (costly) encoder Jacobian term is zero."""
        pyramid = self.pyramid(x)
        terms = []
        for i, (ae, flow, x_i) in enumerate(zip(self.autoencoders, self.flows, pyramid)):
            with torch.no_grad():
                y_i = ae.encode(x_i)
                latents, flow_logdet = flow(y_i, self._coarse(pyramid, i))
                log_pz = sum(standard_normal_log_prob(z) for z in latents)
            d_i = y_i[0].numel()
            ae_logdet = jacobian_log_volume(ae.encode, x_i).detach() if autoencoder_logdet else torch.zeros_like(log_pz)
            log_py = log_pz + flow_logdet
            terms.append(
                LevelLogProb(
                    log_pz=log_pz,
                    nll_per_dim=-log_pz / d_i,
                    flow_logdet=flow_logdet,
                    log_py=log_py,
                    ae_logdet=ae_logdet,
                    log_px=log_py + ae_logdet,
                    down_logdet=downsample_log_volume(x_i[0].numel()) if i > 0 else 0.0,
                )
            )
        return terms

    def log_prob(self, x: torch.Tensor, autoencoder_logdet: bool = True) -> torch.Tensor:
        """Eq. 8 over all levels: ``sum_j log p_X(x_j) + sum_{j>1} log|det J_d(x_{j-1})|`` ``[B]``."""
        return total_log_prob(self.log_prob_terms(x, autoencoder_logdet))

    # -- generation (Eq. 2-3), reconstruction, super-resolution -------------------

    def _decode_from(self, level: int, z_or_none, coarse, n, temperature, generator):
        ae, flow = self.autoencoders[level], self.flows[level]
        if z_or_none is None:
            y = flow.sample(n, temperature, cond=coarse, generator=generator)
        else:
            y = flow.inverse(z_or_none, coarse)
        return ae.decode(y, coarse)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 3 with ``z'_i = z_i = g_i(f_i(x_i) | x_{i+1})``, decoded top-down, each
        level conditioned on the reconstruction above it (Fig. 3A)."""
        pyramid = self.pyramid(x)
        latents = [
            flow(ae.encode(x_i), self._coarse(pyramid, i))[0]
            for i, (ae, flow, x_i) in enumerate(zip(self.autoencoders, self.flows, pyramid))
        ]
        coarse = None
        for level in reversed(range(self.levels)):
            coarse = self._decode_from(level, latents[level], coarse, x.shape[0], 1.0, None)
        return coarse

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 3 with every ``z'_i ~ N(0, T^2 I)`` (Fig. 3B)."""
        coarse = None
        for level in reversed(range(self.levels)):
            coarse = self._decode_from(level, None, coarse, n, temperature, generator)
        return coarse

    @torch.no_grad()
    def super_resolve(
        self, low: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Generate a full-resolution image from a low-resolution one (Fig. 4): with
        ``low`` at level ``k`` (size ``image_size / 2^(k-1)``), sample
        ``z'_i ~ N(0, T^2 I)`` for ``i < k`` and decode top-down conditioned on ``low``."""
        size = low.shape[-1] if low.dim() == 4 else 0
        ratio = self.config.image_size // size if size and self.config.image_size % size == 0 else 0
        level = int(math.log2(ratio)) if ratio and ratio & (ratio - 1) == 0 else 0
        if level < 1 or level >= self.levels:
            raise ValueError(
                f"HierarchicalFlow.super_resolve: low-resolution size {size} must be image_size / 2^k "
                f"= {self.config.image_size} / 2^k for 1 <= k < levels = {self.levels} (got shape {tuple(low.shape)})"
            )
        self._check_image(low, level)
        coarse = low
        for lower in reversed(range(level)):
            coarse = self._decode_from(lower, None, coarse, low.shape[0], temperature, generator)
        return coarse


def total_log_prob(terms: list[LevelLogProb]) -> torch.Tensor:
    """Eq. 8: ``sum_j log p_X(x_j) + 1[j > 1] log|det J_d(x_{j-1})|``."""
    return sum(t.log_px + t.down_logdet for t in terms)


# ---------------------------------------------------------------------------
# Training in the paper's order, with progress bars and atomic checkpoints
# ---------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, payload: dict, meta: dict | None = None) -> None:
    """Write a verified checkpoint (content hash, ``meta`` header; see :mod:`manifold_ext._checkpoint`)
    to a temporary file, then rename it atomically: a crash never leaves a truncated checkpoint behind."""
    ckpt.write_checkpoint(path, payload, meta if meta is not None else {"kind": TRAINING_KIND})


def _fit_run(
    model: HierarchicalFlow, data: torch.Tensor, batch_size: int, autoencoder_lr: float, flow_lr: float, seed: int
) -> dict:
    """What identifies a fit: a checkpoint resumes it only if all of this agrees (step counts are checked apart)."""
    return {
        "model": ckpt.model_record(model),
        "fit": {"batch_size": batch_size, "autoencoder_lr": autoencoder_lr, "flow_lr": flow_lr, "seed": seed},
        "data": ckpt.tensor_fingerprint(data),
    }


def _check_resume(path, saved: dict, meta: dict, run: dict, model, autoencoder_steps: int, flow_steps: int) -> None:
    """CheckpointError unless the file continues this very run (a fresh run with these settings would
    pass through the saved state); nothing is loaded before this passes."""
    if meta.get("kind") != TRAINING_KIND:
        raise CheckpointError(
            path, f"holds a {meta.get('kind')!r} checkpoint, not a hierarchical fit ({TRAINING_KIND!r}) to resume"
        )
    remedy = "resume with the same model, data and settings, or give a new checkpoint path (or resume=False)"
    ckpt.require_fields_match(path, meta, run, "model", ("class", "config"), remedy)
    ckpt.require_match(path, meta, {"fit": run["fit"], "data": run["data"]}, remedy)
    phase, step = saved.get("phase"), saved.get("step")
    if phase not in ("autoencoder", "flow", "done") or not isinstance(step, int) or step < 0:
        raise CheckpointError(path, f"unreadable training position: phase {phase!r}, step {step!r}")
    done_autoencoder = len(saved.get("autoencoder_losses", []))
    if phase == "autoencoder" and step > autoencoder_steps:
        raise CheckpointError(
            path,
            f"autoencoder_steps differs: the file is at autoencoder step {step}, "
            f"this call asks for {autoencoder_steps} (fewer steps); {remedy}",
        )
    if phase != "autoencoder" and done_autoencoder != autoencoder_steps:
        raise CheckpointError(
            path,
            f"autoencoder_steps differs: the file finished the autoencoder phase after "
            f"{done_autoencoder} steps, this call asks for {autoencoder_steps}; {remedy}",
        )
    if phase != "autoencoder" and step > flow_steps:
        raise CheckpointError(
            path,
            f"flow_steps differs: the file is at flow step {step}, this call asks for "
            f"{flow_steps} (fewer steps); {remedy}",
        )
    ckpt.check_state_dict(path, model, saved.get("model", {}))


def _batches(data: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data) - batch_size + 1, batch_size):
            yield data[order[start : start + batch_size]]


@dataclasses.dataclass
class FitResult:
    autoencoder_losses: list[float]
    flow_losses: list[float]


def fit(
    model: HierarchicalFlow,
    data: torch.Tensor,
    *,
    autoencoder_steps: int = 2000,
    flow_steps: int = 2000,
    batch_size: int = 128,
    autoencoder_lr: float = 2e-3,
    flow_lr: float = 1e-3,
    dequantize_fn=None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> FitResult:
    """Train in the paper's two phases: all autoencoders jointly by Eq. 4, then all
    flows jointly by ``-log p_Y`` with the autoencoders frozen.

    ``data``: continuous images ``[N, C, H, W]`` (or discrete levels, with
    ``dequantize_fn`` mapping a batch to continuous values, applied afresh each
    step). With ``checkpoint``, the model, optimiser, phase and step are saved
    atomically every ``checkpoint_every`` steps and at the end of each phase, in
    a verified file (content hash, model config, settings, data fingerprint);
    ``resume`` continues from an existing checkpoint only when it belongs to
    this run: same model config, data, batch size, learning rates and seed, and
    no more steps done than this call asks for (more steps extend the run: the
    optimiser has no schedule, so that equals a fresh longer run). Otherwise a
    :class:`~manifold_ext._checkpoint.CheckpointError` names the field that
    differs, and the model and the file are left untouched.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prepare = dequantize_fn or (lambda batch: batch)
    state = {"phase": "autoencoder", "step": 0, "autoencoder_losses": [], "flow_losses": []}
    optimiser_state = None
    run = _fit_run(model, data, batch_size, autoencoder_lr, flow_lr, seed) if checkpoint is not None else None
    if checkpoint is not None and resume and Path(checkpoint).exists():
        saved, meta = ckpt.read_checkpoint(checkpoint, map_location=device)
        _check_resume(checkpoint, saved, meta, run, model, autoencoder_steps, flow_steps)
        model.load_state_dict(saved["model"])
        state = {k: saved[k] for k in state}
        optimiser_state = saved.get("optimiser")

    def save(optimiser):
        # optimiser=None at the phase change: the flow phase starts with a fresh optimiser.
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    **state,
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict() if optimiser is not None else None,
                },
                {"kind": TRAINING_KIND, **run},
            )

    def run_phase(optimiser, phase_loss, steps, losses, desc, shown, clip_parameters=None):
        """Adam steps ``state["step"]`` .. ``steps`` - 1 of one phase on fresh minibatches: each loss appended to
        ``state[losses]``, the bar showing it every 50 steps as ``shown`` = (name, format), a checkpoint every
        ``checkpoint_every`` steps; with ``clip_parameters``, their gradient norm is clipped to 50 first."""
        batches = _batches(data, min(batch_size, len(data)), generator)
        name, number_format = shown
        bar = tqdm(range(state["step"], steps), desc=desc, unit="step", disable=not progress, mininterval=0.5)
        for step in bar:
            loss = phase_loss(prepare(next(batches)).to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if clip_parameters is not None:
                torch.nn.utils.clip_grad_norm_(clip_parameters, 50.0)
            optimiser.step()
            state[losses].append(loss.item())
            state["step"] = step + 1
            if step % 50 == 0:
                bar.set_postfix({name: format(loss.item(), number_format)})
            if checkpoint_every and state["step"] % checkpoint_every == 0:
                save(optimiser)

    # Phase 1: autoencoders (Eq. 4).
    if state["phase"] == "autoencoder":
        params = [p for ae in model.autoencoders for p in ae.parameters()]
        optimiser = torch.optim.Adam(params, lr=autoencoder_lr)
        if optimiser_state is not None:
            optimiser.load_state_dict(optimiser_state)
            optimiser_state = None
        model.train()
        run_phase(
            optimiser,
            model.autoencoder_loss,
            autoencoder_steps,
            "autoencoder_losses",
            "autoencoders (MSE, Eq. 4)",
            ("mse", ".4f"),
        )
        state["phase"], state["step"] = "flow", 0
        save(None)

    # Phase 2: flows (Eq. 5), autoencoders frozen.
    for p in model.autoencoders.parameters():
        p.requires_grad_(False)
    optimiser = torch.optim.Adam(model.flows.parameters(), lr=flow_lr)
    if optimiser_state is not None:
        optimiser.load_state_dict(optimiser_state)
    model.autoencoders.eval()
    model.flows.train()
    if state["step"] == 0:
        with torch.no_grad():  # ActNorm's data-dependent initialisation on a large batch
            init = data[torch.randperm(len(data), generator=generator)[:512]]
            model.flow_log_py(prepare(init).to(device))
    run_phase(
        optimiser,
        model.flow_loss,
        flow_steps,
        "flow_losses",
        "flows (-log p_Y, Eq. 5)",
        ("nll_per_dim", ".3f"),
        clip_parameters=list(model.flows.parameters()),
    )
    state["phase"] = "done"
    save(optimiser)
    for p in model.autoencoders.parameters():
        p.requires_grad_(True)
    model.eval()
    return FitResult(state["autoencoder_losses"], state["flow_losses"])


__all__ = [
    "HierarchicalConfig",
    "HierarchicalFlow",
    "LevelAutoencoder",
    "LevelLogProb",
    "FitResult",
    "downsample",
    "downsample_log_volume",
    "fit",
    "jacobian_log_volume",
    "log_volume_factor",
    "save_checkpoint",
    "total_log_prob",
]
