"""The CPU kernels' code paths added for speed, against the plain-PyTorch references, on every
CPU ISA copy (default / AVX2 / AVX-512, selected per process with ATEN_CPU_CAPABILITY).

Each path is picked by shape: the coupling op's rank-2 / tiny-spatial path (rows shorter than a
SIMD vector: shifts and raw scales gathered from h), runs of whole samples, rows cut into pieces;
the SSE2 exp/round of the baseline copy. Every ISA copy runs in its own subprocess.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

from manifold_ext.ops import affine_coupling
from manifold_ext.reference import affine_coupling_reference

pytestmark = pytest.mark.usefixtures("one_thread")

SCALES = ("glow", "exp", "softclamp")
LAYOUTS = ("cross", "split")

# x shapes whose rows (cross: H*W elements; split: C*H*W) are shorter than a vector, or whose
# samples are longer than one 4096-element run while their rows are short, or both.
SHORT_ROW_SHAPES = [
    (65, 16),  # vector data, cross rows of 1 element
    (33, 1),  # one channel: a sample is one element
    (7, 64),
    (3, 5000),  # a sample longer than one run, made of 1-element rows
    (9, 3, 2, 2),  # tiny images: rows of 4
    (5, 7, 1, 3),
    (2, 1500, 3),  # a sample of 4500 elements in rows of 3
    (1, 2, 70, 70),  # long rows, cut into pieces
]


def _inputs(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype)
    h = 2 * torch.randn((shape[0], 2 * shape[1], *shape[2:]), generator=g, dtype=dtype)
    return x, h


@pytest.mark.parametrize("shape", SHORT_ROW_SHAPES, ids=str)
@pytest.mark.parametrize("scale,layout,reverse", list(itertools.product(SCALES, LAYOUTS, (False, True))))
def test_coupling_short_rows_match_reference(shape, scale, layout, reverse):
    x, h = _inputs(shape, torch.float64)
    x.requires_grad_(True)
    h.requires_grad_(True)
    y, logdet = affine_coupling(x, h, scale=scale, layout=layout, reverse=reverse)
    y_ref, logdet_ref = affine_coupling_reference(x, h, scale=scale, layout=layout, reverse=reverse)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-10)
    gy, gl = torch.randn_like(y), torch.randn_like(logdet)
    grads = torch.autograd.grad((y, logdet), (x, h), (gy, gl))
    grads_ref = torch.autograd.grad((y_ref, logdet_ref), (x, h), (gy, gl))
    for ours, ref in zip(grads, grads_ref):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(65, 16), (3, 5000), (9, 3, 2, 2)], ids=str)
def test_coupling_short_rows_float32(shape):
    x, h = _inputs(shape, torch.float32)
    for scale, layout in itertools.product(SCALES, LAYOUTS):
        y, logdet = affine_coupling(x, h, scale=scale, layout=layout)
        y_ref, logdet_ref = affine_coupling_reference(x.double(), h.double(), scale=scale, layout=layout)
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logdet.double(), logdet_ref, rtol=1e-5, atol=1e-5 * x[0].numel() ** 0.5)


@pytest.mark.parametrize("shape", [(4097, 16), (3, 9000), (64, 5, 1, 3)], ids=str)
def test_coupling_short_rows_independent_of_threads(shape):
    x, h = _inputs(shape, torch.float32)
    gy, gl = torch.randn(shape), torch.randn(shape[0])
    outputs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        y, logdet = affine_coupling(x, h)
        grads = torch.ops.manifold_ext.affine_coupling_backward(gy, gl, x, h, "glow", "cross", 2.0, False)
        outputs.append((y, logdet, *grads))
    torch.set_num_threads(1)
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            assert torch.equal(a, b)


def test_coupling_nan_and_inf_propagate_on_short_rows():
    x, h = _inputs((17, 16), torch.float32)
    x[3, 5] = float("nan")
    h[4, 2 * 7 + 1] = float("nan")  # a raw scale (cross layout: odd channels)
    h[5, 2 * 2] = float("inf")  # a shift
    y, logdet = affine_coupling(x, h)
    y_ref, logdet_ref = affine_coupling_reference(x, h)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-5, atol=1e-4, equal_nan=True)
    assert torch.isnan(y[3, 5]) and torch.isnan(logdet[4]) and torch.isinf(y[5, 2])


# ---------------------------------------------------------------------------
# Every CPU ISA copy: the same script in one subprocess per copy, compared with
# the float64 reference inside the subprocess and with the other copies.
# ---------------------------------------------------------------------------
ISA_SCRIPT = r"""
import itertools, json, torch, manifold_ext
from manifold_ext.ops import affine_coupling
from manifold_ext.reference import affine_coupling_reference
torch.manual_seed(0)
worst = {}
for shape in [(65, 16), (33, 1), (3, 5000), (9, 3, 2, 2), (4, 8, 16, 16)]:
    x = torch.randn(shape)
    h = 2 * torch.randn((shape[0], 2 * shape[1], *shape[2:]))
    x.requires_grad_(True); h.requires_grad_(True)
    for scale, layout, reverse in itertools.product(('glow', 'exp', 'softclamp'), ('cross', 'split'), (False, True)):
        y, ld = affine_coupling(x, h, scale=scale, layout=layout, reverse=reverse)
        y_ref, ld_ref = affine_coupling_reference(x.double(), h.double(), scale=scale, layout=layout, reverse=reverse)
        gy = torch.ones_like(y); gl = torch.ones_like(ld)
        gx, gh = torch.autograd.grad((y, ld), (x, h), (gy, gl))
        gx_ref, gh_ref = torch.autograd.grad((y_ref, ld_ref), (x, h), (gy.double(), gl.double()))
        def rel(a, b):
            return ((a.double() - b).abs() / (1 + b.abs())).max().item()
        key = f'{shape}-{scale}-{layout}-{reverse}'
        worst[key] = max(rel(y, y_ref), rel(ld, ld_ref) / shape[1] ** 0.5, rel(gx, gx_ref), rel(gh, gh_ref))
print(json.dumps({'isa': manifold_ext.build_info()['cpu_isa_in_use'], 'worst': worst}))
"""


def _isas():
    import manifold_ext

    info = manifold_ext.build_info()
    isas = ["default"]
    for isa in ("avx2", "avx512"):
        if isa in info["cpu_isas_compiled"] and (info["cpu_isa_in_use"] == "avx512" or info["cpu_isa_in_use"] == isa):
            isas.append(isa)
    return isas


@pytest.mark.parametrize("isa", _isas())
def test_coupling_every_isa_copy_matches_reference(isa):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", ISA_SCRIPT], env=env, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa, f"asked for {isa}, kernels ran {result['isa']}"
    bad = {key: err for key, err in result["worst"].items() if err > 2e-5}
    assert not bad, f"{isa}: relative errors above 2e-5: {bad}"
