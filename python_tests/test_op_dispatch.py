"""How the wrappers call the ops (ops/_dispatch.py): below the autograd layer when no gradient can flow, through
an eager autograd.Function built from the registered formulas when one can, as registered when traced."""

from __future__ import annotations

import pytest
import torch

from manifold_ext import ops
from manifold_ext.ops._dispatch import _EAGER_AUTOGRAD, _is_traced_or_transformed, call_op


def _kl_inputs(requires_grad: bool):
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 3, generator=generator, dtype=torch.float64).requires_grad_(requires_grad)
    logvar = (0.3 * torch.randn(6, 3, generator=generator, dtype=torch.float64)).requires_grad_(requires_grad)
    return mu, logvar


def test_no_grad_call_skips_the_autograd_layer_and_gives_the_same_bits(monkeypatch):
    mu, logvar = _kl_inputs(requires_grad=False)
    through_autograd = torch.ops.manifold_ext.closest_centre_kl.default(
        mu, logvar, None, None, 0.5, 1.0, 0.0, None, None
    )
    entered = []
    original = torch._C._AutoDispatchBelowAutograd

    def recording_guard():
        entered.append(True)
        return original()

    monkeypatch.setattr(torch._C, "_AutoDispatchBelowAutograd", recording_guard)
    fast = ops.closest_centre_kl(mu, logvar, sigma0=0.5)
    assert entered, "a call without gradients should dispatch below the autograd layer"
    for a, b in zip(fast, through_autograd):
        assert torch.equal(a, b)
        assert not a.requires_grad and a.grad_fn is None


def test_gradients_still_recorded_when_an_input_requires_grad():
    mu, logvar = _kl_inputs(requires_grad=True)
    kl, _ = ops.closest_centre_kl(mu, logvar, sigma0=0.5)
    assert kl.grad_fn is not None
    (grad_mu,) = torch.autograd.grad(kl.sum(), mu)
    centre = torch.round(mu.detach())
    torch.testing.assert_close(grad_mu, (mu.detach() - centre) / 0.25)  # dKL/dmu = (mu - c) / sigma0^2


def test_no_grad_mode_records_nothing_even_for_inputs_requiring_grad():
    mu, logvar = _kl_inputs(requires_grad=True)
    with torch.no_grad():
        kl, _ = ops.closest_centre_kl(mu, logvar, sigma0=0.5)
    assert kl.grad_fn is None and not kl.requires_grad


def test_torch_func_transforms_and_tracing_keep_the_autograd_layer():
    """Inside torch.func transforms and while torch.compile traces, calls take the registered path unchanged."""
    mu, _ = _kl_inputs(requires_grad=False)
    seen = []

    def probe(m):
        seen.append(_is_traced_or_transformed())
        return m.sum()

    torch.func.grad(probe)(mu)
    torch.func.vmap(probe)(mu)
    torch.compile(probe, backend="eager", fullgraph=True)(mu)
    assert seen == [True, True, True]
    assert not _is_traced_or_transformed()


def test_call_op_passes_non_tensor_arguments_through():
    x = torch.randn(5, 2)
    noise = torch.randn(5, 2)
    op = torch.ops.manifold_ext.diffusion_forward_step.default
    abar_t = torch.tensor(0.9, dtype=torch.float64)
    abar_next = torch.tensor(0.5, dtype=torch.float64)
    assert torch.equal(call_op(op, x, noise, abar_t, abar_next), op(x, noise, abar_t, abar_next))


def test_float_schedules_reuse_one_tensor_per_value_safely():
    """_abar keeps one 0-dim tensor per schedule value: made outside inference mode (so a value first used under
    torch.inference_mode still works where autograd saves it), never under fake tensors, never for 0 or NaN."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from manifold_ext.ops.diffusion import _abar, _abar_constant

    value = 0.812345678901  # a value no other test uses
    with torch.inference_mode():
        x = torch.randn(3, 2)
        noise = torch.randn(3, 2)
        first = ops.diffusion_forward_step(x, noise, value, 0.5)
    x = torch.randn(3, 2, requires_grad=True)
    noise = torch.randn(3, 2)
    out = ops.diffusion_forward_step(x, noise, value, 0.5)  # saves the cached abar for backward
    out.sum().backward()
    # d out / d x = sqrt(abar_next / abar_t)
    torch.testing.assert_close(x.grad, torch.full_like(x, (0.5 / value) ** 0.5))
    assert first.shape == out.shape
    assert _abar(value, "abar_t", "test") is _abar(value, "abar_t", "test")
    assert not _abar(value, "abar_t", "test").is_inference()

    cached_before = _abar_constant.cache_info().currsize
    with FakeTensorMode():
        fake = _abar(0.123456789, "abar_t", "test")
    assert _abar_constant.cache_info().currsize == cached_before
    assert type(fake) is not torch.Tensor  # a fake tensor, made fresh
    assert _abar(-0.0, "abar_t", "test") is not _abar(-0.0, "abar_t", "test")
    assert str(_abar(-0.0, "abar_t", "test").item()) == "-0.0"


def test_dual_tensors_are_refused_rather_than_losing_their_tangent():
    import torch.autograd.forward_ad as forward_ad

    mu, logvar = _kl_inputs(requires_grad=False)
    with forward_ad.dual_level():
        dual_mu = forward_ad.make_dual(mu, torch.ones_like(mu))
        with pytest.raises(NotImplementedError, match="closest_centre_kl.*forward-mode AD"):
            ops.closest_centre_kl(dual_mu, logvar, sigma0=0.5)
        kl, _ = ops.closest_centre_kl(mu, logvar, sigma0=0.5)  # no dual input: an ordinary call
    assert torch.equal(kl, ops.closest_centre_kl(mu, logvar, sigma0=0.5)[0])


def test_eager_function_gives_the_registered_kernels_values_and_gradients_bit_for_bit():
    """A wrapper call with gradients runs the eager Function; the op called directly runs torch.library's
    Autograd kernel. Same setup_context and backward, so the same bits, first and second order."""
    mu, logvar = _kl_inputs(requires_grad=True)
    target = torch.randn(6, 3, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([True, False, True])
    eager = ops.closest_centre_kl(mu, logvar, sigma0=0.5, target=target, mask=mask)
    registered = torch.ops.manifold_ext.closest_centre_kl.default(mu, logvar, target, mask, 0.5, 1.0, 0.0, None, None)
    assert type(eager[0].grad_fn).__name__ == "Eager_closest_centre_klBackward"
    assert "Eager" not in type(registered[0].grad_fn).__name__
    weights = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    results = []
    for kl, centre in (eager, registered):
        assert not centre.requires_grad
        first = torch.autograd.grad((kl * weights).sum(), (mu, logvar, target), create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in first), (mu, logvar, target))
        results.append((kl, centre, *first, *second))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_every_op_with_a_formula_has_an_eager_function_except_tensor_list_ops():
    names = {op._opname for op in _EAGER_AUTOGRAD}
    assert {"closest_centre_kl", "closest_centre_kl_backward", "affine_coupling", "gaussian_elbo"} <= names
    assert {"diffusion_nll_step", "ddpm_step", "rk4_update", "diffusion_step_backward"} <= names
    assert "region_system" not in names  # Tensor[] arguments: torch.library's kernel unpacks the lists


def test_backward_op_called_with_create_graph_goes_through_its_eager_function():
    mu, logvar = _kl_inputs(requires_grad=True)
    kl, _ = ops.closest_centre_kl(mu, logvar, sigma0=0.5)
    (grad_mu,) = torch.autograd.grad(kl.sum(), mu, create_graph=True)
    assert type(grad_mu.grad_fn).__name__ == "Eager_closest_centre_kl_backwardBackward"
    (hessian_diagonal,) = torch.autograd.grad(grad_mu.sum(), mu)
    torch.testing.assert_close(hessian_diagonal, torch.full_like(mu, 1 / 0.25))  # d2KL/dmu2 = 1 / sigma0^2
