"""Benchmarks: each op family against eager PyTorch and torch.compile of the same math.

``python -m manifold_ext.benchmark [family ...]`` or ``manifold-ext bench``;
the scripts in the repository's ``benchmarks/`` folder call the same entry point.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from manifold_ext.benchmark import coupling, gaussian_elbo, relu, vae
from manifold_ext.benchmark import diffusion as diffusion_bench
from manifold_ext.benchmark import flows as flow_models
from manifold_ext.benchmark.harness import IMPLS, BenchSettings, environment, machine_name, run_cases, write_results

# family name -> function(device, quick) -> list[BenchCase]
FAMILIES = {
    "coupling": coupling.cases,
    "diffusion": diffusion_bench.cases,
    "vae": vae.cases,
    "gaussian_elbo": gaussian_elbo.cases,
    "relu": relu.cases,
    "glow": flow_models.cases,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("families", nargs="*", metavar="family",
                        help=f"op families to benchmark (default: all of {', '.join(FAMILIES)})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to run on (default: cuda when available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="a few tiny cases and short timings (smoke test)")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help="comma-separated subset of eager,compile,ours (default: all three)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 15, quick 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for <machine>.json and <machine>.md (default: benchmarks/results)")
    parser.add_argument("--machine", default=None, help="label for the result files (default: derived from the device)")


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    impls = tuple(name.strip() for name in args.impls.split(",") if name.strip())
    unknown = set(impls) - set(IMPLS)
    if unknown or not impls:
        raise SystemExit(f"--impls takes a subset of {','.join(IMPLS)}, got {args.impls!r}")
    settings = BenchSettings(
        rounds=args.rounds or (3 if args.quick else 15),
        min_round_seconds=0.005 if args.quick else 0.02,
        impls=impls,
    )
    families = args.families or list(FAMILIES)
    unknown_families = [f for f in families if f not in FAMILIES]
    if unknown_families:
        raise SystemExit(f"unknown benchmark family {unknown_families[0]!r}; choose from {', '.join(FAMILIES)}")
    cases = [case for family in families for case in FAMILIES[family](device, args.quick)]
    rows = run_cases(cases, device, settings)
    machine = args.machine or machine_name(device)
    json_path, md_path = write_results(rows, environment(device), args.out, machine)
    print(f"wrote {json_path} and {md_path}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m manifold_ext.benchmark", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
