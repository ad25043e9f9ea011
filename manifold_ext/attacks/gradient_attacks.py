"""Gradient-sign attacks on any differentiable classifier (paper 000 §3.1).

* ``fgsm``: one signed-gradient step of size eps (Goodfellow et al., 2015).
* ``pgd_linf``: projected gradient descent in the l_inf ball of radius eps with a
  uniform random start (Madry et al., 2018).
* ``patch_pgd``: the l_0 ("patch") attack of §3.2: signed-gradient steps on the
  pixels of a mask only, any value in the pixel range allowed there, every other
  pixel untouched (paper: a 16x32 patch on the forehead, step 1/255, 2,048 steps).
* ``patch_nag``: the same patch attack with Nesterov accelerated gradient
  (NI-FGSM, Lin et al., 2020): the gradient is taken at the look-ahead point
  x_t + step * momentum * g_t, normalised by its l_1 norm and accumulated into
  the momentum g_{t+1} = momentum * g_t + grad / ||grad||_1; the step follows
  sign(g_{t+1}).

Conventions (all four): ``model(x)`` returns logits ``[B, K]``; the attack
maximises ``loss_fn(model(x), y)`` (default: cross-entropy), or minimises it
towards the labels ``y`` when ``targeted=True``. ``loss_fn`` may return
per-sample losses ``[B]`` or a scalar; per-sample losses are summed, so each
image's gradient is its own. Only the input gets gradients (model parameters'
``.grad`` are untouched); put the model in ``eval()`` mode first. Images must
lie in the pixel range ``clip`` (default [0, 1]) and stay there. Work runs in
chunks of ``batch_size`` images with a tqdm progress bar; random starts are
drawn for the whole input from ``seed`` before chunking, so the result does not
depend on ``batch_size``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from manifold_ext._progress import transient_bar
from manifold_ext.attacks._checks import (
    broadcast_mask,
    check_batch_size,
    check_clip,
    check_eps,
    check_images,
    check_labels,
    check_step,
    check_steps,
)
from manifold_ext.attacks.steps import nag_momentum_update, projected_step

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
IterationCallback = Callable[[int, torch.Tensor, slice], None]
PIXEL_RANGE = (0.0, 1.0)


def cross_entropy_per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default attack loss: per-sample cross-entropy ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none")


def input_gradient(
    model: Callable, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, targeted: bool = False
) -> torch.Tensor:
    """d loss / d x (its negative when targeted), i.e. the direction that helps the attacker."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = loss_fn(model(x), y)
        if loss.dim() > 0:
            loss = loss.sum()
        (grad,) = torch.autograd.grad(loss, x)
    return -grad if targeted else grad


def _chunks(n: int, batch_size: int | None):
    size = n if batch_size is None else batch_size
    for start in range(0, n, max(size, 1)):
        yield slice(start, min(n, start + size))


def _generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def fgsm(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    loss_fn: LossFn | None = None,
    clip: tuple[float, float] = PIXEL_RANGE,
    targeted: bool = False,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Fast gradient sign method: ``x_adv = clip(x + eps * sign(grad))``.

    Args:
        model: differentiable classifier, ``model(x) -> logits [B, K]``.
        x: images ``[B, ...]`` in the pixel range ``clip``.
        y: labels ``[B]`` (the true ones, or the targets when ``targeted``).
        eps: l_inf size of the step (>= 0).

    Returns the adversarial images (detached, same shape and dtype as ``x``).
    """
    who = "fgsm"
    check_images(x, clip, who)
    check_labels(x, y, who)
    eps = check_eps(eps, who)
    check_batch_size(batch_size, who)
    low, high = check_clip(clip, who)
    loss_fn = loss_fn or cross_entropy_per_sample
    out = torch.empty_like(x)
    for part in _chunks(x.shape[0], batch_size):
        x0 = x[part].detach()
        grad = input_gradient(model, x0, y[part], loss_fn, targeted)
        out[part] = projected_step(x0, grad, x0, step=eps, eps=eps, low=low, high=high)
    return out


def pgd_linf(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    step: float | None = None,
    steps: int = 40,
    random_start: bool = True,
    loss_fn: LossFn | None = None,
    clip: tuple[float, float] = PIXEL_RANGE,
    targeted: bool = False,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """l_inf projected gradient descent (Madry et al., 2018).

    ``x_{t+1} = Proj_{||x' - x||_inf <= eps, x' in clip}(x_t + step * sign(grad))``,
    starting from ``x + U(-eps, eps)`` (clipped) when ``random_start``.

    Args:
        eps: radius of the l_inf ball (>= 0).
        step: step size (> 0); default ``eps / 4`` (``2.5 * eps / steps`` would
            also reach the boundary; eps/4 is the usual choice for 40 steps).
        steps: number of iterations (>= 1).
        seed: seed of the random start (``None``: torch's global generator).

    Returns the adversarial images (detached).
    """
    who = "pgd_linf"
    check_images(x, clip, who)
    check_labels(x, y, who)
    eps = check_eps(eps, who)
    if step is None:
        step = eps / 4 if eps > 0 else 1.0  # with eps = 0 the projection keeps x whatever the step
    step = check_step(step, who)
    steps = check_steps(steps, who)
    check_batch_size(batch_size, who)
    low, high = check_clip(clip, who)
    loss_fn = loss_fn or cross_entropy_per_sample
    x = x.detach()
    start = x
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=_generator(x.device, seed), device=x.device, dtype=x.dtype)
        start = (x + (2 * noise - 1) * eps).clamp_(low, high)
    out = torch.empty_like(x)
    parts = list(_chunks(x.shape[0], batch_size))
    with transient_bar(steps * len(parts), "PGD (l_inf)", progress) as bar:
        for part in parts:
            x0, x_adv, labels = x[part], start[part].clone(), y[part]
            for _ in range(steps):
                grad = input_gradient(model, x_adv, labels, loss_fn, targeted)
                x_adv = projected_step(x_adv, grad, x0, step=step, eps=eps, low=low, high=high)
                bar.update(1)
            out[part] = x_adv
    return out


def _patch_start(
    x: torch.Tensor, mask: torch.Tensor, random_start: bool, seed: int | None, low: float, high: float
) -> torch.Tensor:
    if not random_start:
        return x
    noise = torch.rand(x.shape, generator=_generator(x.device, seed), device=x.device, dtype=x.dtype)
    return torch.where(mask, low + (high - low) * noise, x)


def patch_pgd(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    step: float = 1 / 255,
    steps: int = 2048,
    random_start: bool = False,
    loss_fn: LossFn | None = None,
    clip: tuple[float, float] = PIXEL_RANGE,
    targeted: bool = False,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: bool = True,
    callback: IterationCallback | None = None,
) -> torch.Tensor:
    """Patch (l_0) PGD (paper 000 §3.2): signed-gradient steps on the masked pixels only.

    ``x_{t+1} = where(mask, clip(x_t + step * sign(grad)), x)``: inside the patch
    any value in the pixel range is allowed; outside it the image is unchanged.
    Paper setting: a 16x32 forehead patch, ``step = 1/255``, ``steps = 2048``.

    Args:
        mask: bool (or 0/1) tensor ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]``
            marking the patch (see ``patch_mask``); every image needs >= 1 pixel.
        random_start: start the patch pixels from uniform noise in the pixel
            range instead of the clean pixels (default: clean pixels, as the
            paper's step count already lets a pixel cross the whole range).
        callback: optional ``callback(iteration, x_adv, part)`` called after every
            iteration (1..steps) with the current adversarial images of the chunk
            ``x[part]`` (detached; do not modify them), e.g. to record accuracy
            against the number of iterations.

    Returns the adversarial images (detached).
    """
    return _patch_attack(
        "patch_pgd",
        model,
        x,
        y,
        mask,
        step=step,
        steps=steps,
        momentum=None,
        random_start=random_start,
        loss_fn=loss_fn,
        clip=clip,
        targeted=targeted,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        callback=callback,
    )


def patch_nag(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    step: float = 1 / 255,
    steps: int = 2048,
    momentum: float = 1.0,
    random_start: bool = False,
    loss_fn: LossFn | None = None,
    clip: tuple[float, float] = PIXEL_RANGE,
    targeted: bool = False,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: bool = True,
    callback: IterationCallback | None = None,
) -> torch.Tensor:
    """Patch PGD with Nesterov accelerated gradient (PGD-NAG / NI-FGSM, Lin et al., 2020).

    Per step, on the masked pixels only::

        x_look = clip(x_t + step * momentum * g_t)          # Nesterov look-ahead
        grad   = d loss / d x at x_look, restricted to the mask
        g_{t+1} = momentum * g_t + grad / ||grad||_1        # per-image l_1 normalisation
        x_{t+1} = where(mask, clip(x_t + step * sign(g_{t+1})), x)

    Args:
        momentum: decay factor mu of the accumulated gradient (>= 0; Lin et al. use 1.0).
        Others as in ``patch_pgd``.
    """
    momentum = float(momentum)
    if not momentum >= 0 or momentum != momentum or momentum == float("inf"):
        raise ValueError(f"patch_nag: momentum must be a finite number >= 0, got {momentum}")
    return _patch_attack(
        "patch_nag",
        model,
        x,
        y,
        mask,
        step=step,
        steps=steps,
        momentum=momentum,
        random_start=random_start,
        loss_fn=loss_fn,
        clip=clip,
        targeted=targeted,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        callback=callback,
    )


def _patch_attack(
    who,
    model,
    x,
    y,
    mask,
    *,
    step,
    steps,
    momentum,
    random_start,
    loss_fn,
    clip,
    targeted,
    seed,
    batch_size,
    progress,
    callback=None,
):
    check_images(x, clip, who)
    check_labels(x, y, who)
    step = check_step(step, who)
    steps = check_steps(steps, who)
    check_batch_size(batch_size, who)
    low, high = check_clip(clip, who)
    mask = broadcast_mask(mask, x, who)
    loss_fn = loss_fn or cross_entropy_per_sample
    x = x.detach()
    start = _patch_start(x, mask, random_start, seed, low, high)
    out = torch.empty_like(x)
    parts = list(_chunks(x.shape[0], batch_size))
    desc = "Patch-NAG" if momentum is not None else "Patch-PGD"
    with transient_bar(steps * len(parts), desc, progress) as bar:
        for part in parts:
            x0, x_adv, labels, patch = x[part], start[part].clone(), y[part], mask[part]
            velocity = torch.zeros_like(x0) if momentum is not None else None
            for iteration in range(1, steps + 1):
                if momentum is None:
                    grad = input_gradient(model, x_adv, labels, loss_fn, targeted)
                    direction = grad
                else:
                    look_ahead = (x_adv + (step * momentum) * velocity).clamp_(low, high)
                    grad = input_gradient(model, look_ahead, labels, loss_fn, targeted)
                    velocity = nag_momentum_update(velocity, grad, patch, momentum)
                    direction = velocity
                x_adv = projected_step(x_adv, direction, x0, step=step, eps=None, low=low, high=high, mask=patch)
                if callback is not None:
                    callback(iteration, x_adv, part)
                bar.update(1)
            out[part] = x_adv
    return out
