"""How the op wrappers call the registered ops.

``torch.library.register_autograd`` puts a Python function on each op's
Autograd dispatch key, and every call passes through it, gradients or not:
about 4.5 µs per call on the 2-core build machine, more than the 3.9 µs all
the rest of a call on a small tensor takes (dispatcher, checks, kernel). When
no gradient can flow (grad mode off, or no input requiring grad), the
wrappers dispatch below the Autograd key instead: the same kernel and the
same outputs, which would not have required grad either way. Traced calls
(``torch.compile``, ``torch.export``) and calls inside ``torch.func``
transforms keep the ordinary path, so they see the op as registered.

When a gradient can flow, an eager call (not traced, not inside a
``torch.func`` transform) goes through a plain ``torch.autograd.Function``
built from the same ``setup_context`` and ``backward`` as the registered
formula (:func:`register_autograd`), instead of through the Autograd kernel
that ``torch.library`` generates: that kernel converts every argument into
Python and back and wraps the formulas in checks, about 50 µs more per
forward and 15 µs more per backward on the build machine (the closest-centre
KL on 256 x 40: forward with gradients 75 -> 26 µs). Ops with tensor-list
arguments keep the registered kernel (a plain Function does not see the
tensors inside a list).

Forward-mode AD (``torch.autograd.forward_ad`` dual tensors) is not
implemented for these ops; on either path its tangent would be dropped
without a word, so a dual input is refused instead.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.autograd import forward_ad

# op overload -> the eager autograd.Function carrying its registered formulas (see register_autograd)
_EAGER_AUTOGRAD: dict[torch._ops.OpOverload, type[torch.autograd.Function]] = {}


def register_autograd(name: str, backward: Callable, setup_context: Callable) -> None:
    """Register ``manifold_ext::<name>``'s autograd formula with ``torch.library`` (what traced and
    ``torch.func`` calls use) and build the eager Function :func:`call_op` uses from the same two functions."""
    torch.library.register_autograd(f"manifold_ext::{name}", backward, setup_context=setup_context)
    op = getattr(torch.ops.manifold_ext, name).default
    if not _has_tensor_list(op._schema):
        _EAGER_AUTOGRAD[op] = _eager_function(op, backward, setup_context)


def _has_tensor_list(schema) -> bool:
    def is_list(kind) -> bool:
        if isinstance(kind, torch.OptionalType):
            kind = kind.getElementType()
        return isinstance(kind, torch.ListType)

    return any(is_list(arg.type) for arg in schema.arguments)


def _eager_function(op, backward: Callable, setup_context: Callable) -> type[torch.autograd.Function]:
    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*args)
        setup_context(ctx, args, output)
        return output

    return type(
        f"Eager_{op._opname}",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


def _has_tangent(args: tuple) -> bool:
    # forward_ad keeps its innermost level in a module global: -1 outside every dual_level() block.
    if forward_ad._current_level < 0:
        return False
    return any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)


def _is_traced_or_transformed() -> bool:
    return torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None


def call_op(op, *args):
    """``op(*args)``: below the autograd layer when it has nothing to record, through the op's eager
    Function when it has, as registered when traced or transformed."""
    if _has_tangent(args):
        raise NotImplementedError(
            f"{op}: forward-mode AD (dual tensors) is not supported and would drop the tangent; "
            "use reverse mode (torch.autograd.grad or .backward())"
        )
    if _is_traced_or_transformed():
        return op(*args)
    if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
        function = _EAGER_AUTOGRAD.get(op)
        return op(*args) if function is None else function.apply(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)
