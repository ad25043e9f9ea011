"""Benchmark cases for op family 1, fused affine coupling.

Image-shaped cases ([B, C, H, W] of the active half) and, for flows on vector
data (tabular / 2-D points, ``GlowStep(..., spatial_dims=0)``), [B, C] cases
with issue 20's targets against eager: >= 2x forward and >= 1.5x forward+backward
on [65536, 16], >= 1.5x on [4096, 64].
"""

from __future__ import annotations

import torch

from manifold_ext.benchmark.harness import BenchCase
from manifold_ext.ops import affine_coupling
from manifold_ext.reference import affine_coupling_reference

# (case name, shape of the active half x)
SHAPES = {
    "main": (64, 16, 32, 32),
    "large": (32, 32, 64, 64),
    "tiny": (2, 4, 8, 8),
    "vector": (65536, 16),
    "vector wide": (4096, 64),
    "vector 1-D": (65536, 1),
}
LARGE = {"main", "large", "vector"}
# Issue 20's targets against eager on vector data: (forward, forward+backward).
VECTOR_TARGETS = {"vector": (2.0, 1.5), "vector wide": (1.5, 1.5)}


def _inputs(shape, device, dtype, requires_grad):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
    h = torch.randn((shape[0], 2 * shape[1], *shape[2:]), device=device, dtype=dtype, requires_grad=requires_grad)
    return x, h


def _case(label, title, shape, dtype, make, tensors_moved, target_vs_eager=None):
    """A coupling case whose fused kernels move `tensors_moved` x-sized tensors."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return BenchCase(
        family="coupling",
        name=f"{label} {title}",
        shape="x " + "x".join(map(str, shape)),
        dtype=str(dtype).replace("torch.", ""),
        make=make,
        bytes_moved=tensors_moved * torch.Size(shape).numel() * itemsize,
        large=label in LARGE,
        target_vs_eager=target_vs_eager,
    )


def _forward_case(label, device, dtype, scale="glow", layout="cross"):
    shape = SHAPES[label]

    def make():
        x, h = _inputs(shape, device, dtype, requires_grad=False)
        kwargs = dict(scale=scale, layout=layout)
        compiled = torch.compile(affine_coupling_reference, dynamic=False)
        return {
            "eager": lambda: affine_coupling_reference(x, h, **kwargs),
            "compile": lambda: compiled(x, h, **kwargs),
            "ours": lambda: affine_coupling(x, h, **kwargs),
        }

    target = VECTOR_TARGETS.get(label, (None, None))[0]
    # read x and h (2x), write y
    return _case(label, f"fwd+logdet ({scale}, {layout})", shape, dtype, make, tensors_moved=4, target_vs_eager=target)


def _forward_backward_case(label, device, dtype, scale="glow", layout="cross"):
    shape = SHAPES[label]

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

    target = VECTOR_TARGETS.get(label, (None, None))[1]
    # forward: read x, h (2x), write y; backward: read grad_y, x, h (2x), write grad_x, grad_h (2x)
    return _case(label, f"fwd+bwd ({scale}, {layout})", shape, dtype, make, tensors_moved=4 + 7, target_vs_eager=target)


def cases(device: torch.device, quick: bool = False) -> list[BenchCase]:
    dtype = torch.float32
    if quick:
        return [_forward_case("tiny", device, dtype), _forward_backward_case("tiny", device, dtype)]
    out = [
        _forward_case("main", device, dtype),
        _forward_backward_case("main", device, dtype),
        _forward_case("main", device, dtype, scale="exp", layout="split"),
        _forward_case("main", device, dtype, scale="softclamp"),
        _forward_case("large", device, dtype),
        _forward_backward_case("large", device, dtype),
        _forward_case("tiny", device, dtype),
        _forward_backward_case("tiny", device, dtype),
    ]
    for label in ("vector", "vector wide", "vector 1-D"):
        out += [_forward_case(label, device, dtype), _forward_backward_case(label, device, dtype)]
    out.append(_forward_case("vector", device, dtype, scale="exp", layout="split"))
    if device.type == "cuda":
        out.append(_forward_case("main", device, torch.bfloat16))
    return out
