"""Test-time purification by maximising the ELBO over the input (paper 000 §3.1, Eq. 22).

Given a (possibly attacked) image x_adv, Eq. 22 looks for a correction
eps_pfy = argmax_{eps in C_pfy} ELBO(x_adv + eps) and classifies x_adv + eps_pfy.
The maximisation is projected gradient ascent from eps = 0, by default 256
steps of size 1/255 (the paper's setting, "the same step size" as the attack):

    x_{t+1} = Proj_{C_pfy}(x_t + step * direction(d ELBO(x_t) / d x_t)),

with C_pfy = {x_adv + eps in the pixel range, ||eps||_inf <= eps_th}. For
patch (l_0) attacks the paper drops the budget (``eps=None``, the default): the
whole image may move, only the pixel range binds. The defender does not know
where a patch is, so the ascent never uses the attack's mask.

The paper does not state the update rule. ``rule="sign"`` is the PGD rule
(direction = sign of the gradient): every pixel moves by ``step`` each
iteration, so 256 steps can repaint a small image toward the decoder's picture
of the attacked (wrong) class. ``rule="scaled"`` (default) follows the
gradient itself, scaled so the most-changed pixel moves by ``step``; the
change then concentrates where the ELBO is worst, on the off-manifold patch.
On the 8x8 digits demo this restores 70% accuracy under Patch-PGD against 43%
with "sign" (README, "Demos").

The ELBO is estimated with ``samples`` reparameterised draws per step, from a
generator seeded with ``seed``. ``elbo_start``/``elbo_end`` in the result use
``eval_samples`` draws with one fixed noise seed, so they are comparable.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from manifold_ext._progress import transient_bar
from manifold_ext.attacks._checks import check_batch_size, check_clip, check_eps, check_images, check_step, check_steps
from manifold_ext.attacks.steps import STEP_RULES, projected_step


class ELBOClassifier(Protocol):
    """What ``purify`` needs of a model (``manifold_ext.vae.VAEClassifier`` is one)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # logits [B, K]

    def elbo(
        self, x: torch.Tensor, *, samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...  # [B], differentiable in x


@dataclasses.dataclass
class PurificationResult:
    x: torch.Tensor  # purified images, like the input
    logits: torch.Tensor  # [B, K] of the classifier on the purified images
    predictions: torch.Tensor  # [B] argmax of logits
    elbo_start: torch.Tensor  # [B] ELBO of the input
    elbo_end: torch.Tensor  # [B] ELBO of the purified images


def _elbo_fixed_noise(model: ELBOClassifier, x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        return model.elbo(x, samples=samples, generator=generator)


def elbo_input_gradient(
    model: ELBOClassifier, x: torch.Tensor, *, samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """d sum_b ELBO(x_b) / d x: each image's own ELBO gradient."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.elbo(x, samples=samples, generator=generator).sum(), x)
    return grad


def purify(
    model: ELBOClassifier,
    x: torch.Tensor,
    *,
    steps: int = 256,
    step: float = 1 / 255,
    eps: float | None = None,
    rule: str = "scaled",
    clip: tuple[float, float] = (0.0, 1.0),
    samples: int = 1,
    seed: int = 0,
    eval_samples: int = 16,
    batch_size: int | None = None,
    progress: bool = True,
) -> PurificationResult:
    """Purify images by signed-gradient ascent of the ELBO (Eq. 22), then classify them.

    Args:
        model: a classifier with an ``elbo`` method (see ``ELBOClassifier``), in eval mode.
        x: images ``[B, ...]`` in the pixel range ``clip`` (typically attacked ones).
        steps: ascent iterations (paper: 256).
        step: signed step size (paper: 1/255, the attack's step).
        eps: l_inf purification budget eps_th around ``x``; ``None`` (default)
            removes it, as the paper does for patch attacks.
        rule: ``"scaled"`` (default) steps along the ELBO gradient scaled so the
            most-changed pixel moves by ``step``; ``"sign"`` moves every pixel
            by ``step`` along the gradient's sign (the PGD rule). See the module
            docstring for why the default is "scaled".
        samples: reparameterised draws per ELBO gradient (>= 1).
        seed: seed of the draws (the result does not depend on ``batch_size``
            only when ``batch_size`` is None or covers the input).
        eval_samples: draws for the reported ``elbo_start`` and ``elbo_end``.
    """
    who = "purify"
    check_images(x, clip, who)
    steps = check_steps(steps, who)
    step = check_step(step, who)
    if eps is not None:
        eps = check_eps(eps, who)
    if samples < 1 or eval_samples < 1:
        raise ValueError(f"{who}: samples and eval_samples must be >= 1, got {samples} and {eval_samples}")
    check_batch_size(batch_size, who)
    if rule not in STEP_RULES:
        raise ValueError(f"{who}: unknown rule {rule!r}; expected one of {', '.join(STEP_RULES)}")
    if not hasattr(model, "elbo"):
        raise TypeError(f"{who}: model must have an elbo(x, samples=, generator=) method (e.g. a VAEClassifier)")
    low, high = check_clip(clip, who)
    x = x.detach()
    out = torch.empty_like(x)
    size = x.shape[0] if batch_size is None else batch_size
    parts = [slice(s, min(x.shape[0], s + size)) for s in range(0, x.shape[0], max(size, 1))]
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    with transient_bar(steps * len(parts), "purifying (ELBO ascent)", progress) as bar:
        for part in parts:
            x_start = x[part]
            x_pfy = x_start.clone()
            for _ in range(steps):
                grad = elbo_input_gradient(model, x_pfy, samples=samples, generator=generator)
                x_pfy = projected_step(x_pfy, grad, x_start, step=step, eps=eps, low=low, high=high, rule=rule)
                bar.update(1)
            out[part] = x_pfy
    with torch.no_grad():
        logits = model(out)
    return PurificationResult(
        x=out,
        logits=logits,
        predictions=logits.argmax(1),
        elbo_start=_elbo_fixed_noise(model, x, eval_samples, seed + 1),
        elbo_end=_elbo_fixed_noise(model, out, eval_samples, seed + 1),
    )
