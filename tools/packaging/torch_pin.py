"""scikit-build-core metadata provider: the package's dependencies, torch pinned.

The compiled operators link against libtorch and use its C++ ABI, which changes
between torch releases, so a build of manifold_ext loads only in the torch
release (major.minor) it was compiled against (``manifold_ext/_extension.py``
checks this at import). This provider turns the core dependency ``torch`` of
``[tool.scikit-build.metadata.dependencies] core`` into ``torch==X.Y.*`` for the
torch installed in the build environment, so pip never pairs a wheel with a
torch it cannot load in. Build with ``--no-build-isolation`` (an isolated build
environment would hold a different, freshly downloaded torch).
"""

from __future__ import annotations

import re
from importlib import metadata


def installed_torch_series() -> str:
    """``"X.Y"`` of the torch installed where the build runs (without importing torch)."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            "manifold_ext is compiled against the torch installed in the build environment, and none is "
            "installed there. Install torch first, then build without isolation: "
            "pip install --no-build-isolation ."
        ) from None
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise RuntimeError(f"cannot read a release number from the installed torch version {version!r}")
    return f"{match.group(1)}.{match.group(2)}"


def pin_torch(requirements: list[str], series: str) -> list[str]:
    """Replace the ``torch`` requirement (any specifier) by ``torch==<series>.*``."""
    pinned, found = [], False
    for requirement in requirements:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
        if name.lower() == "torch":
            pinned.append(f"torch=={series}.*")
            found = True
        else:
            pinned.append(requirement)
    if not found:
        raise RuntimeError("the core dependencies must list torch (it is pinned at build time)")
    return pinned


def dynamic_metadata(field: str, settings: dict | None = None) -> list[str]:
    if field != "dependencies":
        raise RuntimeError(f"torch_pin provides 'dependencies' only, not {field!r}")
    settings = dict(settings or {})
    core = settings.pop("core", None)
    if not isinstance(core, list) or not all(isinstance(item, str) for item in core):
        raise RuntimeError("torch_pin needs a list of strings 'core' (the core dependencies)")
    if settings:
        raise RuntimeError(f"torch_pin: unknown settings {sorted(settings)}")
    return pin_torch(core, installed_torch_series())
