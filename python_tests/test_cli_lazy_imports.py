"""`manifold-ext --help` and friends answer fast: they import neither torch nor manifold_ext, no demo,
no benchmark and no optional heavy package (issue 20, item 7: every call took 4.5 s, torch's import).
Checked structurally, in fresh interpreters, not by timing."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import manifold_ext.demos
from manifold_ext.demos import DEMO_MODULES, description, load

HEAVY = ("sklearn", "matplotlib", "scipy", "cvxpy", "highspy", "distributed")

# Run the CLI in a fresh interpreter and report which modules it had imported.
PROBE = """
import json, sys
from manifold_ext_cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("MODULES=" + json.dumps(sorted(sys.modules)))
"""


def modules_after(argv: list[str]) -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES="))
    return set(json.loads(line[len("MODULES=") :]))


def heavy_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def demo_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("manifold_ext.demos.") and m != "manifold_ext.demos.__init__")


@pytest.mark.parametrize(
    "argv", [["--help"], ["demo", "--help"], ["demo", "list"], ["likelihood", "--help"], ["bench", "--help"]]
)
def test_help_and_list_import_no_demo_and_no_optional_package(argv):
    modules = modules_after(argv)
    assert heavy_modules(modules) == [], f"manifold-ext {' '.join(argv)} imported {heavy_modules(modules)[:5]}"
    assert demo_modules(modules) == [], f"manifold-ext {' '.join(argv)} imported {demo_modules(modules)}"
    if argv[0] != "bench":  # `bench --help` lists the benchmark's own options: it imports the package
        assert "torch" not in modules and "manifold_ext" not in modules, f"manifold-ext {' '.join(argv)} imported torch"
        assert "manifold_ext.benchmark" not in modules


def test_demo_help_imports_only_that_demo():
    modules = modules_after(["demo", "coupling", "--help"])
    assert demo_modules(modules) == ["manifold_ext.demos.common", "manifold_ext.demos.coupling_flow"]


def test_the_installed_command_is_the_light_one():
    from importlib.metadata import entry_points

    (command,) = [e for e in entry_points(group="console_scripts") if e.name == "manifold-ext"]
    assert command.value == "manifold_ext_cli:main"
    import manifold_ext.cli
    import manifold_ext_cli

    assert manifold_ext.cli.main is manifold_ext_cli.main


def test_every_demo_module_is_registered():
    """A demo module (one defining NAME and run) that DEMO_MODULES does not list would be unreachable."""
    registered = set(DEMO_MODULES.values())
    for info in pkgutil.iter_modules(manifold_ext.demos.__path__):
        if info.name == "common":
            continue
        module = __import__(f"manifold_ext.demos.{info.name}", fromlist=["NAME"])
        if hasattr(module, "NAME") and hasattr(module, "run"):
            assert info.name in registered, f"demo module {info.name} (NAME {module.NAME!r}) is not in DEMO_MODULES"


@pytest.mark.parametrize("name", list(DEMO_MODULES))
def test_description_read_without_import_matches_the_module(name):
    assert description(name) == load(name).DESCRIPTION


def test_unknown_demo_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown demo 'nope'; choose from coupling"):
        load("nope")
