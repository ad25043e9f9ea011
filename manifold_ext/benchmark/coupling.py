"""Benchmark cases for op family 1, fused affine coupling."""
from __future__ import annotations

import torch

from manifold_ext.benchmark.harness import BenchCase
from manifold_ext.ops import affine_coupling
from manifold_ext.reference import affine_coupling_reference

# (case name, [B, C, H, W] of the active half x)
SHAPES = {
    "main": (64, 16, 32, 32),
    "large": (32, 32, 64, 64),
    "tiny": (2, 4, 8, 8),
}


def _inputs(shape, device, dtype, requires_grad):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
    h = torch.randn((shape[0], 2 * shape[1], *shape[2:]), device=device, dtype=dtype, requires_grad=requires_grad)
    return x, h


def _case(name, shape, dtype, make, tensors_moved):
    """A coupling case whose fused kernels move `tensors_moved` x-sized tensors."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return BenchCase(
        family="coupling",
        name=name,
        shape="x " + "x".join(map(str, shape)),
        dtype=str(dtype).replace("torch.", ""),
        make=make,
        bytes_moved=tensors_moved * torch.Size(shape).numel() * itemsize,
    )


def _forward_case(name, shape, device, dtype, scale="glow", layout="cross"):
    def make():
        x, h = _inputs(shape, device, dtype, requires_grad=False)
        kwargs = dict(scale=scale, layout=layout)
        compiled = torch.compile(affine_coupling_reference, dynamic=False)
        return {
            "eager": lambda: affine_coupling_reference(x, h, **kwargs),
            "compile": lambda: compiled(x, h, **kwargs),
            "ours": lambda: affine_coupling(x, h, **kwargs),
        }

    # read x and h (2x), write y
    return _case(f"{name} fwd+logdet ({scale}, {layout})", shape, dtype, make, tensors_moved=4)


def _forward_backward_case(name, shape, device, dtype, scale="glow", layout="cross"):
    def make():
        x, h = _inputs(shape, device, dtype, requires_grad=True)
        grad_y = torch.randn(shape, device=device, dtype=dtype)
        grad_logdet = torch.randn(shape[0], device=device, dtype=dtype)
        compiled = torch.compile(affine_coupling_reference, dynamic=False)

        def step(fn):
            y, logdet = fn(x, h, scale=scale, layout=layout)
            return torch.autograd.grad((y, logdet), (x, h), (grad_y, grad_logdet))

        return {
            "eager": lambda: step(affine_coupling_reference),
            "compile": lambda: step(compiled),
            "ours": lambda: step(affine_coupling),
        }

    # forward: read x, h (2x), write y; backward: read grad_y, x, h (2x), write grad_x, grad_h (2x)
    return _case(f"{name} fwd+bwd ({scale}, {layout})", shape, dtype, make, tensors_moved=4 + 7)


def cases(device: torch.device, quick: bool = False) -> list[BenchCase]:
    dtype = torch.float32
    if quick:
        return [
            _forward_case("tiny", SHAPES["tiny"], device, dtype),
            _forward_backward_case("tiny", SHAPES["tiny"], device, dtype),
        ]
    out = [
        _forward_case("main", SHAPES["main"], device, dtype),
        _forward_backward_case("main", SHAPES["main"], device, dtype),
        _forward_case("main", SHAPES["main"], device, dtype, scale="exp", layout="split"),
        _forward_case("main", SHAPES["main"], device, dtype, scale="softclamp"),
        _forward_case("large", SHAPES["large"], device, dtype),
        _forward_backward_case("large", SHAPES["large"], device, dtype),
        _forward_case("tiny", SHAPES["tiny"], device, dtype),
        _forward_backward_case("tiny", SHAPES["tiny"], device, dtype),
    ]
    if device.type == "cuda":
        out.append(_forward_case("main", SHAPES["main"], device, torch.bfloat16))
    return out
