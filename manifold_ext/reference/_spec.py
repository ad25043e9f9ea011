"""One signature per op, shared by the op wrapper and its reference by construction.

A reference is declared with :func:`reference_of` and lists the op's
parameters by name only, without defaults: the decorator checks the names and
kinds against the op wrapper (so the two cannot drift apart without failing at
import) and takes the defaults from the wrapper, where they are written once.
The reference stays a plain function (no wrapper around it), so it costs
nothing per call and ``torch.compile`` traces it as before.
"""

from __future__ import annotations

import inspect
from typing import Callable


def reference_of(op: Callable) -> Callable[[Callable], Callable]:
    """Declare the decorated function the plain-PyTorch reference of the op wrapper ``op``."""
    op_parameters = list(inspect.signature(op).parameters.values())

    def decorate(reference: Callable) -> Callable:
        parameters = list(inspect.signature(reference).parameters.values())
        described = [(p.name, p.kind) for p in parameters]
        expected = [(p.name, p.kind) for p in op_parameters]
        if described != expected:
            raise TypeError(
                f"{reference.__name__} must take the parameters of {op.__name__} (names and kinds), "
                f"{expected}; got {described}"
            )
        with_defaults = [p.name for p in parameters if p.default is not inspect.Parameter.empty]
        if with_defaults:
            raise TypeError(
                f"{reference.__name__}: leave out the defaults of {with_defaults}; they are taken from "
                f"{op.__name__}, where they are written once"
            )
        reference.__defaults__ = op.__defaults__
        reference.__kwdefaults__ = dict(op.__kwdefaults__) if op.__kwdefaults__ else None
        reference.__annotations__ = dict(op.__annotations__)
        own = inspect.cleandoc(reference.__doc__) if reference.__doc__ else ""
        reference.__doc__ = (
            f"Plain-PyTorch reference of :func:`manifold_ext.ops.{op.__name__}`: the same signature "
            f"and defaults, the same results (the op's specification).\n\n{own}"
        ).rstrip()
        reference.reference_of = op
        return reference

    return decorate
