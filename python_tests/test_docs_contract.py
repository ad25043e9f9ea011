"""The documentation contract (issue 16 item 5): every public name of manifold_ext's packages
is rendered on an API page, and every op's docstring states shapes, dtypes/devices, numerics
and errors. Checked on the sources (fast); `make docs` (-W) checks that autodoc renders them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import manifold_ext

DOCS = Path(__file__).resolve().parents[1] / "docs"
AUTODOC = re.compile(
    r"^\.\. auto(function|class|data|attribute|method|exception|module)::\s+(\S+)(.*?)(?=^\.\. |\Z)", re.M | re.S
)


def documented_targets() -> tuple[set[str], set[str]]:
    """Objects named by autodoc directives in the docs, and modules documented with their
    ``__all__`` (``automodule`` with ``:members:`` and ``:imported-members:``)."""
    objects, whole_modules = set(), set()
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts:
            continue
        for kind, target, options in AUTODOC.findall(page.read_text()):
            objects.add(target)
            if kind == "module" and ":members:" in options and ":imported-members:" in options:
                whole_modules.add(target)
    return objects, whole_modules


def public_packages() -> list[str]:
    names = ["manifold_ext"]
    for info in pkgutil.iter_modules(manifold_ext.__path__):
        if info.ispkg:
            names.append(f"manifold_ext.{info.name}")
    return [name for name in names if hasattr(importlib.import_module(name), "__all__")]


@pytest.mark.parametrize("package", public_packages())
def test_every_public_name_is_on_an_api_page(package):
    module = importlib.import_module(package)
    objects, whole_modules = documented_targets()
    missing = []
    for name in module.__all__:
        if name.startswith("__") or inspect.ismodule(getattr(module, name)):
            continue  # __version__; subpackages are documented through their own names
        if package in whole_modules or f"{package}.{name}" in objects:
            continue
        missing.append(name)
    assert not missing, (
        f"{package}.__all__ names not rendered on any docs page: {missing}; add an "
        f"autofunction/autoclass line to the family's page in docs/ops/ or docs/packages/"
    )
