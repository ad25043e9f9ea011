"""Benchmarks: each op family against eager PyTorch and torch.compile of the same math.

``manifold-ext bench [family ...] [--quick] [--device cpu|cuda] [--out DIR] [--update-results]``
(or ``python -m manifold_ext.benchmark ...``). Results go to ``--out DIR`` (default
``demo_out/bench/``); only ``--update-results`` rewrites the committed
``benchmarks/results/`` of a source checkout, and never with ``--quick``. One file pair
per machine, CPU ISA path and thread count: ``cpu-<model>-<isa>-<N>threads.{json,md}``
(``ATEN_CPU_CAPABILITY=default|avx2|avx512`` selects the path), or ``cuda-<gpu>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from manifold_ext.benchmark import coupling, gaussian_elbo, relu, vae
from manifold_ext.benchmark import diffusion as diffusion_bench
from manifold_ext.benchmark import flows as flow_models
from manifold_ext.benchmark.harness import IMPLS, BenchSettings, run_cases
from manifold_ext.benchmark.results import header, load_average, machine_label, write_results

# family name -> function(device, quick) -> list[BenchCase]
FAMILIES = {
    "coupling": coupling.cases,
    "diffusion": diffusion_bench.cases,
    "vae": vae.cases,
    "gaussian_elbo": gaussian_elbo.cases,
    "relu": relu.cases,
    "glow": flow_models.cases,
}

DEFAULT_OUT = Path("demo_out/bench")


def committed_results_dir() -> Path:
    """``benchmarks/results/`` of the source checkout this package runs from."""
    checkout = Path(__file__).resolve().parents[2]
    folder = checkout / "benchmarks" / "results"
    if not folder.is_dir():
        raise SystemExit(
            f"--update-results writes the committed results of a source checkout, but {folder} "
            "does not exist (is manifold_ext installed from a wheel?); use --out DIR instead"
        )
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "families",
        nargs="*",
        metavar="family",
        help=f"op families to benchmark (default: all of {', '.join(FAMILIES)})",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available, else cpu)",
    )
    parser.add_argument("--quick", action="store_true", help="a few tiny cases and short timings (smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for the <machine>.json and <machine>.md results (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help="write the committed benchmarks/results/ of this checkout instead of --out",
    )
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help="comma-separated subset of eager,compile,ours (default: all three)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 15, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="also time ours on one thread for the large cases (thread scaling column)",
    )
    parser.add_argument(
        "--cases", default=None, help="comma-separated substrings: run only cases whose name contains one of them"
    )
    parser.add_argument(
        "--machine",
        default=None,
        help="label for the result files (default: cpu-<model>-<isa>-<N>threads or cuda-<gpu>)",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="time the full Fig. 5 likelihood evaluation instead of the op cases "
        "(writes <machine>-fig5-end-to-end.json)",
    )


def _output_dir(args: argparse.Namespace) -> Path:
    if args.update_results:
        if args.out is not None:
            raise SystemExit("--out and --update-results are exclusive: --update-results writes benchmarks/results/")
        if args.quick:
            raise SystemExit("--update-results refuses --quick: smoke-test timings must not replace committed results")
        return committed_results_dir()
    return args.out if args.out is not None else DEFAULT_OUT


def _separate_compile_cache_per_isa() -> None:
    # torch.compile's FX graph cache does not key on ATEN_CPU_CAPABILITY: a graph compiled
    # for AVX-512 is served to a later ATEN_CPU_CAPABILITY=default run, whose build of it
    # then fails ("at::vec has not been declared"). One cache folder per capability.
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if capability and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), f"isa-{capability.lower()}")


def _select_cases(args: argparse.Namespace, device: torch.device) -> list:
    families = args.families or list(FAMILIES)
    unknown_families = [f for f in families if f not in FAMILIES]
    if unknown_families:
        raise SystemExit(f"unknown benchmark family {unknown_families[0]!r}; choose from {', '.join(FAMILIES)}")
    cases = [case for family in families for case in FAMILIES[family](device, args.quick)]
    if args.cases:
        wanted = [w.strip() for w in args.cases.split(",") if w.strip()]
        cases = [case for case in cases if any(w in case.name for w in wanted)]
        if not cases:
            raise SystemExit(f"--cases {args.cases!r} matches no case of {', '.join(families)}")
    return cases


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    impls = tuple(name.strip() for name in args.impls.split(",") if name.strip())
    unknown = set(impls) - set(IMPLS)
    if unknown or not impls:
        raise SystemExit(f"--impls takes a subset of {','.join(IMPLS)}, got {args.impls!r}")
    out_dir = _output_dir(args)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    _separate_compile_cache_per_isa()
    load_at_start = load_average()
    if args.end_to_end:
        return [_run_end_to_end(args, device, out_dir, load_at_start)]
    settings = BenchSettings(
        rounds=args.rounds or (3 if args.quick else 15),
        min_round_seconds=0.005 if args.quick else 0.02,
        impls=impls,
        scaling_threads=1 if args.scaling and torch.get_num_threads() > 1 else None,
    )
    rows = run_cases(_select_cases(args, device), device, settings)
    json_path, md_path = write_results(rows, header(device, load_at_start, args.quick), out_dir, args.machine)
    print(f"wrote {json_path} and {md_path}")
    return rows


def _run_end_to_end(
    args: argparse.Namespace, device: torch.device, out_dir: Path, load_at_start: list[float] | None
) -> dict:
    from manifold_ext._atomic import atomic_write_text
    from manifold_ext._machine import machine_record

    result = diffusion_bench.end_to_end(device=str(device))
    result["machine"] = machine_record()
    result["load_average"] = {"start": load_at_start, "end": load_average()}
    path = out_dir / f"{args.machine or machine_label(device)}-fig5-end-to-end.json"
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m manifold_ext.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
