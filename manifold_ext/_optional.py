"""Optional dependencies, imported where they are used, with a clear remedy when missing.

The core package needs only torch, numpy and tqdm. Heavier parts are extras:
``geometry`` (highspy, cvxpy, scipy), ``demos`` (matplotlib, scikit-learn, scipy),
``distributed`` (dask's ``distributed``). Import them through :func:`require`
inside the function that needs them, never at module top level, so that
``import manifold_ext.<package>`` works with the core dependencies alone.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module to import -> (pip distribution name, manifold_ext extra that provides it)
KNOWN_OPTIONAL = {
    "highspy": ("highspy", "geometry"),
    "cvxpy": ("cvxpy", "geometry"),
    "scipy": ("scipy", "geometry"),
    "matplotlib": ("matplotlib", "demos"),
    "sklearn": ("scikit-learn", "demos"),
    "distributed": ("distributed", "distributed"),
}


class MissingOptionalDependency(ImportError):
    """An optional dependency is needed for this feature and is not installed."""


def require(module: str, feature: str = "") -> ModuleType:
    """Import ``module`` (e.g. ``"sklearn.metrics"``) or raise MissingOptionalDependency with the pip remedy."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != top:
            raise  # the module exists but one of ITS imports failed: not ours to explain
        distribution, extra = KNOWN_OPTIONAL.get(top, (top, "all"))
        needed_for = f" for {feature}" if feature else ""
        raise MissingOptionalDependency(
            f"{distribution} is needed{needed_for} but is not installed: "
            f"pip install 'manifold_ext[{extra}]' (or pip install {distribution})"
        ) from error
