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
from manifold_ext import ops

DOCS = Path(__file__).resolve().parents[1] / "docs"
AUTODOC = re.compile(r"^\.\. auto(function|class|data|attribute|method|exception|module)::\s+(\S+)(.*?)(?=^\.\. |\Z)",
                     re.M | re.S)

# Headings every op docstring carries (numpy "Heading\n-------" or Google "Heading:" style).
OP_SECTIONS = ("Shapes", "Dtypes and devices", "Numerics", "Raises")
# Ops whose docstrings did not have the sections yet when this test was written: the ops
# helper is adding them. Strict both ways: an op listed here that now has every section
# fails too, so the list only shrinks (the integrator empties it after merging).
OPS_PENDING_SECTIONS = frozenset({
    "affine_coupling", "diffusion_nll_step", "diffusion_nll_step_and_forward", "diffusion_forward_step",
    "ddpm_step", "ddim_step", "large_step", "rk4_combine", "rk4_update", "closest_centre_kl",
    "nearest_centre_kl", "gaussian_elbo", "activation_patterns", "unpack_patterns", "pack_patterns",
    "hamming_distance", "hamming_topk", "region_system",
})


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
    assert not missing, (f"{package}.__all__ names not rendered on any docs page: {missing}; add an "
                         f"autofunction/autoclass line to the family's page in docs/ops/ or docs/packages/")


def op_names() -> list[str]:
    return [name for name in ops.__all__ if callable(getattr(ops, name))]


def missing_sections(name: str) -> list[str]:
    doc = inspect.getdoc(getattr(ops, name)) or ""
    lines = [line.strip() for line in doc.splitlines()]
    found = set()
    for index, line in enumerate(lines):
        underlined = index + 1 < len(lines) and set(lines[index + 1]) == {"-"}
        for section in OP_SECTIONS:
            if line == f"{section}:" or (line == section and underlined):
                found.add(section)
    return [section for section in OP_SECTIONS if section not in found]


@pytest.mark.parametrize("name", op_names())
def test_op_docstring_states_shapes_dtypes_numerics_and_errors(name):
    missing = missing_sections(name)
    if name in OPS_PENDING_SECTIONS:
        assert missing, (f"ops.{name} now documents {', '.join(OP_SECTIONS)}: remove it from "
                         "OPS_PENDING_SECTIONS in python_tests/test_docs_contract.py")
    else:
        assert not missing, f"ops.{name}'s docstring lacks the section(s) {missing}"


def test_pending_list_names_real_ops():
    assert OPS_PENDING_SECTIONS <= set(op_names())


def test_every_op_family_page_has_math_and_api():
    for page in sorted((DOCS / "ops").glob("*.md")):
        if page.name == "index.md":
            continue
        text = page.read_text()
        assert re.search(r"^\$\$ \(eq-[\w-]+\)$", text, re.M), f"{page.name}: no labelled equation"
        assert ".. autofunction:: manifold_ext.ops." in text, f"{page.name}: no op rendered from its docstring"
        assert "def " not in text, f"{page.name}: a signature typed by hand (autodoc renders them)"
