"""Second (and higher) derivatives of the ops, in one place.

Every differentiable op has a fused backward op (``<op>_backward``, a
vector-Jacobian product, VJP). First derivatives run through it. To
differentiate *that*, each backward op gets its own autograd formula here:
the VJP of a VJP, taken by PyTorch's autograd through a plain-PyTorch
composite of the backward math, which is the op's reference
(``manifold_ext.reference``) differentiated once with ``create_graph=True``.
The composite builds its graph on the caller's tensors, so third and higher
derivatives are exact too. This path only runs when a second derivative is
asked for (``create_graph=True`` or ``torch.autograd.gradgradcheck``); plain
training steps use the fused kernels alone.

Arguments that an op is *not* differentiable in (the diffusion schedule
``abar``) raise a clear error when a gradient is requested for them, instead
of the zeros a missing derivative would silently stand for.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from manifold_ext.ops._dispatch import register_autograd


class NotDifferentiableError(RuntimeError):
    """A gradient was requested for an argument the op is not differentiable in."""


def refuse_gradient(ctx, positions: Sequence[int], names: Sequence[str], op: str, why: str) -> None:
    """Raise :class:`NotDifferentiableError` if autograd wants a gradient for one of ``positions``."""
    for position, name in zip(positions, names):
        if ctx.needs_input_grad[position]:
            raise NotDifferentiableError(
                f"{op}: a gradient with respect to {name} was requested, but {op} is not differentiable in {name} "
                f"({why}); pass a tensor that does not require grad (e.g. {name}.detach())"
            )


def differentiable_leaf(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself when it requires grad (so a graph built on it reaches the caller's graph), else a
    detached copy that does (a constant to the caller, but something to differentiate by here)."""
    return tensor if tensor.requires_grad else tensor.detach().requires_grad_()


def vjp(
    outputs: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor], cotangents: Sequence[torch.Tensor | None]
) -> tuple[torch.Tensor, ...]:
    """Differentiable VJP of ``outputs`` w.r.t. ``inputs`` (``create_graph=True``); zeros where an input is
    not used (a true zero derivative, e.g. the log-determinant of a coupling does not depend on x)."""
    pairs = [
        (out, cot) for out, cot in zip(outputs, cotangents) if out is not None and cot is not None and out.requires_grad
    ]
    if not pairs:
        return tuple(torch.zeros_like(t) for t in inputs)
    grads = torch.autograd.grad(
        [out for out, _ in pairs], list(inputs), [cot for _, cot in pairs], create_graph=True, allow_unused=True
    )
    return tuple(torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads))


def register_backward_op_autograd(
    op: str,
    first_order: Callable[..., Sequence[torch.Tensor]],
    differentiable: Sequence[int],
    not_differentiable: Sequence[tuple[int, str, str]] = (),
) -> None:
    """Make the fused VJP op ``manifold_ext::<op>`` differentiable.

    Args:
        op: the backward op's name.
        first_order: plain-PyTorch composite with the op's signature returning the op's outputs, built so
            that they are differentiable in every argument listed in ``differentiable``.
        differentiable: positions of the floating-point tensor arguments gradients can flow to.
        not_differentiable: ``(position, name, why)`` of tensor arguments that must not receive a gradient.
    """

    def setup_context(ctx, inputs, output):
        tensor_positions = [i for i, value in enumerate(inputs) if isinstance(value, torch.Tensor)]
        ctx.tensor_positions = tensor_positions
        ctx.constants = {i: value for i, value in enumerate(inputs) if i not in tensor_positions}
        ctx.num_inputs = len(inputs)
        ctx.save_for_backward(*(inputs[i] for i in tensor_positions))

    def backward(ctx, *cotangents):
        refuse_gradient(
            ctx,
            [p for p, _, _ in not_differentiable],
            [n for _, n, _ in not_differentiable],
            op,
            "; ".join(sorted({why for _, _, why in not_differentiable})),
        )
        inputs = [None] * ctx.num_inputs
        for position, tensor in zip(ctx.tensor_positions, ctx.saved_tensors):
            inputs[position] = tensor
        for position, value in ctx.constants.items():
            inputs[position] = value
        wanted = [i for i in differentiable if ctx.needs_input_grad[i]]
        grads: list[torch.Tensor | None] = [None] * ctx.num_inputs
        if not wanted:
            return tuple(grads)
        create_graph = torch.is_grad_enabled()  # True when the caller asks for yet another derivative
        with torch.enable_grad():
            outputs = first_order(*inputs)
            pairs = [(out, cot) for out, cot in zip(outputs, cotangents) if cot is not None and out.requires_grad]
            if not pairs:  # no output depends on a wanted input: a true zero derivative
                return tuple(grads)
            found = torch.autograd.grad(
                [out for out, _ in pairs],
                [inputs[i] for i in wanted],
                [cot for _, cot in pairs],
                create_graph=create_graph,
                allow_unused=True,
            )
        for position, grad in zip(wanted, found):
            grads[position] = grad
        return tuple(grads)

    register_autograd(op, backward, setup_context)
