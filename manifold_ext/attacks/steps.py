"""The per-iteration update rules shared by the attacks and the purification.

Kept apart from the loops so each rule is written once. They are elementwise
(plus a per-image l_1 norm for NAG) and run under ``torch.no_grad``.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def projected_sign_step(x: torch.Tensor, direction: torch.Tensor, x_ref: torch.Tensor, *, step: float,
                        eps: float | None, low: float, high: float,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """One signed step and its projection onto the feasible set.

    ``x' = clip(x + step * sign(direction))`` then, for an l_inf budget ``eps``,
    ``x' = clamp(x', x_ref - eps, x_ref + eps)`` (and the pixel range again);
    with a ``mask``, pixels outside it are reset to ``x_ref`` (l_0 / patch
    constraint). ``eps=None`` means no l_inf budget.
    """
    out = x + step * torch.sign(direction)
    if eps is not None:
        out = torch.minimum(torch.maximum(out, x_ref - eps), x_ref + eps)
    out = out.clamp_(low, high)
    if mask is not None:
        out = torch.where(mask, out, x_ref)
    return out


@torch.no_grad()
def nag_momentum_update(velocity: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor | None,
                        momentum: float) -> torch.Tensor:
    """``g_{t+1} = momentum * g_t + grad / ||grad||_1`` per image, over the masked pixels (Lin et al., 2020)."""
    if mask is not None:
        grad = torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return momentum * velocity + grad / l1
