"""Diffusion likelihood (op family 2) and sampler steps (op family 3).

Paper 000 §2.2: Def. 2.1 (Eq. 12), the log-likelihood of Eq. 15-20, and the
RK4 sampler of the appendix (Eq. 33-43).

Every ``abar_*`` argument is the cumulative product of the alphas at a time
step (``abar_0 = 1`` for clean data): a Python float (one time for the whole
batch) or a per-sample ``[B]`` tensor on the inputs' device (so one batch can
mix time steps). Schedules are validated and bad values raise ``ValueError``
naming the sample and the inequality that failed.

All ops run on CPU (float32, float64) and CUDA (also float16/bfloat16, with
float32 math), accept any shape ``[B, *]`` (batch 0 included) and
non-contiguous inputs, are traceable by ``torch.compile`` and differentiable in
their tensor inputs (not in ``abar``).
"""
from __future__ import annotations

import torch

Abar = float | torch.Tensor


def _abar(value: Abar) -> torch.Tensor:
    """A float becomes a 0-dim float64 CPU tensor (one value for the batch)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=torch.float64)


# ---------------------------------------------------------------------------
# Op family 2: log-likelihood accumulation
# ---------------------------------------------------------------------------
def diffusion_nll_step(
    acc: torch.Tensor,
    x_t: torch.Tensor,
    x_next: torch.Tensor,
    eps: torch.Tensor,
    abar_t: Abar,
    abar_next: Abar,
) -> torch.Tensor:
    """One term of Eq. 15 added to a per-sample accumulator, in one pass.

    ``acc_new[b] = acc[b] + log q(x_next | x_t) - log p_theta(x_t | x_next)``,
    summed over all non-batch elements of sample ``b``, with the Gaussian
    log-densities of Eq. 16: ``q`` has mean ``sqrt(abar_next/abar_t) x_t`` and
    variance ``1 - abar_next/abar_t`` (Eq. 18); ``p_theta`` has the mean of
    Eq. 19 and the variance of Eq. 20.

    Args:
        acc: ``[B]`` float32 or float64 running sum (its dtype is kept; the
            per-sample sums are formed in float32 or wider and added in float64).
        x_t: ``[B, *]`` state at time t.
        x_next: ``[B, *]`` state at time t + dt (drawn by Eq. 17).
        eps: ``[B, *]`` the network's noise prediction ``eps_theta(x_next, t + dt)``.
        abar_t, abar_next: floats or ``[B]`` tensors with
            ``0 < abar_next < abar_t <= 1``.

    **t = 0 convention.** For the pair (0, dt) (``abar_t == 1``) Eq. 20's
    variance is 0 and ``log p_theta(x_0 | x_dt)`` is undefined. There the
    backward variance is taken equal to the forward variance of the same jump,
    ``1 - abar_dt`` (DDPM's ``Sigma = beta`` choice, Ho et al. 2020 §3.2, for
    the decoder step). The rule is the same for every dt.

    Differentiable in ``acc``, ``x_t``, ``x_next`` and ``eps``.
    """
    return torch.ops.manifold_ext.diffusion_nll_step.default(acc, x_t, x_next, eps, _abar(abar_t), _abar(abar_next))


def diffusion_nll_step_and_forward(
    acc: torch.Tensor,
    x_t: torch.Tensor,
    x_next: torch.Tensor,
    eps: torch.Tensor,
    noise: torch.Tensor,
    abar_t: Abar,
    abar_next: Abar,
    abar_after: Abar,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``diffusion_nll_step`` fused with the forward draw of the next state.

    Returns ``(acc_new, x_after)`` where ``acc_new`` is
    ``diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next)`` and
    ``x_after = diffusion_forward_step(x_next, noise, abar_next, abar_after)``
    (Eq. 17), in one pass over memory: the likelihood loop scores the pair
    (t, t + dt) and draws x_{t + 2dt} while it reads x_{t + dt}.
    """
    return torch.ops.manifold_ext.diffusion_nll_step_and_forward.default(
        acc, x_t, x_next, eps, noise, _abar(abar_t), _abar(abar_next), _abar(abar_after)
    )


def diffusion_forward_step(x_t: torch.Tensor, noise: torch.Tensor, abar_t: Abar, abar_next: Abar) -> torch.Tensor:
    """Eq. 17: ``x_next = sqrt(abar_next/abar_t) x_t + sqrt(1 - abar_next/abar_t) noise``.

    ``0 < abar_next <= abar_t <= 1``. Differentiable in ``x_t`` and ``noise``.
    """
    return torch.ops.manifold_ext.diffusion_forward_step.default(x_t, noise, _abar(abar_t), _abar(abar_next))


# ---------------------------------------------------------------------------
# Op family 3: sampler steps
# ---------------------------------------------------------------------------
def ddpm_step(
    x_t: torch.Tensor, eps: torch.Tensor, abar_t: Abar, abar_prev: Abar, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """DDPM ancestral step (Ho et al. 2020, Algorithm 2) from t to any earlier time.

    With ``alpha = abar_t / abar_prev``:
    ``x_prev = (x_t - (1 - alpha) / sqrt(1 - abar_t) eps) / sqrt(alpha) + sqrt(1 - alpha) noise``.
    The mean equals that of Def. 2.1; the variance is DDPM's ``sigma^2 = beta``.
    ``noise=None`` returns the mean (Ho et al. add no noise on the last step).
    Needs ``0 < abar_t < 1`` and ``abar_t <= abar_prev <= 1``.
    """
    return torch.ops.manifold_ext.ddpm_step.default(x_t, eps, _abar(abar_t), _abar(abar_prev), noise)


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    abar_t: Abar,
    abar_prev: Abar,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM step (Song et al. 2021, Eq. 12) from t to any earlier time.

    ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``,
    ``sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)``,
    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise``.
    ``eta`` in [0, 1]: 0 is deterministic DDIM, 1 equals :func:`large_step`.
    """
    return torch.ops.manifold_ext.ddim_step.default(x_t, eps, _abar(abar_t), _abar(abar_prev), float(eta), noise)


def large_step(
    x_t: torch.Tensor, eps: torch.Tensor, abar_t: Abar, abar_prev: Abar, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Large-step non-Markovian Gaussian step of Def. 2.1 (Eq. 12).

    ``x_prev ~ N(mu, var)`` with ``mu`` the posterior mean of Eq. 28 at the
    network's estimate of x0 (Eq. 31),
    ``mu = sqrt(abar_prev/abar_t) x_t - (abar_prev - abar_t) / (sqrt(abar_t abar_prev) sqrt(1 - abar_t)) eps``,
    and ``var = (abar_prev - abar_t)(1 - abar_prev) / (abar_prev (1 - abar_t))``.
    (Eq. 12 as printed lacks the square root on ``1 - abar_t``; Eq. 19 and
    Eq. 28 + 31 have it, and so does this op.) ``noise=None`` returns ``mu``.
    """
    return torch.ops.manifold_ext.large_step.default(x_t, eps, _abar(abar_t), _abar(abar_prev), noise)


def rk4_combine(k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor, k4: torch.Tensor) -> torch.Tensor:
    """``(k1 + 2 k2 + 2 k3 + k4) / 6`` in one pass: the RK4 noise estimate of Eq. 39."""
    return torch.ops.manifold_ext.rk4_combine.default(k1, k2, k3, k4)


def rk4_update(
    x: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor, k4: torch.Tensor, h: float
) -> torch.Tensor:
    """``x + h (k1 + 2 k2 + 2 k3 + k4) / 6`` in one pass: the RK4 update of Eq. 33 for any ODE."""
    return torch.ops.manifold_ext.rk4_update.default(x, k1, k2, k3, k4, float(h))


# ---------------------------------------------------------------------------
# Fake kernels: shapes and the checks that do not need values, so a traced
# program fails at trace time with the kernels' messages.
# ---------------------------------------------------------------------------
def _check_like(other, x, op, name, x_name):
    torch._check(
        other.shape == x.shape,
        lambda: f"{op}: {name} must have the shape of {x_name} {list(x.shape)}, got {list(other.shape)}",
    )
    torch._check(
        other.dtype == x.dtype,
        lambda: f"{op}: {name} must have the dtype of {x_name} ({x.dtype}), got {other.dtype}",
    )


def _check_batched(x, op, name):
    torch._check(x.dim() >= 1, lambda: f"{op}: {name} must have a batch dimension ([B, *]), got a 0-dim tensor")


def _check_abar(abar, x, op, name):
    torch._check(
        abar.dim() == 0 or (abar.dim() == 1 and abar.shape[0] == x.shape[0]),
        lambda: f"{op}: {name} must be a float, a 0-dim tensor or a per-sample tensor of shape [B] = [{x.shape[0]}]",
    )


def _check_nll(op, acc, x_t, x_next, eps, abar_t, abar_next):
    _check_batched(x_t, op, "x_t")
    _check_like(x_next, x_t, op, "x_next", "x_t")
    _check_like(eps, x_t, op, "eps", "x_t")
    torch._check(
        acc.dim() == 1 and acc.shape[0] == x_t.shape[0],
        lambda: f"{op}: acc must have shape [B] = [{x_t.shape[0]}], got {list(acc.shape)}",
    )
    torch._check(acc.dtype in (torch.float32, torch.float64), lambda: f"{op}: acc must be float32 or float64")
    _check_abar(abar_t, x_t, op, "abar_t")
    _check_abar(abar_next, x_t, op, "abar_next")


def _contiguous_like(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("manifold_ext::diffusion_nll_step")
def _nll_step_fake(acc, x_t, x_next, eps, abar_t, abar_next):
    _check_nll("diffusion_nll_step", acc, x_t, x_next, eps, abar_t, abar_next)
    return _contiguous_like(acc)


@torch.library.register_fake("manifold_ext::diffusion_nll_step_backward")
def _nll_step_backward_fake(grad_acc, x_t, x_next, eps, abar_t, abar_next):
    return _contiguous_like(x_t), _contiguous_like(x_t), _contiguous_like(x_t)


@torch.library.register_fake("manifold_ext::diffusion_nll_step_and_forward")
def _nll_step_and_forward_fake(acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after):
    op = "diffusion_nll_step_and_forward"
    _check_nll(op, acc, x_t, x_next, eps, abar_t, abar_next)
    _check_like(noise, x_t, op, "noise", "x_t")
    _check_abar(abar_after, x_t, op, "abar_after")
    return _contiguous_like(acc), _contiguous_like(x_next)


def _linear_step_fake(op, x, eps, noise, abar_a, abar_b, x_name="x_t", eps_name="eps"):
    _check_batched(x, op, x_name)
    _check_like(eps, x, op, eps_name, x_name)
    if noise is not None:
        _check_like(noise, x, op, "noise", x_name)
    _check_abar(abar_a, x, op, "abar_t")
    _check_abar(abar_b, x, op, "abar_next" if op == "diffusion_forward_step" else "abar_prev")
    return _contiguous_like(x)


def _check_eta_fake(eta, op):
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"{op}: eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM posterior variance), got {eta}")


@torch.library.register_fake("manifold_ext::diffusion_forward_step")
def _forward_step_fake(x_t, noise, abar_t, abar_next):
    return _linear_step_fake("diffusion_forward_step", x_t, noise, None, abar_t, abar_next, eps_name="noise")


@torch.library.register_fake("manifold_ext::ddpm_step")
def _ddpm_step_fake(x_t, eps, abar_t, abar_prev, noise):
    return _linear_step_fake("ddpm_step", x_t, eps, noise, abar_t, abar_prev)


@torch.library.register_fake("manifold_ext::ddim_step")
def _ddim_step_fake(x_t, eps, abar_t, abar_prev, eta, noise):
    _check_eta_fake(eta, "ddim_step")
    return _linear_step_fake("ddim_step", x_t, eps, noise, abar_t, abar_prev)


@torch.library.register_fake("manifold_ext::large_step")
def _large_step_fake(x_t, eps, abar_t, abar_prev, noise):
    return _linear_step_fake("large_step", x_t, eps, noise, abar_t, abar_prev)


@torch.library.register_fake("manifold_ext::diffusion_step_backward")
def _step_backward_fake(grad, step, abar_a, abar_b, eta):
    if step not in ("forward", "ddpm", "ddim", "large_step"):
        raise ValueError(f"diffusion_step_backward: unknown step '{step}'; expected 'forward', 'ddpm', 'ddim' or 'large_step'")
    return _contiguous_like(grad), _contiguous_like(grad), _contiguous_like(grad)


def _rk4_fake(op, like, like_name, *ks):
    for index, k in enumerate(ks):
        name = f"k{index + 1}" if like_name == "x" else f"k{index + 2}"
        _check_like(k, like, op, name, like_name)
    return _contiguous_like(like)


@torch.library.register_fake("manifold_ext::rk4_combine")
def _rk4_combine_fake(k1, k2, k3, k4):
    return _rk4_fake("rk4_combine", k1, "k1", k2, k3, k4)


@torch.library.register_fake("manifold_ext::rk4_update")
def _rk4_update_fake(x, k1, k2, k3, k4, h):
    return _rk4_fake("rk4_update", x, "x", k1, k2, k3, k4)


# ---------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------
def _nll_setup(ctx, inputs, output):
    acc, x_t, x_next, eps, abar_t, abar_next = inputs
    ctx.save_for_backward(x_t, x_next, eps, abar_t, abar_next)


def _nll_backward(ctx, grad_acc):
    x_t, x_next, eps, abar_t, abar_next = ctx.saved_tensors
    grads = (None, None, None)
    if any(ctx.needs_input_grad[1:4]):
        grads = torch.ops.manifold_ext.diffusion_nll_step_backward.default(grad_acc, x_t, x_next, eps, abar_t, abar_next)
    return grad_acc, *grads, None, None


torch.library.register_autograd("manifold_ext::diffusion_nll_step", _nll_backward, setup_context=_nll_setup)


def _nll_forward_setup(ctx, inputs, output):
    acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after = inputs
    ctx.save_for_backward(x_t, x_next, eps, abar_t, abar_next, abar_after)


def _nll_forward_backward(ctx, grad_acc, grad_after):
    x_t, x_next, eps, abar_t, abar_next, abar_after = ctx.saved_tensors
    grad_x_t = grad_x_next = grad_eps = grad_noise = None
    if any(ctx.needs_input_grad[1:4]):
        grad_x_t, grad_x_next, grad_eps = torch.ops.manifold_ext.diffusion_nll_step_backward.default(
            grad_acc, x_t, x_next, eps, abar_t, abar_next
        )
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[4]:
        through_x_next, grad_noise, _ = torch.ops.manifold_ext.diffusion_step_backward.default(
            grad_after, "forward", abar_next, abar_after, 0.0
        )
        grad_x_next = through_x_next if grad_x_next is None else grad_x_next + through_x_next
    return grad_acc, grad_x_t, grad_x_next, grad_eps, grad_noise, None, None, None


torch.library.register_autograd(
    "manifold_ext::diffusion_nll_step_and_forward", _nll_forward_backward, setup_context=_nll_forward_setup
)


def _register_linear_step(name: str, step: str, has_eta: bool, has_noise: bool):
    def setup(ctx, inputs, output):
        abar_a, abar_b = inputs[2], inputs[3]
        ctx.eta = float(inputs[4]) if has_eta else 0.0
        ctx.noise_given = has_noise and inputs[-1] is not None
        ctx.save_for_backward(abar_a, abar_b)

    def backward(ctx, grad):
        abar_a, abar_b = ctx.saved_tensors
        grad_x, grad_eps, grad_noise = torch.ops.manifold_ext.diffusion_step_backward.default(
            grad, step, abar_a, abar_b, ctx.eta
        )
        if not has_noise:  # diffusion_forward_step(x_t, noise, ...): the noise sits in the eps slot
            return grad_x, grad_eps, None, None
        grads = [grad_x, grad_eps, None, None]
        if has_eta:
            grads.append(None)
        grads.append(grad_noise if ctx.noise_given else None)
        return tuple(grads)

    torch.library.register_autograd(f"manifold_ext::{name}", backward, setup_context=setup)


_register_linear_step("diffusion_forward_step", "forward", has_eta=False, has_noise=False)
_register_linear_step("ddpm_step", "ddpm", has_eta=False, has_noise=True)
_register_linear_step("ddim_step", "ddim", has_eta=True, has_noise=True)
_register_linear_step("large_step", "large_step", has_eta=False, has_noise=True)


# RK4 is linear with the constant weights of Eq. 33: its backward scales the
# incoming gradient.
def _rk4_combine_setup(ctx, inputs, output):
    pass


def _rk4_combine_backward(ctx, grad):
    sixth, third = grad * (1.0 / 6.0), grad * (1.0 / 3.0)
    return sixth, third, third, sixth


torch.library.register_autograd("manifold_ext::rk4_combine", _rk4_combine_backward, setup_context=_rk4_combine_setup)


def _rk4_update_setup(ctx, inputs, output):
    ctx.h = float(inputs[5])


def _rk4_update_backward(ctx, grad):
    sixth, third = grad * (ctx.h / 6.0), grad * (ctx.h / 3.0)
    return grad, sixth, third, third, sixth, None


torch.library.register_autograd("manifold_ext::rk4_update", _rk4_update_backward, setup_context=_rk4_update_setup)
