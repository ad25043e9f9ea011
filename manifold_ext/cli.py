"""The ``manifold-ext`` command."""
from __future__ import annotations

import argparse
import json
import sys


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
    from manifold_ext.demos import DEMOS

    width = max(map(len, DEMOS))
    for name, module in DEMOS.items():
        print(f"{name:<{width}}  {module.DESCRIPTION}")
    return 0


def _cmd_demo_run(args: argparse.Namespace) -> int:
    summary = args.demo_module.run(args)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from manifold_ext import benchmark
    from manifold_ext.demos import DEMOS

    parser = argparse.ArgumentParser(
        prog="manifold-ext",
        description="Fused PyTorch operators for image-manifold models: benchmarks and paper reproductions.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    info = commands.add_parser("info", help="how the extension was built (torch, CUDA, CPU instruction sets)")
    info.set_defaults(handler=_cmd_info)

    bench = commands.add_parser("bench", help="benchmark op families against eager PyTorch and torch.compile",
                                description=benchmark.__doc__)
    benchmark.add_arguments(bench)
    bench.set_defaults(handler=_cmd_bench)

    from manifold_ext import _likelihood_cli  # argparse only: the work is imported when the command runs
    likelihood = commands.add_parser("likelihood", help="diffusion log p (Eq. 15) of points from a checkpoint, "
                                     "locally or on Dask (--scheduler)", description=_likelihood_cli.DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _likelihood_cli.add_arguments(likelihood)
    likelihood.set_defaults(handler=_likelihood_cli.run)

    demo = commands.add_parser("demo", help="run a reproduction ('manifold-ext demo list' lists them)")
    demos = demo.add_subparsers(dest="demo", required=True, metavar="name")
    demos.add_parser("list", help="list the demos").set_defaults(handler=_cmd_demo_list)
    for name, module in DEMOS.items():
        sub = demos.add_parser(name, help=module.DESCRIPTION, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(handler=_cmd_demo_run, demo_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
