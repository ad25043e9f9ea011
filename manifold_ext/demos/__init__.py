"""Reproductions and demos, run as ``manifold-ext demo <name>``.

Each demo module defines ``NAME``, ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args) -> summary dict``; it writes PNG figures and ``summary.json``
to its ``--out`` folder and has a ``--quick`` mode for tests and CI.

Demo modules import heavy optional packages (matplotlib, scikit-learn, ...), so
this package imports none of them until one is asked for: :data:`DEMO_MODULES`
names them (the table lives in :mod:`manifold_ext_cli`, which the command reads
without importing torch), :func:`load` imports one, :func:`description` reads a
demo's ``DESCRIPTION`` from its source without importing it, and ``DEMOS``
(name -> module) imports them all.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# The table and description() live in the command's package (standard library only), read by both.
from manifold_ext_cli import DEMO_MODULES, description, unknown_demo  # noqa: F401  (description: re-exported)


def load(name: str) -> ModuleType:
    """Import the module of demo ``name`` (checks that its NAME says the same)."""
    if name not in DEMO_MODULES:
        raise unknown_demo(name)
    module = importlib.import_module(f"{__name__}.{DEMO_MODULES[name]}")
    if module.NAME != name:
        raise RuntimeError(f"demo module {module.__name__} has NAME {module.NAME!r}, registered as {name!r}")
    return module


def __getattr__(attribute: str):
    if attribute == "DEMOS":  # name -> module, every demo imported (slow: the optional packages load)
        return {name: load(name) for name in DEMO_MODULES}
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
