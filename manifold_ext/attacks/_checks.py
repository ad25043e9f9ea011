"""Input validation shared by the attacks and the purification (one place, one wording)."""

from __future__ import annotations

import math

import torch


def check_images(x: torch.Tensor, clip: tuple[float, float], who: str) -> None:
    """x must be a floating [B, ...] batch whose values lie in the pixel range ``clip``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: x must have a floating-point dtype, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{who}: x must be a batch [B, ...] (rank >= 2), got shape {tuple(x.shape)}")
    low, high = check_clip(clip, who)
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{who}: x contains NaN or infinite values")
    if x.numel():
        x_min, x_max = x.min().item(), x.max().item()
        if x_min < low or x_max > high:
            raise ValueError(
                f"{who}: x has values in [{x_min:.4g}, {x_max:.4g}], outside the pixel range "
                f"clip=({low:g}, {high:g}); scale the images into that range or pass the range they use as clip"
            )


def check_clip(clip: tuple[float, float], who: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: clip must be a pair (low, high) of numbers, got {clip!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{who}: clip must be a finite pixel range with low < high, got ({low}, {high})")
    return low, high


def check_labels(x: torch.Tensor, y: torch.Tensor, who: str) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{who}: y must be a torch.Tensor of labels, got {type(y).__name__}")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{who}: y must have one entry per image ({x.shape[0]}), got shape {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"{who}: x and y must be on the same device, got {x.device} and {y.device}")


def check_eps(eps: float, who: str, name: str = "eps") -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{who}: {name} must be a finite number >= 0, got {eps}")
    return eps


def check_step(step: float, who: str) -> float:
    step = float(step)
    if not math.isfinite(step) or step <= 0:
        raise ValueError(f"{who}: step must be a finite number > 0, got {step}")
    return step


def check_steps(steps: int, who: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{who}: steps must be an integer >= 1, got {steps!r}")
    return steps


def check_batch_size(batch_size: int | None, who: str) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{who}: batch_size must be None or an integer >= 1, got {batch_size!r}")


def broadcast_mask(mask: torch.Tensor, x: torch.Tensor, who: str) -> torch.Tensor:
    """The patch mask as a bool tensor shaped like x.

    Accepted shapes: ``[H, W]`` (same patch for every channel and image),
    ``[C, H, W]`` (one patch per image), or ``[B, C, H, W]`` / ``[B, 1, H, W]``
    (a patch per image), i.e. anything that broadcasts to x from the right with
    the spatial size of x.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{who}: mask must be a torch.Tensor (bool or 0/1), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(f"{who}: mask must be boolean or hold only 0 and 1")
        mask = mask != 0
    if x.dim() < 3:
        raise ValueError(f"{who}: patch attacks need images [B, C, H, W] (or [B, H, W]), got shape {tuple(x.shape)}")
    spatial = tuple(x.shape[-2:])
    ok = 2 <= mask.dim() <= x.dim() and tuple(mask.shape[-2:]) == spatial
    if ok:
        try:
            ok = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"{who}: mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(x.shape)}; "
            f"expected [H, W] = {list(spatial)}, [C, H, W] or [B, C, H, W] (broadcastable to the images)"
        )
    mask = mask.to(x.device).expand(x.shape)
    per_image = mask.reshape(x.shape[0], -1).any(1) if x.shape[0] else torch.ones(0, dtype=torch.bool)
    if not bool(per_image.all()):
        raise ValueError(f"{who}: mask selects no pixel (for at least one image); a patch needs at least one pixel")
    return mask
