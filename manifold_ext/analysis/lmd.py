"""Lift, Map, Detect: out-of-distribution detection with a diffusion model (paper ``001_…``,
Liu, Zhou and Weinberger, "Leveraging diffusion models for unsupervised out-of-distribution
detection on image manifold", Algorithms 1 and 2).

* **Lift**: mask half of the image with an alternating N x N checkerboard of patches
  (patch size L/N; the masked and kept patches swap at every attempt, so every part of
  the image is masked in some attempt).
* **Map**: inpaint the masked part with a diffusion model trained on in-distribution
  data (Algorithm 2, RePaint-style): from t = T down to 0, the known pixels are the
  original diffused to t - dt by q (Eq. 17), the unknown ones a DDPM step of p_theta
  from the current image at t, and the two are merged by the mask.
* **Detect**: the OOD score is the median over attempts of the distance between the
  original and the inpainted image (a diffusion model maps in-distribution images back
  near where they were and pulls OOD ones towards its own manifold).

The paper measures the distance by LPIPS (an ImageNet-pretrained AlexNet); nothing
downloads here, so the default is the mean squared error, the paper's Table 3
alternative; any ``distance(x, y) -> [B]`` can be passed.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext.diffusion.models import time_tensor
from manifold_ext.diffusion.schedules import NoiseSchedule
from manifold_ext.ops import ddpm_step, diffusion_forward_step


def checkerboard_mask(
    height: int, width: int, patches: int = 8, flip: bool = False, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[height, width]`` bool, True where the pixel is *kept* (known), False where it is inpainted.

    The image is cut into ``patches x patches`` patches (height and width divisible by
    ``patches``); every other patch is masked, starting with the top-left one masked;
    ``flip`` swaps kept and masked (the "alternating" checkerboard of the paper, Fig. 3).
    """
    if not isinstance(patches, int) or patches < 1:
        raise ValueError(f"checkerboard_mask: patches must be a positive integer, got {patches!r}")
    if height % patches or width % patches:
        raise ValueError(
            f"checkerboard_mask: image size {height}x{width} is not divisible into {patches}x{patches} patches"
        )
    rows = torch.arange(height, device=device) // (height // patches)
    cols = torch.arange(width, device=device) // (width // patches)
    kept = (rows[:, None] + cols[None, :]) % 2 == 1
    return ~kept if flip else kept


def _noise(shape, generator, dtype, device):
    noise_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=noise_device).to(device)


@torch.inference_mode()
def inpaint(
    model: nn.Module,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    known: torch.Tensor,
    dt: int = 1,
    resample: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Algorithm 2 of the LMD article (RePaint without / with resampling): fill where ``known`` is False.

    Args:
        model: eps_theta(x, t) trained on in-distribution images (eval mode).
        schedule: its noise schedule.
        images: ``[B, C, H, W]`` originals (the known pixels are taken from them).
        known: bool mask broadcastable to ``images`` (e.g. ``[H, W]`` or ``[B, 1, H, W]``), True = keep.
        dt: time step (a divisor of T): the unknown part moves t -> t - dt by ``ddpm_step``, the known part
            is drawn at t - dt by ``diffusion_forward_step`` from the original (Eq. 17).
        resample: RePaint's resampling: repeat each step this many times, re-noising the merged image
            from t - dt back to t in between (1 = Algorithm 2 as printed).
        generator: drives all noise.
    """
    if images.dim() < 2:
        raise ValueError(f"inpaint: images must be [B, *], got shape {list(images.shape)}")
    if known.dtype != torch.bool:
        raise ValueError(f"inpaint: known must be a bool mask (True = keep), got {known.dtype}")
    try:
        known = torch.broadcast_to(known.to(images.device), images.shape)
    except RuntimeError as error:
        raise ValueError(
            f"inpaint: mask of shape {list(known.shape)} does not broadcast to images {list(images.shape)}"
        ) from error
    if not isinstance(resample, int) or resample < 1:
        raise ValueError(f"inpaint: resample must be an integer >= 1, got {resample!r}")
    times = schedule.check_dt(dt)
    abar = schedule.abar
    x = _noise(images.shape, generator, images.dtype, images.device)  # x_T ~ N(0, I)
    for prev, t in reversed(list(zip(times[:-1], times[1:]))):
        for attempt in range(resample):
            eps = model(x, time_tensor(t, x.shape[0], x.device))  # the eps-net contract: int64 [B]
            noise = _noise(images.shape, generator, images.dtype, images.device) if prev > 0 else None
            unknown = ddpm_step(x, eps, abar(t), abar(prev), noise)  # p_theta(x_{t-dt} | x_t)
            if prev > 0:  # q(x_{t-dt} | x_0), Eq. 17 from abar_0 = 1
                known_part = diffusion_forward_step(
                    images, _noise(images.shape, generator, images.dtype, images.device), 1.0, abar(prev)
                )
            else:
                known_part = images
            merged = torch.where(known, known_part, unknown)
            if attempt + 1 < resample:  # RePaint: back to t by the forward process, and denoise again
                x = diffusion_forward_step(
                    merged, _noise(images.shape, generator, images.dtype, images.device), abar(prev), abar(t)
                )
            else:
                x = merged
    return x


def mse_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error ``[B]``."""
    return (x - y).flatten(1).square().mean(1)


@torch.inference_mode()
def lmd_scores(
    model: nn.Module,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    attempts: int = 10,
    patches: int = 8,
    dt: int = 1,
    resample: int = 1,
    distance=mse_distance,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
    progress: bool = False,
    return_reconstructions: bool = False,
):
    """LMD OOD scores (Algorithm 1): the median reconstruction distance over ``attempts`` inpaintings.

    Attempt ``i`` masks the alternating checkerboard (flipped on odd attempts). Returns
    ``(scores [N], distances [N, attempts])`` (higher = more likely OOD), plus the
    reconstructions ``[N, attempts, *]`` with ``return_reconstructions``.
    """
    if images.dim() != 4:
        raise ValueError(f"lmd_scores: images must be [N, C, H, W], got shape {list(images.shape)}")
    if not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"lmd_scores: attempts must be an integer >= 1, got {attempts!r}")
    if batch_size < 1:
        raise ValueError(f"lmd_scores: batch_size must be >= 1, got {batch_size}")
    height, width = images.shape[-2:]
    masks = [checkerboard_mask(height, width, patches, flip=bool(i % 2), device=images.device) for i in range(attempts)]
    distances = torch.empty(images.shape[0], attempts, dtype=torch.float64)
    recons = (
        torch.empty((images.shape[0], attempts, *images.shape[1:]), dtype=images.dtype)
        if return_reconstructions
        else None
    )
    batches = [(start, i) for start in range(0, images.shape[0], batch_size) for i in range(attempts)]
    for start, i in tqdm(batches, desc="lift-map-detect", unit="batch", disable=not progress, mininterval=0.5):
        chunk = images[start : start + batch_size]
        mapped = inpaint(model, schedule, chunk, masks[i], dt=dt, resample=resample, generator=generator)
        distances[start : start + chunk.shape[0], i] = distance(chunk, mapped).double().cpu()
        if recons is not None:
            recons[start : start + chunk.shape[0], i] = mapped.cpu()
    scores = distances.quantile(0.5, dim=1)  # the median (mean of the two middle values for even counts)
    return (scores, distances, recons) if return_reconstructions else (scores, distances)
