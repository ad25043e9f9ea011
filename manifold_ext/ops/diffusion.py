"""Diffusion likelihood (op family 2) and sampler steps (op family 3).

Paper 000 §2.2: Def. 2.1 (Eq. 12), the log-likelihood of Eq. 15-20, and the
RK4 sampler of the appendix (Eq. 33-43).

Every ``abar_*`` argument is the cumulative product of the alphas at a time
step (``abar_0 = 1`` for clean data): a Python float (one time for the whole
batch) or a per-sample ``[B]`` tensor on the inputs' device (so one batch can
mix time steps). Schedules are validated and bad values raise ``ValueError``
naming the sample and the inequality that failed.
"""

from __future__ import annotations

import functools

import torch

from manifold_ext.ops._checks import as_float, check_device, empty_contiguous_like
from manifold_ext.ops._dispatch import call_op, register_autograd
from manifold_ext.ops._docs import fill_doc
from manifold_ext.ops._second_order import differentiable_leaf, refuse_gradient, register_backward_op_autograd, vjp

Abar = float | torch.Tensor

_NOT_IN_ABAR = "the noise schedule is a constant of the model"


_DTYPES = """
        CPU: float32, float64. CUDA: also float16 and bfloat16, computed in
        float32. All tensors share one device (a meta tensor mixed with real
        ones is refused); a per-sample ``abar`` is on that device too, a 0-dim
        one may be a CPU tensor. Meta/fake tensors trace (``torch.compile``,
        ``torch.export``)."""

_SCHEDULE_RANGE = """
        Schedules are checked in float64. The kernels compute in float32 for
        float32/float16/bfloat16 inputs; a schedule whose step coefficients do
        not fit float32 (e.g. ``abar`` ~ 1e-300 next to 1) is refused with a
        ``ValueError`` instead of returning inf or NaN (in float64 every valid
        schedule fits)."""

_ELEMENTWISE_NAN = """
        NaN in, NaN out, elementwise: an output element is NaN when an input
        element it is formed from is NaN; results follow IEEE arithmetic of the
        formula above (an overflow gives inf, inf - inf gives NaN), the same on
        every CPU instruction set (the kernels are built without implicit FMA
        contraction) and as the plain-PyTorch reference."""


def _abar(value: Abar, name: str, op: str) -> torch.Tensor:
    """A number becomes a 0-dim float64 CPU tensor (one value for the batch); a tensor is passed on."""
    if isinstance(value, torch.Tensor):
        return value
    number = as_float(value, name, op)
    if _may_reuse_constant(number):
        return _abar_constant(number)
    return torch.tensor(number, dtype=torch.float64, device="cpu")


def _may_reuse_constant(number: float) -> bool:
    # Not while tracing or under a dispatch mode (fake tensors, functionalisation), whose tensors a cache
    # must not keep or hand out; not 0 or NaN (-0.0 == 0.0 would share one tensor, and both are refused anyway).
    return (
        number != 0.0
        and number == number
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
    )


@functools.lru_cache(maxsize=4096)
def _abar_constant(number: float) -> torch.Tensor:
    """``number`` as a 0-dim float64 CPU tensor, made once per value. A sampler repeats its schedule's few
    hundred values every run, and making the tensor cost about 2 µs of a 25 µs step on a batch of 64 small
    images, twice per step. Made outside inference mode, so that it can be saved for backward later too;
    the ops never write to it."""
    with torch.inference_mode(False):
        return torch.tensor(number, dtype=torch.float64, device="cpu")


# ---------------------------------------------------------------------------
# Op family 2: log-likelihood accumulation
# ---------------------------------------------------------------------------
@fill_doc(dtypes=_DTYPES, schedule=_SCHEDULE_RANGE)
def diffusion_nll_step(
    acc: torch.Tensor, x_t: torch.Tensor, x_next: torch.Tensor, eps: torch.Tensor, abar_t: Abar, abar_next: Abar
) -> torch.Tensor:
    """One term of Eq. 15 added to a per-sample accumulator, in one pass.

    ``acc_new[b] = acc[b] + log q(x_next | x_t) - log p_theta(x_t | x_next)``,
    summed over all non-batch elements of sample ``b``, with the Gaussian
    log-densities of Eq. 16: ``q`` has mean ``sqrt(abar_next/abar_t) x_t`` and
    variance ``1 - abar_next/abar_t`` (Eq. 18); ``p_theta`` has the mean of
    Eq. 19 and the variance of Eq. 20.

    Args:
        acc: running sum (its dtype is kept; the per-sample sums are formed in
            float32 or wider and added in float64).
        x_t: state at time t.
        x_next: state at time t + dt (drawn by Eq. 17).
        eps: the network's noise prediction ``eps_theta(x_next, t + dt)``.
        abar_t, abar_next: floats or per-sample tensors with
            ``0 < abar_next < abar_t <= 1``.

    **t = 0 convention.** For the pair (0, dt) (``abar_t == 1``) Eq. 20's
    variance is 0 and ``log p_theta(x_0 | x_dt)`` is undefined. There the
    backward variance is taken equal to the forward variance of the same jump,
    ``1 - abar_dt`` (DDPM's ``Sigma = beta`` choice, Ho et al. 2020 §3.2, for
    the decoder step). The rule is the same for every dt.

    Returns:
        ``acc_new``, a new tensor (``acc`` is not modified).

    Shapes:
        ``x_t``, ``x_next``, ``eps``: ``[B, *]`` (one shape; batch 0 and empty
        samples included). ``acc``: ``[B]``. ``abar_*``: float, 0-dim or ``[B]``.
        Returns ``[B]``.

    Dtypes and devices:
        ``acc`` is float32 or float64 whatever the inputs' dtype.
        {dtypes}

    Numerics:
        NaN in, NaN out per sample: a NaN in any element of a sample (or in its
        ``acc``) makes its ``acc_new`` NaN; the other samples are untouched.
        Each element's term is formed in the compute dtype and summed in
        float64; a term that overflows it (float32, ``|x|`` ~ 1e19) gives inf
        or NaN (inf - inf) as the plain-PyTorch reference does, identically on
        every CPU instruction set.
        {schedule}
        Differentiable in ``acc``, ``x_t``, ``x_next`` and ``eps`` (fused backward
        op); second and higher derivatives exact through the reference's
        formulas. Not differentiable in ``abar``: asking for that gradient
        raises.

    Raises:
        ValueError: an invalid or (for float32 compute) overflowing schedule,
            naming the first bad sample and the inequality.
        TypeError: ``abar`` neither a number nor a tensor.
        RuntimeError: shapes, dtypes or devices that do not match, ``acc`` not
            float32/float64, a 0-dim ``x_t``, float16/bfloat16 on CPU.
        NotDifferentiableError: a gradient requested for ``abar``.
    """
    op = "diffusion_nll_step"
    return call_op(
        torch.ops.manifold_ext.diffusion_nll_step.default,
        acc,
        x_t,
        x_next,
        eps,
        _abar(abar_t, "abar_t", op),
        _abar(abar_next, "abar_next", op),
    )


@fill_doc(dtypes=_DTYPES, schedule=_SCHEDULE_RANGE)
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

    Shapes:
        ``x_t``, ``x_next``, ``eps``, ``noise``: ``[B, *]``; ``acc``: ``[B]``.
        Returns ``acc_new`` ``[B]`` and ``x_after`` ``[B, *]`` (contiguous).

    Dtypes and devices:
        As :func:`diffusion_nll_step`.
        {dtypes}

    Numerics:
        As :func:`diffusion_nll_step` for ``acc_new`` and
        :func:`diffusion_forward_step` for ``x_after`` (NaN in, NaN out). Needs
        ``0 < abar_next < abar_t <= 1`` and ``0 < abar_after <= abar_next``.
        {schedule}
        Differentiable in the four tensors (second and higher derivatives
        exact), not in ``abar``.

    Raises:
        As :func:`diffusion_nll_step`, for both pairs of ``abar``; and
        RuntimeError if ``noise`` does not match ``x_t``.
    """
    op = "diffusion_nll_step_and_forward"
    return call_op(
        torch.ops.manifold_ext.diffusion_nll_step_and_forward.default,
        acc,
        x_t,
        x_next,
        eps,
        noise,
        _abar(abar_t, "abar_t", op),
        _abar(abar_next, "abar_next", op),
        _abar(abar_after, "abar_after", op),
    )


@fill_doc(dtypes=_DTYPES, nan=_ELEMENTWISE_NAN)
def diffusion_forward_step(x_t: torch.Tensor, noise: torch.Tensor, abar_t: Abar, abar_next: Abar) -> torch.Tensor:
    """Eq. 17: ``x_next = sqrt(abar_next/abar_t) x_t + sqrt(1 - abar_next/abar_t) noise``.

    Shapes:
        ``x_t``, ``noise``: ``[B, *]``; ``abar_*``: float, 0-dim or ``[B]``.
        Returns ``[B, *]`` (contiguous).

    Dtypes and devices:
        {dtypes}

    Numerics:
        {nan}
        Needs ``0 < abar_next <= abar_t <= 1`` (the coefficients are <= 1, so
        no schedule overflows). Differentiable in ``x_t`` and ``noise`` to any
        order (linear: second derivatives are exactly 0), not in ``abar``.

    Raises:
        ValueError: an invalid schedule. TypeError: ``abar`` not a number or
        tensor. RuntimeError: shapes, dtypes or devices that do not match.
        NotDifferentiableError: a gradient requested for ``abar``.
    """
    op = "diffusion_forward_step"
    return call_op(
        torch.ops.manifold_ext.diffusion_forward_step.default,
        x_t,
        noise,
        _abar(abar_t, "abar_t", op),
        _abar(abar_next, "abar_next", op),
    )


# ---------------------------------------------------------------------------
# Op family 3: sampler steps
# ---------------------------------------------------------------------------
_STEP_SECTIONS = """
    Shapes:
        ``x_t``, ``eps`` and ``noise`` (if given): ``[B, *]``; ``abar_*``: float,
        0-dim or ``[B]``. Returns ``[B, *]`` (contiguous).

    Dtypes and devices:
{dtypes}

    Numerics:
{nan}
        Needs ``0 < abar_t < 1`` and ``abar_t <= abar_prev <= 1``.
{schedule}
        Linear in ``x_t``, ``eps`` and ``noise``: differentiable in them to any
        order (second derivatives are exactly 0), not in ``abar``.

    Raises:
        ValueError: an invalid or overflowing schedule{eta}. TypeError: ``abar``
        not a number or tensor. RuntimeError: shapes, dtypes or devices that do
        not match. NotDifferentiableError: a gradient requested for ``abar``.
"""


def _step_sections(eta: str = "") -> str:
    return _STEP_SECTIONS.format(
        dtypes=_DTYPES.strip("\n"), nan=_ELEMENTWISE_NAN.strip("\n"), schedule=_SCHEDULE_RANGE.strip("\n"), eta=eta
    )


@fill_doc(sections=_step_sections())
def ddpm_step(
    x_t: torch.Tensor, eps: torch.Tensor, abar_t: Abar, abar_prev: Abar, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """DDPM ancestral step (Ho et al. 2020, Algorithm 2) from t to any earlier time.

    With ``alpha = abar_t / abar_prev``:
    ``x_prev = (x_t - (1 - alpha) / sqrt(1 - abar_t) eps) / sqrt(alpha) + sqrt(1 - alpha) noise``.
    The mean equals that of Def. 2.1; the variance is DDPM's ``sigma^2 = beta``.
    ``noise=None`` returns the mean (Ho et al. add no noise on the last step).

    {sections}
    """
    op = "ddpm_step"
    return call_op(
        torch.ops.manifold_ext.ddpm_step.default,
        x_t,
        eps,
        _abar(abar_t, "abar_t", op),
        _abar(abar_prev, "abar_prev", op),
        noise,
    )


@fill_doc(sections=_step_sections(eta=", or ``eta`` outside [0, 1]"))
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

    {sections}
    """
    op = "ddim_step"
    return call_op(
        torch.ops.manifold_ext.ddim_step.default,
        x_t,
        eps,
        _abar(abar_t, "abar_t", op),
        _abar(abar_prev, "abar_prev", op),
        as_float(eta, "eta", op),
        noise,
    )


@fill_doc(sections=_step_sections())
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

    {sections}
    """
    op = "large_step"
    return call_op(
        torch.ops.manifold_ext.large_step.default,
        x_t,
        eps,
        _abar(abar_t, "abar_t", op),
        _abar(abar_prev, "abar_prev", op),
        noise,
    )


_RK4_SECTIONS = """
    Shapes:
        All tensors one shape (any, 0-dim and size 0 included). Returns that
        shape (contiguous).

    Dtypes and devices:
        CPU: float32, float64; CUDA: also float16, bfloat16. One dtype and one
        device for all tensors (a meta tensor mixed with real ones is refused).

    Numerics:
{nan}
        Linear with constant weights: differentiable to any order.

    Raises:
        RuntimeError: shapes, dtypes or devices that do not match, a
        non-floating dtype, float16/bfloat16 on CPU.{h}
"""


@fill_doc(sections=_RK4_SECTIONS.format(nan=_ELEMENTWISE_NAN.strip("\n"), h=""))
def rk4_combine(k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor, k4: torch.Tensor) -> torch.Tensor:
    """``(k1 + 2 k2 + 2 k3 + k4) / 6`` in one pass: the RK4 noise estimate of Eq. 39.

    {sections}
    """
    return call_op(torch.ops.manifold_ext.rk4_combine.default, k1, k2, k3, k4)


@fill_doc(
    sections=_RK4_SECTIONS.format(
        nan=_ELEMENTWISE_NAN.strip("\n"),
        h="\n        ValueError: ``h`` not finite. TypeError: ``h`` not a real number.",
    )
)
def rk4_update(
    x: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor, k4: torch.Tensor, h: float
) -> torch.Tensor:
    """``x + h (k1 + 2 k2 + 2 k3 + k4) / 6`` in one pass: the RK4 update of Eq. 33 for any ODE.

    {sections}
    """
    return call_op(torch.ops.manifold_ext.rk4_update.default, x, k1, k2, k3, k4, as_float(h, "h", "rk4_update"))


# ---------------------------------------------------------------------------
# Fake kernels: shapes and the checks that do not need values, so a traced
# program fails at trace time with the kernels' messages (diffusion_host.h).
# ---------------------------------------------------------------------------
def _check_like(other, x, op, name, x_name):
    torch._check(
        other.shape == x.shape,
        lambda: f"{op}: {name} must have the shape of {x_name} {list(x.shape)}, got {list(other.shape)}",
    )
    check_device(
        other.device == x.device,
        lambda: f"{op}: {name} must be on the device of {x_name} ({x.device}), got {other.device}",
    )
    torch._check(
        other.dtype == x.dtype, lambda: f"{op}: {name} must have the dtype of {x_name} ({x.dtype}), got {other.dtype}"
    )


def _check_batched(x, op, name):
    torch._check(x.dim() >= 1, lambda: f"{op}: {name} must have a batch dimension ([B, *]), got a 0-dim tensor")


def _check_abar(abar, x, op, name):
    torch._check(
        abar.dim() == 0 or (abar.dim() == 1 and abar.shape[0] == x.shape[0]),
        lambda: f"{op}: {name} must be a float, a 0-dim tensor or a per-sample tensor of shape [B] = [{x.shape[0]}]",
    )
    if abar.dim() == 1:
        check_device(
            abar.device == x.device,
            lambda: f"{op}: a per-sample {name} must be on the device of the inputs ({x.device}), got {abar.device}",
        )
    else:
        # A 0-dim abar is read on the host (it may be a CPU tensor next to CUDA inputs), so it needs a value.
        check_device(
            abar.device.type != "meta" or x.device.type == "meta",
            lambda: (
                f"{op}: {name} is a 0-dim tensor on the meta device, whose value cannot be read; "
                f"pass a float or a tensor on the device of the inputs ({x.device})"
            ),
        )


def _check_accumulator(acc, x_t, op):
    torch._check(
        acc.dim() == 1 and acc.shape[0] == x_t.shape[0],
        lambda: f"{op}: acc must have shape [B] = [{x_t.shape[0]}], got {list(acc.shape)}",
    )
    torch._check(acc.dtype in (torch.float32, torch.float64), lambda: f"{op}: acc must be float32 or float64")
    check_device(
        acc.device == x_t.device, lambda: f"{op}: acc must be on the device of x_t ({x_t.device}), got {acc.device}"
    )


def _check_nll(op, acc, x_t, x_next, eps, abar_t, abar_next):
    _check_batched(x_t, op, "x_t")
    _check_like(x_next, x_t, op, "x_next", "x_t")
    _check_like(eps, x_t, op, "eps", "x_t")
    _check_accumulator(acc, x_t, op)
    _check_abar(abar_t, x_t, op, "abar_t")
    _check_abar(abar_next, x_t, op, "abar_next")


@torch.library.register_fake("manifold_ext::diffusion_nll_step")
def _nll_step_fake(acc, x_t, x_next, eps, abar_t, abar_next):
    _check_nll("diffusion_nll_step", acc, x_t, x_next, eps, abar_t, abar_next)
    return empty_contiguous_like(acc)


@torch.library.register_fake("manifold_ext::diffusion_nll_step_backward")
def _nll_step_backward_fake(grad_acc, x_t, x_next, eps, abar_t, abar_next):
    op = "diffusion_nll_step_backward"
    torch._check(
        grad_acc.dim() == 1 and grad_acc.shape[0] == x_t.shape[0],
        lambda: f"{op}: grad_acc must have shape [B] = [{x_t.shape[0]}], got {list(grad_acc.shape)}",
    )
    _check_nll(op, grad_acc.to(torch.float64), x_t, x_next, eps, abar_t, abar_next)
    return empty_contiguous_like(x_t), empty_contiguous_like(x_t), empty_contiguous_like(x_t)


@torch.library.register_fake("manifold_ext::diffusion_nll_step_and_forward")
def _nll_step_and_forward_fake(acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after):
    op = "diffusion_nll_step_and_forward"
    _check_nll(op, acc, x_t, x_next, eps, abar_t, abar_next)
    _check_like(noise, x_t, op, "noise", "x_t")
    _check_abar(abar_after, x_t, op, "abar_after")
    return empty_contiguous_like(acc), empty_contiguous_like(x_next)


def _linear_step_fake(op, x, eps, noise, abar_a, abar_b, x_name="x_t", eps_name="eps", names=None):
    _check_batched(x, op, x_name)
    _check_like(eps, x, op, eps_name, x_name)
    if noise is not None:
        _check_like(noise, x, op, "noise", x_name)
    name_a, name_b = names or ("abar_t", "abar_next" if op == "diffusion_forward_step" else "abar_prev")
    _check_abar(abar_a, x, op, name_a)
    _check_abar(abar_b, x, op, name_b)
    return empty_contiguous_like(x)


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


_STEP_NAMES = ("forward", "ddpm", "ddim", "large_step")


@torch.library.register_fake("manifold_ext::diffusion_step_backward")
def _step_backward_fake(grad, step, abar_a, abar_b, eta):
    op = "diffusion_step_backward"
    if step not in _STEP_NAMES:
        raise ValueError(f"{op}: unknown step '{step}'; expected 'forward', 'ddpm', 'ddim' or 'large_step'")
    if step == "ddim":
        _check_eta_fake(eta, op)
    _check_batched(grad, op, "grad")
    _check_abar(abar_a, grad, op, "abar_a")
    _check_abar(abar_b, grad, op, "abar_b")
    return empty_contiguous_like(grad), empty_contiguous_like(grad), empty_contiguous_like(grad)


def _rk4_fake(op, like, like_name, *ks):
    for index, k in enumerate(ks):
        name = f"k{index + 1}" if like_name == "x" else f"k{index + 2}"
        _check_like(k, like, op, name, like_name)
    return empty_contiguous_like(like)


@torch.library.register_fake("manifold_ext::rk4_combine")
def _rk4_combine_fake(k1, k2, k3, k4):
    return _rk4_fake("rk4_combine", k1, "k1", k2, k3, k4)


@torch.library.register_fake("manifold_ext::rk4_update")
def _rk4_update_fake(x, k1, k2, k3, k4, h):
    return _rk4_fake("rk4_update", x, "x", k1, k2, k3, k4)


# ---------------------------------------------------------------------------
# Autograd. First derivatives through the fused backward ops; those have
# their own autograd formulas below (second and higher derivatives).
# ---------------------------------------------------------------------------
def _nll_setup(ctx, inputs, output):
    acc, x_t, x_next, eps, abar_t, abar_next = inputs
    ctx.save_for_backward(x_t, x_next, eps, abar_t, abar_next)


def _nll_backward(ctx, grad_acc):
    refuse_gradient(ctx, (4, 5), ("abar_t", "abar_next"), "diffusion_nll_step", _NOT_IN_ABAR)
    x_t, x_next, eps, abar_t, abar_next = ctx.saved_tensors
    grads = (None, None, None)
    if any(ctx.needs_input_grad[1:4]):
        grads = call_op(
            torch.ops.manifold_ext.diffusion_nll_step_backward.default, grad_acc, x_t, x_next, eps, abar_t, abar_next
        )
    return grad_acc, *grads, None, None


register_autograd("diffusion_nll_step", _nll_backward, _nll_setup)


def _nll_forward_setup(ctx, inputs, output):
    acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after = inputs
    ctx.save_for_backward(x_t, x_next, eps, abar_t, abar_next, abar_after)


def _nll_forward_backward(ctx, grad_acc, grad_after):
    refuse_gradient(
        ctx, (5, 6, 7), ("abar_t", "abar_next", "abar_after"), "diffusion_nll_step_and_forward", _NOT_IN_ABAR
    )
    x_t, x_next, eps, abar_t, abar_next, abar_after = ctx.saved_tensors
    grad_x_t = grad_x_next = grad_eps = grad_noise = None
    if any(ctx.needs_input_grad[1:4]):
        grad_x_t, grad_x_next, grad_eps = call_op(
            torch.ops.manifold_ext.diffusion_nll_step_backward.default, grad_acc, x_t, x_next, eps, abar_t, abar_next
        )
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[4]:
        through_x_next, grad_noise, _ = call_op(
            torch.ops.manifold_ext.diffusion_step_backward.default, grad_after, "forward", abar_next, abar_after, 0.0
        )
        grad_x_next = through_x_next if grad_x_next is None else grad_x_next + through_x_next
    return grad_acc, grad_x_t, grad_x_next, grad_eps, grad_noise, None, None, None


register_autograd("diffusion_nll_step_and_forward", _nll_forward_backward, _nll_forward_setup)


def _register_linear_step(name: str, step: str, has_eta: bool, has_noise: bool):
    abar_names = ("abar_t", "abar_next" if step == "forward" else "abar_prev")

    def setup(ctx, inputs, output):
        abar_a, abar_b = inputs[2], inputs[3]
        ctx.eta = float(inputs[4]) if has_eta else 0.0
        ctx.noise_given = has_noise and inputs[-1] is not None
        ctx.save_for_backward(abar_a, abar_b)

    def backward(ctx, grad):
        refuse_gradient(ctx, (2, 3), abar_names, name, _NOT_IN_ABAR)
        abar_a, abar_b = ctx.saved_tensors
        grad_x, grad_eps, grad_noise = call_op(
            torch.ops.manifold_ext.diffusion_step_backward.default, grad, step, abar_a, abar_b, ctx.eta
        )
        if not has_noise:  # diffusion_forward_step(x_t, noise, ...): the noise sits in the eps slot
            return grad_x, grad_eps, None, None
        grads = [grad_x, grad_eps, None, None]
        if has_eta:
            grads.append(None)
        grads.append(grad_noise if ctx.noise_given else None)
        return tuple(grads)

    register_autograd(name, backward, setup)


_register_linear_step("diffusion_forward_step", "forward", has_eta=False, has_noise=False)
_register_linear_step("ddpm_step", "ddpm", has_eta=False, has_noise=True)
_register_linear_step("ddim_step", "ddim", has_eta=True, has_noise=True)
_register_linear_step("large_step", "large_step", has_eta=False, has_noise=True)


# RK4 is linear with the constant weights of Eq. 33: its backward scales the
# incoming gradient (plain PyTorch, so differentiable to any order).
def _rk4_combine_setup(ctx, inputs, output):
    pass


def _rk4_combine_backward(ctx, grad):
    sixth, third = grad * (1.0 / 6.0), grad * (1.0 / 3.0)
    return sixth, third, third, sixth


register_autograd("rk4_combine", _rk4_combine_backward, _rk4_combine_setup)


def _rk4_update_setup(ctx, inputs, output):
    ctx.h = float(inputs[5])


def _rk4_update_backward(ctx, grad):
    sixth, third = grad * (ctx.h / 6.0), grad * (ctx.h / 3.0)
    return grad, sixth, third, third, sixth, None


register_autograd("rk4_update", _rk4_update_backward, _rk4_update_setup)


# Second order. The likelihood step's backward: the VJP of the reference.
def _nll_step_backward_composite(grad_acc, x_t, x_next, eps, abar_t, abar_next):
    from manifold_ext.reference.diffusion import diffusion_nll_step_reference

    x_t, x_next, eps = differentiable_leaf(x_t), differentiable_leaf(x_next), differentiable_leaf(eps)
    zero = torch.zeros_like(grad_acc)
    term = diffusion_nll_step_reference(zero, x_t, x_next, eps, abar_t, abar_next)
    return vjp((term,), (x_t, x_next, eps), (grad_acc,))


register_backward_op_autograd(
    "diffusion_nll_step_backward",
    _nll_step_backward_composite,
    differentiable=(0, 1, 2, 3),
    not_differentiable=((4, "abar_t", _NOT_IN_ABAR), (5, "abar_next", _NOT_IN_ABAR)),
)


# The linear steps' backward, grad -> (c_x grad, c_eps grad, c_noise grad), is
# linear in grad; its own VJP, (v_x, v_eps, v_noise) -> c_x v_x + c_eps v_eps +
# c_noise v_noise, is the step op itself with the same coefficients (and so
# differentiable again, to any order).
def _step_backward_setup(ctx, inputs, output):
    grad, step, abar_a, abar_b, eta = inputs
    ctx.step, ctx.eta = step, eta
    ctx.save_for_backward(abar_a, abar_b)


def _step_backward_backward(ctx, v_x, v_eps, v_noise):
    refuse_gradient(ctx, (2, 3), ("abar_a", "abar_b"), "diffusion_step_backward", _NOT_IN_ABAR)
    abar_a, abar_b = ctx.saved_tensors
    m = torch.ops.manifold_ext
    if ctx.step == "forward":  # out = c_x x + c_noise noise with the noise in the eps slot (the noise slot is 0)
        grad = m.diffusion_forward_step.default(v_x, v_eps, abar_a, abar_b)
    elif ctx.step == "ddpm":
        grad = m.ddpm_step.default(v_x, v_eps, abar_a, abar_b, v_noise)
    elif ctx.step == "ddim":
        grad = m.ddim_step.default(v_x, v_eps, abar_a, abar_b, ctx.eta, v_noise)
    else:
        grad = m.large_step.default(v_x, v_eps, abar_a, abar_b, v_noise)
    return grad, None, None, None, None


register_autograd("diffusion_step_backward", _step_backward_backward, _step_backward_setup)
