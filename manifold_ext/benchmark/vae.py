"""Benchmark cases for op family 4, the closest-centre Gaussian KL (and its nearest-centre form)."""

from __future__ import annotations

import torch

from manifold_ext.benchmark.harness import BenchCase
from manifold_ext.ops import closest_centre_kl, nearest_centre_kl
from manifold_ext.reference import closest_centre_kl_reference, nearest_centre_kl_reference

# B x n of the posterior: a training batch of the 40-attribute CelebA model,
# large batches of the 2-D grid and of the 40-D model.
CLOSEST_SHAPES = {"batch": (256, 40), "grid-2d": (65536, 2), "large": (65536, 40)}
# (B, n, K): the 6x6 grid as an explicit centre set, a 1024-entry codebook.
NEAREST_SHAPES = {"grid 6x6": (65536, 2, 36), "codebook": (16384, 40, 1024)}
GRID = dict(sigma0=1.0 / 16.0, low=-2.0, high=3.0)


def _posterior(shape, device, dtype, requires_grad):
    mu = (torch.rand(shape, device=device, dtype=dtype) * 6 - 2.5).requires_grad_(requires_grad)
    logvar = (torch.randn(shape, device=device, dtype=dtype) - 5).requires_grad_(requires_grad)
    return mu, logvar


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _closest_case(name, shape, device, dtype, backward, guided=False):
    def make():
        mu, logvar = _posterior(shape, device, dtype, requires_grad=backward)
        kwargs = dict(GRID)
        if guided:  # partially guided: the first half of the dimensions from attributes
            kwargs["target"] = torch.randint(0, 2, shape, device=device).to(dtype)
            kwargs["mask"] = torch.arange(shape[1], device=device) < shape[1] // 2
        compiled = torch.compile(closest_centre_kl_reference, dynamic=False)
        grad_kl = torch.randn(shape[0], device=device, dtype=dtype)

        def run(fn):
            kl, _ = fn(mu, logvar, **kwargs)
            if backward:
                return torch.autograd.grad(kl, (mu, logvar), grad_kl)
            return kl

        return {
            "eager": lambda: run(closest_centre_kl_reference),
            "compile": lambda: run(compiled),
            "ours": lambda: run(closest_centre_kl),
        }

    numel = torch.Size(shape).numel()
    itemsize = torch.empty((), dtype=dtype).element_size()
    # forward: read mu, logvar (+ target, mask), write centre (and kl, B values);
    # backward: read mu, logvar, centre, write grad_mu, grad_logvar.
    forward_bytes = (3 + (1 if guided else 0)) * numel * itemsize + (numel // shape[1] if guided else 0)
    bytes_moved = forward_bytes + (5 * numel * itemsize if backward else 0)
    mode = "partially guided" if guided else "grid, clipped"
    return BenchCase(
        family="vae",
        name=f"closest_centre_kl {name} {'fwd+bwd' if backward else 'fwd'} ({mode})",
        shape="x".join(map(str, shape)),
        dtype=_dtype_name(dtype),
        make=make,
        bytes_moved=bytes_moved,
        large=name == "large",
    )


def _nearest_case(name, batch, n, num_centres, device, dtype, backward):
    def make():
        mu, logvar = _posterior((batch, n), device, dtype, requires_grad=backward)
        centres = torch.randn(num_centres, n, device=device, dtype=dtype) * 2
        compiled = torch.compile(nearest_centre_kl_reference, dynamic=False)
        grad_kl = torch.randn(batch, device=device, dtype=dtype)

        def run(fn):
            kl, _ = fn(mu, logvar, centres, 1.0 / 16.0)
            if backward:
                return torch.autograd.grad(kl, (mu, logvar), grad_kl)
            return kl

        return {
            "eager": lambda: run(nearest_centre_kl_reference),
            "compile": lambda: run(compiled),
            "ours": lambda: run(nearest_centre_kl),
        }

    return BenchCase(
        family="vae",
        name=f"nearest_centre_kl {name} {'fwd+bwd' if backward else 'fwd'}",
        shape=f"{batch}x{n}, K={num_centres}",
        dtype=_dtype_name(dtype),
        make=make,
        bytes_moved=None,  # compute bound: B*K*n distance terms
        note=""
        if backward or num_centres < 1024
        else "compute bound (B*K*n = 671M distance terms); eager and compile form the [B, K] matrix by cdist's matmul",
    )


def cases(device: torch.device, quick: bool = False) -> list[BenchCase]:
    dtype = torch.float32
    if quick:
        return [
            _closest_case("tiny", (64, 8), device, dtype, backward=False),
            _closest_case("tiny", (64, 8), device, dtype, backward=True),
            _nearest_case("tiny", 64, 4, 9, device, dtype, backward=False),
        ]
    out = []
    for name, shape in CLOSEST_SHAPES.items():
        out.append(_closest_case(name, shape, device, dtype, backward=False))
        out.append(_closest_case(name, shape, device, dtype, backward=True))
    out.append(_closest_case("large", CLOSEST_SHAPES["large"], device, dtype, backward=False, guided=True))
    for name, (batch, n, num_centres) in NEAREST_SHAPES.items():
        out.append(_nearest_case(name, batch, n, num_centres, device, dtype, backward=False))
        out.append(_nearest_case(name, batch, n, num_centres, device, dtype, backward=True))
    return out
