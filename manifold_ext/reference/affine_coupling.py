"""Reference affine coupling in plain PyTorch (the op's specification)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manifold_ext.ops.affine_coupling import affine_coupling
from manifold_ext.reference._spec import reference_of


def split_coupling_params(h: torch.Tensor, channels: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift t and raw scale r from the coupling network output h [B, 2C, ...]."""
    if layout == "cross":  # Glow's interleaved channels
        return h[:, 0::2], h[:, 1::2]
    if layout == "split":
        return h[:, :channels], h[:, channels:]
    raise ValueError(f"unknown layout {layout!r}; expected 'cross' or 'split'")


def log_scale(raw: torch.Tensor, scale: str, clamp: float) -> torch.Tensor:
    """log s for the three scale parameterisations."""
    if scale == "glow":
        return F.logsigmoid(raw + 2.0)  # s = sigmoid(r + 2)
    if scale == "exp":
        return raw  # s = exp(r)
    if scale == "softclamp":
        return clamp * torch.tanh(raw / clamp)  # s = exp(c tanh(r / c))
    raise ValueError(f"unknown scale {scale!r}; expected 'glow', 'exp' or 'softclamp'")


@reference_of(affine_coupling)
def affine_coupling_reference(x, h, *, scale, layout, clamp, reverse):
    """``y`` and the per-sample ``log|det J|``, written as the formulas read."""
    shift, raw = split_coupling_params(h, x.shape[1], layout)
    log_s = log_scale(raw, scale, clamp)
    s = torch.exp(log_s)
    shift_first = scale == "glow"
    if not reverse:
        y = (x + shift) * s if shift_first else x * s + shift
        logdet = log_s.flatten(1).sum(1)
    else:
        y = x / s - shift if shift_first else (x - shift) / s
        logdet = -log_s.flatten(1).sum(1)
    return y, logdet
