"""Benchmark cases for the fused Gaussian ELBO (VAE-classifier training, ELBO purification)."""

from __future__ import annotations

import torch

from manifold_ext.benchmark.harness import BenchCase
from manifold_ext.ops import gaussian_elbo
from manifold_ext.reference import gaussian_elbo_reference

# (case name, [B, *image] of x, latent dimension)
SHAPES = {
    "digits purify": ((540, 1, 8, 8), 8),  # the attack demo: 8x8 digits test set, 8-d latent
    "celeba-64": ((256, 3, 64, 64), 64),  # a CelebA-sized batch
    "tiny": ((4, 1, 8, 8), 2),
}
DECODER_LOGVAR = -4.6  # sigma_x = 0.1


def _inputs(shape, latents, device, dtype, requires_grad):
    def make(*size):
        return torch.rand(size, device=device, dtype=dtype).requires_grad_(requires_grad)

    return make(*shape), make(*shape), make(shape[0], latents), make(shape[0], latents)


def _case(name, shape, latents, dtype, make, tensors_moved):
    """A case whose fused kernels move `tensors_moved` x-sized tensors (+ the latent ones)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = torch.Size(shape).numel()
    return BenchCase(
        family="gaussian_elbo",
        name=name,
        shape="x " + "x".join(map(str, shape)) + f", z {latents}",
        dtype=str(dtype).replace("torch.", ""),
        make=make,
        bytes_moved=tensors_moved * (numel + shape[0] * latents) * itemsize,
        large=name.startswith("celeba"),
    )


def _forward_case(name, shape, latents, device, dtype):
    def make():
        tensors = _inputs(shape, latents, device, dtype, requires_grad=False)
        compiled = torch.compile(gaussian_elbo_reference, dynamic=False)
        return {
            "eager": lambda: gaussian_elbo_reference(*tensors, DECODER_LOGVAR),
            "compile": lambda: compiled(*tensors, DECODER_LOGVAR),
            "ours": lambda: gaussian_elbo(*tensors, decoder_logvar=DECODER_LOGVAR),
        }

    # read x, x_mean (and mu, logvar)
    return _case(f"{name} fwd", shape, latents, dtype, make, tensors_moved=2)


def _forward_backward_case(name, shape, latents, device, dtype):
    def make():
        tensors = _inputs(shape, latents, device, dtype, requires_grad=True)
        compiled = torch.compile(gaussian_elbo_reference, dynamic=False)

        def step(fn, **kwargs):
            elbo, _ = fn(*tensors, **kwargs)
            return torch.autograd.grad(elbo.sum(), tensors)

        return {
            "eager": lambda: step(lambda *t: gaussian_elbo_reference(*t, DECODER_LOGVAR)),
            "compile": lambda: step(lambda *t: compiled(*t, DECODER_LOGVAR)),
            "ours": lambda: step(gaussian_elbo, decoder_logvar=DECODER_LOGVAR),
        }

    # forward: read x, x_mean; backward: read x, x_mean, write grad_x, grad_x_mean (latents alike)
    return _case(f"{name} fwd+bwd", shape, latents, dtype, make, tensors_moved=2 + 4)


def cases(device: torch.device, quick: bool = False) -> list[BenchCase]:
    dtype = torch.float32
    if quick:
        shape, latents = SHAPES["tiny"]
        return [
            _forward_case("tiny", shape, latents, device, dtype),
            _forward_backward_case("tiny", shape, latents, device, dtype),
        ]
    out = []
    for name in ("digits purify", "celeba-64"):
        shape, latents = SHAPES[name]
        out += [
            _forward_case(name, shape, latents, device, dtype),
            _forward_backward_case(name, shape, latents, device, dtype),
        ]
    if device.type == "cuda":
        shape, latents = SHAPES["celeba-64"]
        out.append(_forward_backward_case("celeba-64", shape, latents, device, torch.bfloat16))
    return out
