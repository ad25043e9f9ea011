"""Patch masks for the l_0 (patch) attacks."""

from __future__ import annotations

import torch


def patch_mask(
    image_size: tuple[int, int], top: int, left: int, height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """A bool ``[H, W]`` mask that is True on the rectangle ``[top, top+height) x [left, left+width)``.

    Paper 000 §3.2 uses a 16x32 patch on the forehead of CelebA faces; on 8x8
    digits a few pixels (e.g. a 2x3 patch) play that role. The rectangle must
    lie inside the image.
    """
    rows, cols = (int(s) for s in image_size)
    if rows < 1 or cols < 1:
        raise ValueError(f"patch_mask: image_size must be positive, got {tuple(image_size)}")
    if height < 1 or width < 1:
        raise ValueError(f"patch_mask: the patch must be at least 1x1, got {height}x{width}")
    if top < 0 or left < 0 or top + height > rows or left + width > cols:
        raise ValueError(
            f"patch_mask: a {height}x{width} patch at (top={top}, left={left}) does not fit a {rows}x{cols} image"
        )
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    mask[top : top + height, left : left + width] = True
    return mask
