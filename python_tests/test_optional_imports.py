"""Lean core (issue 16 item 4): the core packages import with torch, numpy and tqdm alone, and a
feature that needs an extra says which one. Each check runs in a fresh interpreter in which a
meta-path finder hides the optional packages, as if they were not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

OPTIONAL = ("matplotlib", "sklearn", "scipy", "cvxpy", "highspy", "distributed")
CORE_MODULES = (
    "manifold_ext",
    "manifold_ext.ops",
    "manifold_ext.flows",
    "manifold_ext.diffusion",
    "manifold_ext.vae",
    "manifold_ext.attacks",
)
# Core modules that still import an optional package at top level, and the file that does it.
# Their files belong to other helpers, who are moving these imports behind _optional.require.
# Strict both ways: a module listed here that imports cleanly fails too, so the list only
# shrinks (the integrator empties it after merging).
STILL_IMPORTING_OPTIONAL: dict[str, str] = {}

HIDE_OPTIONAL = textwrap.dedent(f"""
    import importlib.abc, sys
    HIDDEN = {OPTIONAL!r}

    class HideOptional(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    for name in list(sys.modules):
        if name.split(".")[0] in HIDDEN:
            del sys.modules[name]
    sys.meta_path.insert(0, HideOptional())
""")


def run_hidden(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", HIDE_OPTIONAL + textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def core_import_errors() -> dict:
    """Import each core module in one interpreter with the optional packages hidden: module -> error or None."""
    done = run_hidden(f"""
        import importlib, json, sys, traceback
        errors = {{}}
        for module in {CORE_MODULES!r}:
            try:
                importlib.import_module(module)
                loaded = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
                errors[module] = f"loaded {{loaded}}" if loaded else None
            except Exception:
                errors[module] = traceback.format_exc()
        print("ERRORS=" + json.dumps(errors))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("ERRORS="))
    return json.loads(line[len("ERRORS=") :])


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_optional_packages(module, core_import_errors):
    error = core_import_errors[module]
    if module in STILL_IMPORTING_OPTIONAL:
        assert error is not None, (
            f"{module} now imports without the optional packages: remove it from "
            "STILL_IMPORTING_OPTIONAL in python_tests/test_optional_imports.py"
        )
        assert "ModuleNotFoundError" in error, error
    else:
        assert error is None, (
            f"{module} needs an optional package at import time "
            f"(move it behind manifold_ext._optional.require):\n{error}"
        )


FEATURES_NEEDING_EXTRAS = {
    "distributed": "from manifold_ext._distributed import dask_executor; dask_executor('tcp://127.0.0.1:8786')",
    "demos": "from manifold_ext.demos.common import pyplot; pyplot()",
    "demos ": "from manifold_ext.cli import main; main(['demo', 'coupling', '--quick', '--out', 'unused'])",
}


def test_a_feature_that_needs_an_extra_names_it():
    done = run_hidden(f"""
        from manifold_ext._optional import MissingOptionalDependency
        for extra, feature in {FEATURES_NEEDING_EXTRAS!r}.items():
            try:
                exec(feature)
            except MissingOptionalDependency as error:
                print(f"{{extra.strip()}} MESSAGE: {{error}}")
            else:
                raise SystemExit(f"no MissingOptionalDependency from: {{feature}}")
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    messages = [line for line in done.stdout.splitlines() if " MESSAGE: " in line]
    assert len(messages) == len(FEATURES_NEEDING_EXTRAS), done.stdout
    for line in messages:
        extra = line.split(" MESSAGE: ")[0]
        assert f"pip install 'manifold_ext[{extra}]'" in line, line


def test_the_demo_list_needs_no_optional_package():
    done = run_hidden("""
        from manifold_ext.cli import main
        main(["demo", "list"])
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "likelihood" in done.stdout
