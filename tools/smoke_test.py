"""Smoke test of an INSTALLED manifold_ext (a wheel or an sdist build in a fresh venv).

    python tools/smoke_test.py [--demo coupling] [--out DIR]

Run it from outside the source tree: it refuses to test a manifold_ext imported
from a checkout. It imports the package, runs ``manifold-ext info``, calls every
op in ``manifold_ext.ops.__all__`` once on small inputs (and fails if an op was
added without a call here), and runs one demo with ``--quick``. CI runs it in
fresh virtual environments (.ci/run); python_tests/test_packaging.py runs the op
calls against the development install so this file cannot rot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def small_op_calls(ops, torch) -> dict:
    """One call per op on small float64 inputs; name -> callable returning its outputs."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x, h = randn(2, 3, 4), randn(2, 6, 4)
    acc = torch.zeros(2, dtype=torch.float64)
    x_t, x_next, eps, noise = randn(2, 5), randn(2, 5), randn(2, 5), randn(2, 5)
    ks = [randn(2, 5) for _ in range(4)]
    mu, logvar = randn(3, 2), randn(3, 2) * 0.1
    weights = [randn(8, 2), randn(8, 8), randn(1, 8)]
    biases = [randn(8), randn(8), randn(1)]
    points = randn(6, 2)
    packed = ops.activation_patterns(points, weights[:2], biases[:2])
    return {
        "affine_coupling": lambda: ops.affine_coupling(x, h),
        "diffusion_nll_step": lambda: ops.diffusion_nll_step(acc, x_t, x_next, eps, 0.9, 0.8),
        "diffusion_nll_step_and_forward": lambda: ops.diffusion_nll_step_and_forward(
            acc, x_t, x_next, eps, noise, 0.9, 0.8, 0.7
        ),
        "diffusion_forward_step": lambda: ops.diffusion_forward_step(x_t, noise, 0.9, 0.8),
        "ddpm_step": lambda: ops.ddpm_step(x_t, eps, 0.8, 0.9, noise=noise),
        "ddim_step": lambda: ops.ddim_step(x_t, eps, 0.8, 0.9, eta=0.5, noise=noise),
        "large_step": lambda: ops.large_step(x_t, eps, 0.8, 0.9, noise=noise),
        "rk4_combine": lambda: ops.rk4_combine(*ks),
        "rk4_update": lambda: ops.rk4_update(x_t, *ks, 0.1),
        "closest_centre_kl": lambda: ops.closest_centre_kl(mu, logvar),
        "nearest_centre_kl": lambda: ops.nearest_centre_kl(mu, logvar, randn(4, 2)),
        "gaussian_elbo": lambda: ops.gaussian_elbo(x[:1].expand(3, 3, 4), x[:1].expand(3, 3, 4) + 0.1, mu, logvar),
        "activation_patterns": lambda: ops.activation_patterns(points, weights[:2], biases[:2]),
        "unpack_patterns": lambda: ops.unpack_patterns(packed, 16),
        "pack_patterns": lambda: ops.pack_patterns(ops.unpack_patterns(packed, 16)),
        "hamming_distance": lambda: ops.hamming_distance(packed, packed),
        "hamming_topk": lambda: ops.hamming_topk(packed, packed, 2),
        "region_system": lambda: ops.region_system(weights, biases, packed),
    }


def run_every_op() -> list[str]:
    """Call every op once; raise if ``ops.__all__`` has a callable op without a call above."""
    import torch

    from manifold_ext import ops

    calls = small_op_calls(ops, torch)
    public_ops = [name for name in ops.__all__ if callable(getattr(ops, name))]
    missing = sorted(set(public_ops) - set(calls))
    if missing:
        raise AssertionError(f"tools/smoke_test.py has no call for the op(s) {missing}: add one to small_op_calls")
    for name in public_ops:
        outputs = calls[name]()
        for tensor in outputs if isinstance(outputs, tuple) else (outputs,):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise AssertionError(f"{name} returned non-finite values on the smoke-test input")
    return public_ops


def check_not_from_a_checkout(package_file: str | Path | None = None) -> Path:
    """The folder manifold_ext was imported from; SystemExit if it is a source checkout."""
    if package_file is None:
        import manifold_ext

        package_file = manifold_ext.__file__
    location = Path(package_file).resolve().parent
    if (location.parent / "pyproject.toml").exists() and (location.parent / "csrc").is_dir():
        raise SystemExit(f"smoke test: manifold_ext was imported from a source tree ({location}), not an install")
    return location


def cli() -> str:
    """The ``manifold-ext`` script of the environment this interpreter belongs to."""
    script = Path(sys.executable).parent / "manifold-ext"
    if not script.exists():
        raise SystemExit(f"smoke test: no manifold-ext script beside {sys.executable}: the install is incomplete")
    return str(script)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="coupling", help="demo to run with --quick (default: coupling)")
    parser.add_argument("--out", type=Path, default=None, help="demo output folder (default: a temporary one)")
    args = parser.parse_args(argv)

    location = check_not_from_a_checkout()
    import manifold_ext

    print(f"smoke test: manifold_ext {manifold_ext.__version__} from {location}")
    info = subprocess.run([cli(), "info"], check=True, capture_output=True, text=True).stdout
    build = json.loads(info)["build"]
    print(f"smoke test: manifold-ext info: torch {build['torch_version']}, ISA {build['cpu_isa_in_use']}")
    print(f"smoke test: ran {len(run_every_op())} ops")
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / args.demo
        demo = subprocess.run([cli(), "demo", args.demo, "--quick", "--out", str(out)], capture_output=True, text=True)
        if demo.returncode != 0:
            raise SystemExit(f"smoke test: demo {args.demo} --quick failed:\n{demo.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        print(f"smoke test: demo {args.demo} --quick wrote summary.json ({len(summary)} keys)")
    print("smoke test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
