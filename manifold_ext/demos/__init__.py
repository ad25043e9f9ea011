"""Reproductions and demos, run as ``manifold-ext demo <name>``.

Each demo module defines ``NAME``, ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args) -> summary dict``; it writes PNG figures and ``summary.json``
to its ``--out`` folder and has a ``--quick`` mode for tests and CI.

Demo modules import heavy optional packages (matplotlib, scikit-learn, ...), so
this package imports none of them until one is asked for: :data:`DEMO_MODULES`
names them, :func:`load` imports one, :func:`description` reads a demo's
``DESCRIPTION`` from its source without importing it (``manifold-ext --help``
and ``demo list`` stay fast), and ``DEMOS`` (name -> module) imports them all.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
from types import ModuleType

# demo name (its NAME) -> module in this package, in the order `demo list` shows them
DEMO_MODULES = {
    "coupling": "coupling_flow",
    "flow": "flow",
    "likelihood": "diffusion_likelihood",
    "sampling": "diffusion_sampling",
    "gridvae": "grid_vae",
    "attack": "attack",
    "polyhedra": "relu_polyhedra",
    "geodesic": "geodesic",
    "attributes": "attributes",
    "liftmap": "liftmap",
}


def _unknown(name: str) -> KeyError:
    return KeyError(f"unknown demo {name!r}; choose from {', '.join(DEMO_MODULES)}")


def load(name: str) -> ModuleType:
    """Import the module of demo ``name`` (checks that its NAME says the same)."""
    if name not in DEMO_MODULES:
        raise _unknown(name)
    module = importlib.import_module(f"{__name__}.{DEMO_MODULES[name]}")
    if module.NAME != name:
        raise RuntimeError(f"demo module {module.__name__} has NAME {module.NAME!r}, registered as {name!r}")
    return module


def description(name: str) -> str:
    """The demo's one-line ``DESCRIPTION``, read from its source (no import) when it is a literal."""
    if name not in DEMO_MODULES:
        raise _unknown(name)
    spec = importlib.util.find_spec(f"{__name__}.{DEMO_MODULES[name]}")
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        with open(spec.origin, encoding="utf-8") as source:
            tree = ast.parse(source.read())
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "DESCRIPTION"):
                try:
                    return ast.literal_eval(node.value)
                except ValueError:
                    break  # computed at import time: import it below
    return load(name).DESCRIPTION


def __getattr__(attribute: str):
    if attribute == "DEMOS":  # name -> module, every demo imported (slow: the optional packages load)
        return {name: load(name) for name in DEMO_MODULES}
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
