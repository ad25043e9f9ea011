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

Forward-mode AD (``torch.autograd.forward_ad`` dual tensors) is not
implemented for these ops; on either path its tangent would be dropped
without a word, so a dual input is refused instead.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad


def _has_tangent(args: tuple) -> bool:
    # forward_ad keeps its innermost level in a module global: -1 outside every dual_level() block.
    if forward_ad._current_level < 0:
        return False
    return any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)


def _needs_autograd_layer(args: tuple) -> bool:
    return (
        torch.compiler.is_compiling()
        or torch._C._functorch.peek_interpreter_stack() is not None
        or (torch.is_grad_enabled() and torch._C._any_requires_grad(*args))
    )


def call_op(op, *args):
    """``op(*args)``, skipping the Python autograd layer when it has nothing to record."""
    if _has_tangent(args):
        raise NotImplementedError(
            f"{op}: forward-mode AD (dual tensors) is not supported and would drop the tangent; "
            "use reverse mode (torch.autograd.grad or .backward())"
        )
    if _needs_autograd_layer(args):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)
