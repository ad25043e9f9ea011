"""The ``manifold-ext`` command, kept outside the ``manifold_ext`` package on purpose.

Importing ``manifold_ext`` imports torch and loads the compiled operators, which takes
seconds. This package imports only the standard library, so ``manifold-ext --help``,
``demo --help`` and ``demo list`` answer without torch. A command imports what it needs
when it runs, and ``demo <name>`` imports only that demo's module, to add its options.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

from manifold_ext_cli import likelihood

BENCH_HELP = "benchmark op families against eager PyTorch and torch.compile"

# demo name (its NAME) -> module in manifold_ext.demos, in the order `demo list` shows them
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


def unknown_demo(name: str) -> KeyError:
    return KeyError(f"unknown demo {name!r}; choose from {', '.join(DEMO_MODULES)}")


def _demo_source(module: str) -> Path | None:
    """The source file of ``manifold_ext.demos.<module>``, found without importing ``manifold_ext``."""
    spec = importlib.util.find_spec("manifold_ext")  # a top-level name: found, not executed
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for candidate in (Path(folder, "demos", f"{module}.py"), Path(folder, "demos", module, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def _literal_description(source: Path) -> str | None:
    """The module-level ``DESCRIPTION = "..."`` of a demo's source, or None when it is computed."""
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "DESCRIPTION"
        ):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def description(name: str) -> str:
    """The demo's one-line ``DESCRIPTION``, read from its source (no import) when it is a literal."""
    if name not in DEMO_MODULES:
        raise unknown_demo(name)
    source = _demo_source(DEMO_MODULES[name])
    text = _literal_description(source) if source is not None else None
    if text is not None:
        return text
    from manifold_ext.demos import load  # computed at import time: import the demo

    return load(name).DESCRIPTION


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import manifold_ext

    info = {
        "manifold_ext": manifold_ext.__version__,
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "build": manifold_ext.build_info(),
    }
    print(json.dumps(info, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from manifold_ext import benchmark

    benchmark.run(args)
    return 0


def _cmd_demo_list(args: argparse.Namespace) -> int:
    width = max(map(len, DEMO_MODULES))
    for name in DEMO_MODULES:
        print(f"{name:<{width}}  {description(name)}")
    return 0


def _cmd_demo_run(args: argparse.Namespace) -> int:
    summary = args.demo_module.run(args)
    print(json.dumps(summary, indent=2))
    return 0


def _named_command(argv: list[str]) -> tuple[str | None, str | None]:
    """The command and its first argument (e.g. ``("demo", "flow")``), skipping options."""
    words = [word for word in argv if not word.startswith("-")]
    return (words[0] if words else None), (words[1] if len(words) > 1 else None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command's parser. Only the demo or benchmark that ``argv`` names is imported
    to add its own options; the others appear by name and description."""
    argv = sys.argv[1:] if argv is None else argv
    command, demo_name = _named_command(argv)
    parser = argparse.ArgumentParser(
        prog="manifold-ext",
        description="Fused PyTorch operators for image-manifold models: benchmarks and paper reproductions.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    info = commands.add_parser("info", help="how the extension was built (torch, CUDA, CPU instruction sets)")
    info.set_defaults(handler=_cmd_info)

    if command == "bench":
        from manifold_ext import benchmark

        bench = commands.add_parser("bench", help=BENCH_HELP, description=benchmark.__doc__)
        benchmark.add_arguments(bench)
    else:
        bench = commands.add_parser("bench", help=BENCH_HELP)
    bench.set_defaults(handler=_cmd_bench)

    scoring = commands.add_parser(
        "likelihood",
        help="diffusion log p (Eq. 15) of points from a checkpoint, locally or on Dask (--scheduler)",
        description=likelihood.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    likelihood.add_arguments(scoring)
    scoring.set_defaults(handler=likelihood.run)

    demo = commands.add_parser("demo", help="run a reproduction ('manifold-ext demo list' lists them)")
    demos = demo.add_subparsers(dest="demo", required=True, metavar="name")
    demos.add_parser("list", help="list the demos").set_defaults(handler=_cmd_demo_list)
    for name in DEMO_MODULES:
        if command == "demo" and name == demo_name:
            from manifold_ext.demos import load

            module = load(name)
            sub = demos.add_parser(name, help=module.DESCRIPTION, description=module.__doc__)
            module.add_arguments(sub)
            sub.set_defaults(handler=_cmd_demo_run, demo_module=module)
        else:
            demos.add_parser(name, help=description(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return args.handler(args)
