"""Exhaustive search over the corners of a small patch: a reference for how strong a patch attack can be.

A patch (l_0) attack may set each of the k patch values anywhere in the pixel
range. Sign-gradient attacks (``patch_pgd``, ``patch_nag``) run for enough
iterations end with almost every patch value at the low or high end of the range
(a corner of the box [low, high]^k), and they climb from the clean image, so they
stop at a local maximum of the loss. For a patch of a few pixels, all 2^k corners
can be tried: ``patch_corner_search`` returns, per image, the corner with the
highest loss. Its accuracy is the best any attack confined to the corners can do
(interior patch values are not searched), so it tells whether a gradient attack
is weak or the patch is simply too small or badly placed to flip the classifier.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from manifold_ext.attacks._checks import broadcast_mask, check_clip, check_images, check_labels
from manifold_ext.attacks.gradient_attacks import PIXEL_RANGE, LossFn, cross_entropy_per_sample

MAX_CORNER_BITS = 16  # 65,536 corners: beyond that the search is no longer a cheap reference


@torch.no_grad()
def patch_corner_search(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    clip: tuple[float, float] = PIXEL_RANGE,
    corners_per_batch: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """The loss-maximising corner of the patch box for every image (exhaustive, 2^k model calls per image).

    Args:
        model: classifier, ``model(x) -> logits [B, K]``.
        x: images ``[B, C, H, W]`` in the pixel range ``clip``; y: labels ``[B]``.
        mask: the patch, as for ``patch_pgd`` (``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]``); it must select
            the same number k of values in every image, with k <= 16.
        loss_fn: per-sample loss to maximise (default cross-entropy), as for ``patch_pgd``.
        corners_per_batch: corners evaluated together (memory: ``corners_per_batch * B`` images).

    Returns the attacked images: x with the patch set to the corner of highest loss (ties: the first corner in
    binary counting order, all-low first).
    """
    who = "patch_corner_search"
    check_images(x, clip, who)
    check_labels(x, y, who)
    low, high = check_clip(clip, who)
    mask = broadcast_mask(mask, x, who)
    loss_fn = loss_fn or cross_entropy_per_sample
    counts = mask.reshape(x.shape[0], -1).sum(1)
    bits = int(counts[0]) if x.shape[0] else 0
    if x.shape[0] and not bool((counts == bits).all()):
        raise ValueError(
            f"{who}: the mask must select the same number of values in every image, "
            f"got between {int(counts.min())} and {int(counts.max())}"
        )
    if bits > MAX_CORNER_BITS:
        raise ValueError(
            f"{who}: the patch has {bits} values, 2^{bits} corners; at most {MAX_CORNER_BITS} "
            "values are searched exhaustively (use patch_pgd for larger patches)"
        )
    if corners_per_batch < 1:
        raise ValueError(f"{who}: corners_per_batch must be >= 1, got {corners_per_batch}")
    x = x.detach()
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
    # corner c sets patch value j to high where bit j of c is 1, else to low
    codes = torch.arange(2**bits, device=x.device)
    values = (codes[:, None] >> torch.arange(bits, device=x.device)) & 1
    values = low + (high - low) * values.to(x.dtype)  # [2^k, k]
    for chunk in tqdm(
        values.split(corners_per_batch),
        desc="patch corner search",
        unit="batch",
        disable=not progress,
        leave=False,
        mininterval=0.5,
    ):
        images = x.unsqueeze(0).repeat(chunk.shape[0], *([1] * x.dim()))  # [n, B, C, H, W]
        # images[:, mask] lists each image's k patch values in turn: [n, B * k]
        images[:, mask] = chunk[:, None, :].expand(-1, x.shape[0], -1).reshape(chunk.shape[0], -1)
        flat = images.reshape(-1, *x.shape[1:])
        loss = loss_fn(model(flat), y.repeat(chunk.shape[0])).reshape(chunk.shape[0], x.shape[0])
        chunk_best, index = loss.max(0)
        improved = chunk_best > best_loss
        best_loss = torch.where(improved, chunk_best, best_loss)
        winners = images[index, torch.arange(x.shape[0], device=x.device)]
        best[improved] = winners[improved]
    return best
