"""Threshold-aware white-box attacks on the GMM classifier with rejection (thesis 004 §4.8.5-4.8.6).

The GMM classifier (``manifold_ext.vae.GMMClassifier``) rejects an input when its
code f(x) is too far from the predicted class centre (squared Mahalanobis
distance > tau_enc) or its reconstruction g(f(x)) too far from x (squared error
> tau_dec), §4.6. A complete white-box attacker knows the encoder f, the decoder
g and both thresholds, and minimises (Eq. 4.9)::

    L_adv(eta) = R(x + eta)^a + M_t(x + eta)^b + ||eta||^2,
    R(x')   = ||x' - g(f(x'))||^2 / tau_dec                            (reconstruction term)
    M_t(x') = (mu_t - f(x'))^T Sigma_t^{-1} (mu_t - f(x')) / tau_enc   (latent term)

Both normalised terms are <= 1 exactly when the corresponding threshold is met
(for the target class t), so the exponents a, b > 1 keep a term flat below its
threshold and make it grow steeply past it. The fooling attack (Eq. 4.10)
minimises R(eta)^a + M_t(eta)^b over the image eta itself, from uniform noise.

Reading of the thesis' formula: Eq. 4.9 writes "Sigma_t, the target class
covariance", but the rejection test it must pass (§4.6) is the Mahalanobis
distance, (mu_t - z)^T Sigma_t^{-1} (mu_t - z), compared with the chi-square
quantile tau_enc; with the covariance itself the term would not be the
thresholded quantity (and would reward moving along the directions in which the
class is *narrow*). We use the inverse covariance: the model's ``precision``
buffer, which ``calibrate`` fits and ``predict`` thresholds.

Optimisation: projected Adam on eta (Eq. 4.9 is minimised "by gradient
descent", eta starting at zero; Adam's per-coordinate step makes the step size
``lr`` a pixel-space distance whatever the scale of the steep terms). After
every step eta is projected onto the constraints: the pixel range ``clip``, an
optional l_inf budget ``eps`` and an optional patch ``mask`` (l_0: pixels
outside it stay exactly unchanged, as for ``patch_pgd``). Each image keeps its
best iterate, ranked first by whether it succeeds (nearest centre = target
and neither threshold exceeded) and then by the objective, so the attacker
never loses a success it found on the way. Only the input is differentiated
(the model's parameters' ``.grad`` stay untouched); Adam's moments are per
coordinate and the objective is a sum of per-image terms, so each image is its
own problem and the result does not depend on ``batch_size`` beyond rounding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import torch

from manifold_ext._progress import transient_bar
from manifold_ext.attacks._checks import (
    broadcast_mask,
    check_batch_size,
    check_clip,
    check_eps,
    check_images,
    check_steps,
)

PIXEL_RANGE = (0.0, 1.0)
DEFAULT_EXPONENTS = (2.0, 2.0)  # (a, b) of Eq. 4.9 / 4.10; see ``threshold_aware_attack``


class ThresholdedGMMClassifier(Protocol):
    """What the attacks need of a model (``manifold_ext.vae.GMMClassifier`` is one)."""

    image_shape: tuple[int, ...]
    num_classes: int
    centres: torch.Tensor  # [C, d]
    precision: torch.Tensor  # [C, d, d], inverse code covariance per class
    tau_enc: float
    tau_dec: float
    calibrated: bool

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...  # f, [B, d]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor: ...  # g, [B, *image_shape]

    def nearest_class(self, z: torch.Tensor) -> torch.Tensor: ...  # [B] index of the nearest centre

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...  # label, rejected, ... per image


@dataclasses.dataclass
class WhiteBoxResult:
    """Per-image outcome of ``threshold_aware_attack`` / ``fooling_attack``.

    ``fooled``: the nearest centre is the target; ``rejected``: ``model.predict``
    rejects the image (either threshold); ``success``: fooled and not rejected
    (the thesis' criterion for a broken defence: the samples must be "either
    correctly classified or rejected"). ``recon_term`` and ``latent_term`` are the
    normalised R and M_t of the module docstring (<= 1: that threshold is met for
    the target class); ``label``, ``recon_error`` and ``mahalanobis2`` are what
    ``predict`` reports (the latter against the predicted class).
    """

    x: torch.Tensor  # the attacked (or fooling) images
    start: torch.Tensor  # the starting images (the clean ones, or the uniform noise)
    target: torch.Tensor  # [B]
    label: torch.Tensor  # [B] nearest centre of f(x)
    fooled: torch.Tensor  # [B] bool, label == target
    rejected: torch.Tensor  # [B] bool, predict's rejection
    success: torch.Tensor  # [B] bool, fooled & ~rejected
    recon_term: torch.Tensor  # [B] ||x - g(f(x))||^2 / tau_dec
    latent_term: torch.Tensor  # [B] Mahalanobis^2 of f(x) to mu_target / tau_enc
    recon_error: torch.Tensor  # [B] ||x - g(f(x))||^2
    mahalanobis2: torch.Tensor  # [B] against the predicted class, as predict reports
    eta_l2: torch.Tensor  # [B] ||x - start||_2
    eta_linf: torch.Tensor  # [B] ||x - start||_inf
    objective_start: torch.Tensor  # [B] the objective at the start
    objective: torch.Tensor  # [B] the objective of the returned images
    history: list[float]  # mean objective of the current iterates, per step


def _terms(model, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, M, f(x)) at images x for classes target: one encoder pass for the terms and the label."""
    z = model.encode(x)
    reconstruction = model.decode_mean(z)
    recon_error = (x - reconstruction).flatten(1).square().sum(1)  # ||x - g(f(x))||^2, as scores() reports
    diff = model.centres[target].to(z.dtype) - z
    # (mu_t - z)^T Sigma_t^{-1} (mu_t - z): the inverse covariance (precision), the quantity tau_enc thresholds
    mahalanobis2 = torch.einsum("bi,bij,bj->b", diff, model.precision[target].to(z.dtype), diff)
    return recon_error / model.tau_dec, mahalanobis2 / model.tau_enc, z


def whitebox_terms(
    model: ThresholdedGMMClassifier, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised terms of Eq. 4.9 / 4.10 at images ``x`` for classes ``target``, differentiable in x.

    Returns ``(R, M)``, each ``[B]``: R = ||x - g(f(x))||^2 / tau_dec (the squared
    error ``scores`` reports, to the decoder's mean image) and
    M = (mu_t - f(x))^T Sigma_t^{-1} (mu_t - f(x)) / tau_enc with Sigma_t^{-1} the
    model's ``precision[t]`` (see the module docstring for this reading of Eq. 4.9).
    R <= 1 and M <= 1 are exactly "not rejected by tau_dec" and "not rejected by
    tau_enc" for an image classified as the target.
    """
    recon_term, latent_term, _ = _terms(model, x, target)
    return recon_term, latent_term


def whitebox_objective(
    model: ThresholdedGMMClassifier,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eta: torch.Tensor | None = None,
    a: float = DEFAULT_EXPONENTS[0],
    b: float = DEFAULT_EXPONENTS[1],
) -> torch.Tensor:
    """Per-image objective [B]: Eq. 4.9, R(x)^a + M_t(x)^b + ||eta||^2, at the attacked images
    ``x`` = x_o + eta; without ``eta`` Eq. 4.10 (the fooling objective, no distance term)."""
    a, b = _check_exponents(a, b, "whitebox_objective")
    recon_term, latent_term = whitebox_terms(model, x, target)
    return _objective(recon_term, latent_term, eta, a, b)


def _objective(
    recon_term: torch.Tensor, latent_term: torch.Tensor, eta: torch.Tensor | None, a: float, b: float
) -> torch.Tensor:
    """Eq. 4.9 per image (Eq. 4.10 with ``eta=None``): R^a + M^b (+ ||eta||^2)."""
    loss = recon_term.pow(a) + latent_term.pow(b)
    if eta is not None:
        loss = loss + eta.flatten(1).square().sum(1)
    return loss


def _check_model(model, who: str) -> None:
    needed = ("encode", "decode_mean", "nearest_class", "centres", "precision", "tau_enc", "tau_dec", "predict")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{who}: the model must be a GMM classifier with rejection (manifold_ext.vae.GMMClassifier); "
            f"it lacks {', '.join(missing)}"
        )
    tau_enc, tau_dec = float(model.tau_enc), float(model.tau_dec)
    if not (math.isfinite(tau_enc) and math.isfinite(tau_dec) and tau_enc > 0 and tau_dec > 0):
        raise ValueError(
            f"{who}: the model is not calibrated (tau_enc = {tau_enc}, tau_dec = {tau_dec}); "
            f"call model.calibrate(x_train, y_train) first: the attack's loss is normalised by the "
            f"rejection thresholds"
        )


def _check_exponents(a: float, b: float, who: str) -> tuple[float, float]:
    a, b = float(a), float(b)
    for name, value in (("a", a), ("b", b)):
        if not math.isfinite(value) or value <= 1:
            raise ValueError(
                f"{who}: the exponent {name} must be a finite number > 1 (Eq. 4.9: the loss must grow "
                f"steeply past the threshold), got {value}"
            )
    return a, b


def _check_lr(lr: float, who: str) -> float:
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{who}: lr must be a finite number > 0, got {lr}")
    return lr


def _check_target(target, count: int, num_classes: int, device: torch.device, who: str) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{who}: target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{who}: target must hold integer class indices, got dtype {target.dtype}")
    if target.dim() != 1 or target.shape[0] != count:
        raise ValueError(
            f"{who}: target must be [B] = [{count}] (one class per image), got shape {tuple(target.shape)}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"{who}: target classes must be in 0..{num_classes - 1}, got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    return target.to(device=device, dtype=torch.long)


def _check_model_images(model, x: torch.Tensor, who: str) -> None:
    shape = tuple(model.image_shape)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{who}: x must be a batch of images [B, {', '.join(map(str, shape))}] (the model's "
            f"image_shape), got shape {tuple(x.shape)}"
        )


def _chunks(n: int, batch_size: int | None):
    size = n if batch_size is None else batch_size
    for start in range(0, n, max(size, 1)):
        yield slice(start, min(n, start + size))


def _project(
    eta: torch.Tensor, x0: torch.Tensor, *, low: float, high: float, eps: float | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """Onto {eta : x0 + eta in [low, high], ||eta||_inf <= eps, eta = 0 outside the mask}.

    The three sets are boxes per pixel (their intersection is again a box, and it
    contains 0), so clamping to each in turn is the exact Euclidean projection.
    """
    if eps is not None:
        eta = eta.clamp(-eps, eps)
    eta = (x0 + eta).clamp(low, high) - x0
    if mask is not None:
        eta = torch.where(mask, eta, torch.zeros((), dtype=eta.dtype, device=eta.device))
    return eta


def _minimise(
    model,
    x0: torch.Tensor,
    target: torch.Tensor,
    eta0: torch.Tensor,
    *,
    penalise_eta: bool,
    a: float,
    b: float,
    steps: int,
    lr: float,
    low: float,
    high: float,
    eps: float | None,
    mask: torch.Tensor | None,
    bar,
) -> tuple[torch.Tensor, list[float]]:
    """Projected Adam on the image x0 + eta for one chunk; returns (best eta, mean objective per step).

    Eq. 4.9 with ``penalise_eta`` (eta is the perturbation of x0), Eq. 4.10 without
    (then x0 = 0 and eta is the image). Each image keeps its best iterate: a
    successful one (nearest centre = target, both thresholds met) beats any
    unsuccessful one, and among equals the lower objective wins.
    """
    eta = _project(eta0, x0, low=low, high=high, eps=eps, mask=mask).requires_grad_(True)
    optimiser = torch.optim.Adam([eta], lr=lr)
    best_eta = eta.detach().clone()
    best_loss = torch.full((x0.shape[0],), math.inf, dtype=x0.dtype, device=x0.device)
    best_success = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
    history: list[float] = []
    for step in range(steps + 1):  # steps updates; the last pass only scores the final iterate
        with torch.enable_grad():
            recon_term, latent_term, z = _terms(model, x0 + eta, target)
            loss = _objective(recon_term, latent_term, eta if penalise_eta else None, a, b)  # Eq. 4.9 / 4.10
            with torch.no_grad():
                history.append(loss.mean().item() if loss.numel() else 0.0)
                success = (model.nearest_class(z) == target) & (latent_term <= 1) & (recon_term <= 1)
                improved = (success & ~best_success) | ((success == best_success) & (loss < best_loss))
                best_loss = torch.where(improved, loss, best_loss)
                best_success = best_success | success
                best_eta = torch.where(improved.view(-1, *([1] * (eta.dim() - 1))), eta.detach(), best_eta)
            if step == steps:
                break
            # only eta gets a gradient: the model's parameters' .grad stay untouched
            (eta.grad,) = torch.autograd.grad(loss.sum(), eta)
        optimiser.step()
        with torch.no_grad():
            eta.copy_(_project(eta, x0, low=low, high=high, eps=eps, mask=mask))
        bar.update(1)
    return best_eta, history


def _result(
    model,
    start: torch.Tensor,
    images: torch.Tensor,
    target: torch.Tensor,
    *,
    penalise_eta: bool,
    a: float,
    b: float,
    history: list[float],
) -> WhiteBoxResult:
    """Score the returned images with the model's own verdict (``predict``) and the two terms."""
    with torch.no_grad():
        verdict = model.predict(images)
        recon_term, latent_term = whitebox_terms(model, images, target)
        start_terms = whitebox_terms(model, start, target)
        eta = images - start
        objective = _objective(recon_term, latent_term, eta if penalise_eta else None, a, b)
        objective_start = _objective(*start_terms, torch.zeros_like(eta) if penalise_eta else None, a, b)
    fooled = verdict["label"] == target
    rejected = verdict["rejected"]
    return WhiteBoxResult(
        x=images,
        start=start,
        target=target,
        label=verdict["label"],
        fooled=fooled,
        rejected=rejected,
        success=fooled & ~rejected,
        recon_term=recon_term,
        latent_term=latent_term,
        recon_error=verdict["recon_error"],
        mahalanobis2=verdict["mahalanobis2"],
        eta_l2=eta.flatten(1).norm(dim=1),
        eta_linf=eta.flatten(1).abs().amax(1) if eta.numel() else eta.new_zeros(0),
        objective_start=objective_start,
        objective=objective,
        history=history,
    )


def _minimise_in_chunks(
    model,
    x0: torch.Tensor,
    eta0: torch.Tensor,
    target: torch.Tensor,
    desc: str,
    batch_size: int | None,
    progress: bool,
    *,
    mask: torch.Tensor | None,
    steps: int,
    **options,
) -> tuple[torch.Tensor, list[float]]:
    """``_minimise`` over chunks of ``batch_size`` images under one progress bar; returns the
    images x0 + eta [B, ...] and the mean objective per step over the whole batch."""
    out = torch.empty_like(x0)
    history = [0.0] * (steps + 1)
    parts = list(_chunks(x0.shape[0], batch_size))
    with transient_bar(steps * len(parts), desc, progress) as bar:
        for part in parts:
            eta, chunk_history = _minimise(
                model,
                x0[part],
                target[part],
                eta0[part],
                steps=steps,
                mask=None if mask is None else mask[part],
                bar=bar,
                **options,
            )
            out[part] = x0[part] + eta
            weight = out[part].shape[0] / max(x0.shape[0], 1)
            history = [h + weight * c for h, c in zip(history, chunk_history)]
    return out, history


def threshold_aware_attack(
    model: ThresholdedGMMClassifier,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    a: float = DEFAULT_EXPONENTS[0],
    b: float = DEFAULT_EXPONENTS[1],
    steps: int = 500,
    lr: float = 0.01,
    mask: torch.Tensor | None = None,
    eps: float | None = None,
    clip: tuple[float, float] = PIXEL_RANGE,
    batch_size: int | None = None,
    progress: bool = True,
) -> WhiteBoxResult:
    """The complete white-box targeted attack of thesis 004 §4.8.5 (Eq. 4.9).

    Minimises, over eta from eta = 0, by projected Adam (see the module docstring)::

        (||x + eta - g(f(x + eta))||^2 / tau_dec)^a
          + ((mu_t - f(x + eta))^T Sigma_t^{-1} (mu_t - f(x + eta)) / tau_enc)^b + ||eta||^2

    Args:
        model: a calibrated GMM classifier (``GMMClassifier`` after ``calibrate``), in eval mode.
        x: images ``[B, *model.image_shape]`` in the pixel range ``clip``.
        target: ``[B]`` integer target classes. Any class is allowed: the attack
            is meant for a class other than the true one (the demo uses the other
            class), but target = true class is a valid run too (it then pulls the
            image towards the class centre, e.g. as a sanity check).
        a, b: the exponents (> 1) of the normalised reconstruction and latent terms.
            The thesis gives no values; the default a = b = 2 keeps each term below
            1 (flat, gradient 2R) inside its threshold and quadratic past it, so the
            attacker is not pushed beyond the thresholds, while the ||eta||^2 term
            (weight 1, as in Eq. 4.9) keeps the perturbation small. Larger values
            make the walls steeper.
        steps: Adam updates (>= 1); lr: Adam's step size (> 0), about the most a
            pixel moves per step.
        mask: optional patch (l_0) constraint, bool or 0/1 ``[H, W]``, ``[C, H, W]``
            or ``[B, C, H, W]`` (as for ``patch_pgd``; see ``patch_mask``): pixels
            outside it stay exactly unchanged. ``None``: the whole image may move
            (the thesis' setting, where only ||eta||^2 limits the change).
        eps: optional l_inf budget on eta (>= 0); ``None``: none.
        clip: the valid pixel range; the attacked images stay inside it.
        batch_size: images per chunk (``None``: all at once).

    Returns a ``WhiteBoxResult``: the attacked images (the best iterate per image:
    a successful one if any, else the lowest objective), whether each reaches the
    target (``fooled``), is rejected by ``model.predict`` (``rejected``) or both
    fools and passes (``success``), the two normalised terms, ||eta||_2 and
    ||eta||_inf, the objective at the start and at the end, and the mean objective
    per step (``history``). Deterministic (no random start).
    """
    who = "threshold_aware_attack"
    _check_model(model, who)
    check_images(x, clip, who)
    _check_model_images(model, x, who)
    target = _check_target(target, x.shape[0], model.centres.shape[0], x.device, who)
    a, b = _check_exponents(a, b, who)
    steps = check_steps(steps, who)
    lr = _check_lr(lr, who)
    if eps is not None:
        eps = check_eps(eps, who)
    check_batch_size(batch_size, who)
    low, high = check_clip(clip, who)
    if mask is not None:
        mask = broadcast_mask(mask, x, who)
    x = x.detach()
    out, history = _minimise_in_chunks(
        model,
        x,
        torch.zeros_like(x),
        target,
        "white-box attack (Eq. 4.9)",
        batch_size,
        progress,
        penalise_eta=True,
        a=a,
        b=b,
        steps=steps,
        lr=lr,
        low=low,
        high=high,
        eps=eps,
        mask=mask,
    )
    return _result(model, x, out, target, penalise_eta=True, a=a, b=b, history=history)


def fooling_attack(
    model: ThresholdedGMMClassifier,
    target: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    seed: int | None = 0,
    a: float = DEFAULT_EXPONENTS[0],
    b: float = DEFAULT_EXPONENTS[1],
    steps: int = 500,
    lr: float = 0.01,
    clip: tuple[float, float] = PIXEL_RANGE,
    batch_size: int | None = None,
    progress: bool = True,
) -> WhiteBoxResult:
    """The white-box fooling-image attack of thesis 004 §4.8.6 (Eq. 4.10).

    Minimises, over the image eta itself, ``(||eta - g(f(eta))||^2 / tau_dec)^a +
    ((mu_t - f(eta))^T Sigma_t^{-1} (mu_t - f(eta)) / tau_enc)^b`` (Eq. 4.9 without
    the distance term) by projected Adam in the pixel range ``clip``, starting
    from uniform noise: one image per entry of ``target``.

    Args:
        model: a calibrated GMM classifier.
        target: ``[N]`` integer target classes, one fooling image each (e.g.
            ``torch.arange(C).repeat_interleave(100)`` for 100 per class).
        init: optional starting images ``[N, *model.image_shape]`` in ``clip``;
            default ``U(clip)`` noise drawn from a generator seeded with ``seed``
            for the whole batch before chunking (so the result does not depend on
            ``batch_size``); ``seed=None`` uses torch's global generator.
        a, b, steps, lr, clip, batch_size, progress: as in ``threshold_aware_attack``.

    Returns a ``WhiteBoxResult`` (``start`` holds the noise; ``eta_l2`` is the
    distance travelled from it). ``success`` = classified as the target and not
    rejected: the thesis reports that most such images are rejected at the
    decoder, and that the few that pass look like real images of the target.
    """
    who = "fooling_attack"
    _check_model(model, who)
    low, high = check_clip(clip, who)
    device = model.centres.device
    if not isinstance(target, torch.Tensor) or target.dim() != 1:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"{who}: target must be [N] class indices (one fooling image each), got {shape}")
    if init is None:
        generator = None if seed is None else torch.Generator(device=device).manual_seed(int(seed))
        noise = torch.rand((target.shape[0], *model.image_shape), generator=generator, device=device)
        init = low + (high - low) * noise
    else:
        check_images(init, clip, who)
        _check_model_images(model, init, who)
        if init.shape[0] != target.shape[0]:
            raise ValueError(f"{who}: init has {init.shape[0]} images but target has {target.shape[0]} entries")
    target = _check_target(target, init.shape[0], model.centres.shape[0], init.device, who)
    a, b = _check_exponents(a, b, who)
    steps = check_steps(steps, who)
    lr = _check_lr(lr, who)
    check_batch_size(batch_size, who)
    init = init.detach()
    # the image is the variable: x0 = 0 and eta starts at the noise (Eq. 4.10 has no distance term)
    out, history = _minimise_in_chunks(
        model,
        torch.zeros_like(init),
        init,
        target,
        "fooling attack (Eq. 4.10)",
        batch_size,
        progress,
        penalise_eta=False,
        a=a,
        b=b,
        steps=steps,
        lr=lr,
        low=low,
        high=high,
        eps=None,
        mask=None,
    )
    return _result(model, init, out, target, penalise_eta=False, a=a, b=b, history=history)
