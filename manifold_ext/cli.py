"""The ``manifold-ext`` command.

Imports are lazy: the parser imports only the demo or benchmark module the
command line names, so ``manifold-ext --help``, ``demo --help`` and ``demo list``
never load matplotlib, scikit-learn, scipy or cvxpy (a demo module's imports
alone took seconds).
"""
from __future__ import annotations

import argparse
import json
import sys

BENCH_HELP = "benchmark op families against eager PyTorch and torch.compile"


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import manifold_ext

    info = {"manifold_ext": manifold_ext.__version__, "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "build": manifold_ext.build_info()}
    print(json.dumps(info, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from manifold_ext import benchmark

    benchmark.run(args)
    return 0


def _cmd_demo_list(args: argparse.Namespace) -> int:
    from manifold_ext.demos import DEMO_MODULES, description

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
    from manifold_ext.demos import DEMO_MODULES, description, load

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

    demo = commands.add_parser("demo", help="run a reproduction ('manifold-ext demo list' lists them)")
    demos = demo.add_subparsers(dest="demo", required=True, metavar="name")
    demos.add_parser("list", help="list the demos").set_defaults(handler=_cmd_demo_list)
    for name in DEMO_MODULES:
        if command == "demo" and name == demo_name:
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


if __name__ == "__main__":
    sys.exit(main())
