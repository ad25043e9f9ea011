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


# ---------------------------------------------------------------------------
# Diffusion likelihood step: samples of one or two elements go SIMD-wide across
# samples (2-D points deinterleaved), per-sample schedules have their
# coefficients computed in the inputs' precision and are checked in the same
# pass; every path adds straight into the accumulator.
# ---------------------------------------------------------------------------
from manifold_ext import ops  # noqa: E402
from manifold_ext.reference import diffusion as diffusion_ref  # noqa: E402


def _schedule(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    abar_t = torch.rand(batch, generator=g, dtype=torch.float64) * 0.9 + 0.05
    abar_next = abar_t * (torch.rand(batch, generator=g, dtype=torch.float64) * 0.5 + 0.4)
    abar_t[::37] = 1.0  # t = 0 pairs in several lanes
    return abar_t, abar_next


def _likelihood_inputs(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(4)]


@pytest.mark.parametrize("length", [1, 2, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float64], ids=["acc32", "acc64"])
def test_nll_step_per_sample_short_samples(length, dtype, acc_dtype):
    batch = 1003  # whole vectors, whole tasks and a partial tail
    x_t, x_next, eps, _ = _likelihood_inputs((batch, length), dtype)
    abar_t, abar_next = _schedule(batch)
    acc = torch.randn(batch, dtype=acc_dtype)
    out = ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next)
    expected = diffusion_ref.diffusion_nll_step_reference(
        acc.double(), x_t.double(), x_next.double(), eps.double(), abar_t, abar_next
    )
    assert out.dtype == acc_dtype
    scale = float((1 / (1 - abar_next / abar_t)).max()) * length
    tol = 1e-10 if dtype == torch.float64 and acc_dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=tol * scale)


@pytest.mark.parametrize("length", [1, 2, 5])
def test_nll_step_per_sample_invalid_pair_found_in_the_same_pass(length):
    batch = 5000
    x_t, x_next, eps, _ = _likelihood_inputs((batch, length), torch.float32)
    abar_t, abar_next = _schedule(batch)
    abar_next[4321] = abar_t[4321]  # dt = 0
    abar_next[4400] = float("nan")
    with pytest.raises(
        ValueError, match=r"invalid schedule at sample 4321, got abar_t = .* need 0 < abar_next < abar_t"
    ):
        ops.diffusion_nll_step(torch.zeros(batch, dtype=torch.float64), x_t, x_next, eps, abar_t, abar_next)


@pytest.mark.parametrize("length", [1, 2])
def test_nll_step_and_forward_tiny_samples(length):
    batch = 1003
    x_t, x_next, eps, noise = _likelihood_inputs((batch, length), torch.float32)
    acc = torch.randn(batch, dtype=torch.float64)
    acc_new, x_after = ops.diffusion_nll_step_and_forward(acc, x_t, x_next, eps, noise, 0.9, 0.8, 0.7)
    acc_ref, after_ref = diffusion_ref.diffusion_nll_step_and_forward_reference(
        acc, x_t.double(), x_next.double(), eps.double(), noise.double(), 0.9, 0.8, 0.7
    )
    torch.testing.assert_close(acc_new, acc_ref, rtol=1e-6, atol=2e-4)
    torch.testing.assert_close(x_after.double(), after_ref, rtol=1e-6, atol=1e-6)


def test_nll_step_long_samples_float32_accumulator():
    x_t, x_next, eps, _ = _likelihood_inputs((3, 9000), torch.float32)
    acc = torch.randn(3, dtype=torch.float32)
    out = ops.diffusion_nll_step(acc, x_t, x_next, eps, 0.9, 0.8)
    expected = diffusion_ref.diffusion_nll_step_reference(
        acc.double(), x_t.double(), x_next.double(), eps.double(), 0.9, 0.8
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-2)


def test_nll_step_nan_input_stays_in_its_sample():
    x_t, x_next, eps, _ = _likelihood_inputs((40, 2), torch.float32)
    x_t[17, 1] = float("nan")
    abar_t, abar_next = _schedule(40)
    for a, b in ((0.9, 0.8), (abar_t, abar_next)):
        out = ops.diffusion_nll_step(torch.zeros(40, dtype=torch.float64), x_t, x_next, eps, a, b)
        assert torch.isnan(out[17]) and torch.isfinite(out[torch.arange(40) != 17]).all()


DIFFUSION_ISA_SCRIPT = r"""
import json, torch, manifold_ext
from manifold_ext import ops
from manifold_ext.reference import diffusion as ref
torch.manual_seed(0)
worst = {}
for length in (1, 2, 3, 12):
    x_t, x_next, eps, noise = (torch.randn(301, length) for _ in range(4))
    acc = torch.randn(301, dtype=torch.float64)
    a = torch.rand(301, dtype=torch.float64) * 0.9 + 0.05
    b = a * 0.7
    a[::50] = 1.0
    d = lambda t: t.double()
    cases = {
        'shared': (ops.diffusion_nll_step(acc, x_t, x_next, eps, 0.9, 0.8),
                   ref.diffusion_nll_step_reference(acc, d(x_t), d(x_next), d(eps), 0.9, 0.8)),
        'per-sample': (ops.diffusion_nll_step(acc, x_t, x_next, eps, a, b),
                       ref.diffusion_nll_step_reference(acc, d(x_t), d(x_next), d(eps), a, b)),
        'fused': (ops.diffusion_nll_step_and_forward(acc, x_t, x_next, eps, noise, 0.9, 0.8, 0.7)[0],
                  ref.diffusion_nll_step_and_forward_reference(acc, d(x_t), d(x_next), d(eps), d(noise), 0.9, 0.8,
                                                               0.7)[0]),
    }
    for name, (got, want) in cases.items():
        worst[f'{length}-{name}'] = ((got - want).abs() / (1 + want.abs())).max().item()
print(json.dumps({'isa': manifold_ext.build_info()['cpu_isa_in_use'], 'worst': worst}))
"""


@pytest.mark.parametrize("isa", _isas())
def test_diffusion_every_isa_copy_matches_reference(isa):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", DIFFUSION_ISA_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa
    bad = {key: err for key, err in result["worst"].items() if err > 1e-5}
    assert not bad, f"{isa}: relative errors above 1e-5: {bad}"


@pytest.mark.parametrize("shape", [(7, 2), (1003, 2), (5, 1), (9, 3), (4, 3, 11, 13)], ids=str)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
def test_fused_step_equals_the_two_ops_bit_for_bit(shape, per_sample):
    """The fused likelihood-and-forward step and the two separate ops round every element alike
    (masked last vectors everywhere, no scalar tails), so a chain run either way is the same."""
    x_t, x_next, eps, noise = _likelihood_inputs(shape, torch.float32)
    acc = torch.randn(shape[0], dtype=torch.float64)
    if per_sample:
        abar_t, abar_next = _schedule(shape[0])
        abar_after = abar_next * 0.9
    else:
        abar_t, abar_next, abar_after = 0.9, 0.8, 0.7
    acc_fused, after_fused = ops.diffusion_nll_step_and_forward(
        acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after
    )
    after = ops.diffusion_forward_step(x_next, noise, abar_next, abar_after)
    assert torch.equal(after_fused, after)
    if not per_sample:  # the per-sample one-pass likelihood path is its own code for 1-2 elements
        assert torch.equal(acc_fused, ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next))


# ---------------------------------------------------------------------------
# The inlined float32 vector exp of the AVX2 / AVX-512 copies (cpu_vec_math.h,
# the Cephes polynomial the baseline copy also uses), swept densely through the
# exp-scale coupling (x = 1, shift 0: y = exp(raw) exactly as computed), and
# the closest-centre grid with a power-of-two spacing (multiplied by 1/spacing)
# or another spacing (divided), on every ISA copy.
# ---------------------------------------------------------------------------
EXP_SCRIPT = r"""
import hashlib, json, math, numpy as np, torch, manifold_ext
from manifold_ext.ops import affine_coupling
raw = torch.linspace(-110, 90, 1 << 22, dtype=torch.float64).float().reshape(-1, 1, 64)
special = torch.tensor([float('inf'), -float('inf'), float('nan'), 0.0, 88.72, 88.73, -103.9, -104.5] * 8)
raw = torch.cat([raw, special.reshape(1, 1, 64)])
h = torch.cat([torch.zeros_like(raw), raw], dim=1)
y = affine_coupling(torch.ones_like(raw), h, scale='exp', layout='split')[0].double().flatten()
ref = torch.exp(raw.double()).flatten()
normal = (ref > 1.2e-38) & (ref < 3.4e38)
spacing = torch.from_numpy(np.spacing(ref[normal].float().numpy())).double()
# The same values again, every fourth lane +inf: every vector (4, 8 or 16 lanes) now takes the any-range path
# on SSE2 / AVX2, and the other lanes must come out bit for bit as before.
# with the near-ties, x / ln 2 close to k + 1/2, where two ways of rounding n would part
half_way = ((torch.arange(-125, 127, dtype=torch.float64) + 0.5) * math.log(2)).float()
near_ties = [half_way]
for direction in (float('inf'), -float('inf')):
    neighbour = half_way
    for _ in range(5):
        neighbour = torch.nextafter(neighbour, torch.tensor(direction))
        near_ties.append(neighbour)
in_range = torch.cat([torch.linspace(-87, 88, 1 << 20, dtype=torch.float64).float()] + near_ties)
in_range = in_range[(in_range >= -87) & (in_range <= 88)]
in_range = in_range[: in_range.numel() // 64 * 64].reshape(-1, 1, 64)
def coupling_exp(raw):
    h = torch.cat([torch.zeros_like(raw), raw], dim=1)
    return affine_coupling(torch.ones_like(raw), h, scale='exp', layout='split')[0].flatten()
alone = coupling_exp(in_range)
mixed_raw = in_range.clone().flatten()
mixed_raw[::4] = float('inf')
mixed = coupling_exp(mixed_raw.reshape(in_range.shape))
finite = torch.ones_like(mixed_raw, dtype=torch.bool)
finite[::4] = False
print(json.dumps({
    'isa': manifold_ext.build_info()['cpu_isa_in_use'],
    'lanes_differing_with_inf_neighbours': int((alone[finite] != mixed[finite]).sum()),
    'in_range_bits': hashlib.sha256(alone.numpy().tobytes()).hexdigest(),
    'max_ulp': ((y[normal] - ref[normal]).abs() / spacing).max().item(),
    'max_subnormal_error': (y[ref <= 1.2e-38] - ref[ref <= 1.2e-38]).abs().max().item(),
    'special': y[-64:-56].tolist(),
}))
"""

GRID_SCRIPT = r"""
import json, torch, manifold_ext
from manifold_ext.ops import closest_centre_kl
from manifold_ext.reference import closest_centre_kl_reference
import math
def reciprocal_is_exact(spacing):
    return math.frexp(spacing)[0] == 0.5
mismatches, sensitive = {}, {}
for dtype in (torch.float32, torch.float64):
    for spacing in (1.0, 0.25, 4.0, 2.0 ** -20, 0.3, 3.0, 0.1):
        # near-ties: half-way points between grid points (offset 0.5) and their neighbours up to 3 ulps
        # away, where (mu - offset) / spacing and (mu - offset) * (1 / spacing) round differently for
        # spacings that are not powers of two
        half_way = 0.5 + (torch.arange(-2000, 2000).to(dtype) + 0.5) * spacing
        near_ties = [half_way]
        for direction in (float('inf'), -float('inf')):
            neighbour = half_way
            for _ in range(3):
                neighbour = torch.nextafter(neighbour, torch.tensor(direction, dtype=dtype))
                near_ties.append(neighbour)
        special = torch.tensor([float('nan'), float('inf'), -float('inf'), 0.0], dtype=dtype)
        mu = torch.cat(near_ties + [special]).reshape(-1, 4)
        if not reciprocal_is_exact(spacing):
            by_reciprocal = torch.round((mu - 0.5) * (1 / spacing))
            sensitive[f'{dtype}-{spacing}'] = int((by_reciprocal != torch.round((mu - 0.5) / spacing)).sum())
        logvar = torch.zeros_like(mu)
        kwargs = dict(sigma0=0.5, spacing=spacing, offset=0.5, low=-20 * spacing, high=30 * spacing)
        _, centre = closest_centre_kl(mu, logvar, **kwargs)
        _, centre_ref = closest_centre_kl_reference(mu, logvar, target=None, mask=None, **kwargs)
        same = (centre == centre_ref) | (centre.isnan() & centre_ref.isnan())
        mismatches[f'{dtype}-{spacing}'] = int((~same).sum())
print(json.dumps({'isa': manifold_ext.build_info()['cpu_isa_in_use'], 'mismatches': mismatches,
                  'sensitive': sensitive}))
"""


def _run_on_isa(script, isa):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa, f"asked for {isa}, kernels ran {result['isa']}"
    return result


@pytest.mark.parametrize("isa", _isas())
def test_vector_exp_within_one_ulp_on_every_isa_copy(isa):
    result = _run_on_isa(EXP_SCRIPT, isa)
    assert result["max_ulp"] <= 1.05, f"{isa}: exp is off by {result['max_ulp']:.3f} ulp"
    assert result["max_subnormal_error"] <= 2.0**-149, f"{isa}: subnormal exp off by {result['max_subnormal_error']}"
    inf, nan = float("inf"), float("nan")
    expected = [inf, 0.0, nan, 1.0, 3.3931806003874245e38, inf, 1.401298464324817e-45, 0.0]
    assert torch.allclose(torch.tensor(result["special"]), torch.tensor(expected), rtol=0, atol=0, equal_nan=True)
    # a lane's exp does not depend on its neighbours (which decide the path a vector takes)
    assert result["lanes_differing_with_inf_neighbours"] == 0, result


EXP_EVERY_FLOAT_SCRIPT = r"""
import json, numpy as np, torch, manifold_ext
from manifold_ext.ops import affine_coupling
TINY = 1.1754943508222875e-38
worst_ulp, worst_subnormal = 0.0, 0.0
# every float32 from -0 down to -104 and from +0 up to 89, as bit patterns, 2^24 at a time
for first, last in ((0, 0x42B20000), (0x80000000, 0xC2D00000)):
    for start in range(first, last + 1, 1 << 24):
        bits = torch.arange(start, min(start + (1 << 24), last + 1), dtype=torch.int64)
        raw = bits.to(torch.int32).view(torch.float32)
        raw = raw[: raw.numel() // 64 * 64].reshape(-1, 1, 64)
        h = torch.cat([torch.zeros_like(raw), raw], dim=1)
        y = affine_coupling(torch.ones_like(raw), h, scale='exp', layout='split')[0].double().flatten()
        ref = torch.exp(raw.double()).flatten()
        normal = (ref > TINY) & (ref < 3.4e38)
        spacing = torch.from_numpy(np.spacing(ref[normal].float().numpy())).double()
        worst_ulp = max(worst_ulp, ((y[normal] - ref[normal]).abs() / spacing).max().item())
        subnormal = ref <= TINY
        if subnormal.any():
            worst_subnormal = max(worst_subnormal, (y[subnormal] - ref[subnormal]).abs().max().item() / 2.0**-149)
print(json.dumps({'isa': manifold_ext.build_info()['cpu_isa_in_use'], 'max_ulp': worst_ulp,
                  'max_subnormal_steps': worst_subnormal}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", _isas())
def test_vector_exp_on_every_float_in_range(isa):
    """Every float32 in [-104, 89] (2.2e9 of them; minutes per copy): the numbers the cpu_vec_math.h comment
    quotes, 1.0103 ulp with FMA, 0.990 without, subnormals within 0.75 of a step."""
    result = _run_on_isa(EXP_EVERY_FLOAT_SCRIPT, isa)
    assert result["max_ulp"] <= (0.991 if isa == "default" else 1.0104), result
    assert result["max_subnormal_steps"] <= 0.751, result


def test_vector_exp_same_bits_on_both_fma_copies():
    """AVX2 and AVX-512 round n the same way and apply 2^n exactly (a shift into the exponent, or vscalefps), so
    their exp agrees bit for bit; the SSE2 copy has no FMA and may differ by an ulp."""
    isas = _isas()
    if "avx512" not in isas:
        pytest.skip("needs a CPU with both the AVX2 and the AVX-512 copies")
    bits = {isa: _run_on_isa(EXP_SCRIPT, isa)["in_range_bits"] for isa in ("avx2", "avx512")}
    assert bits["avx2"] == bits["avx512"]


@pytest.mark.parametrize("isa", _isas())
def test_grid_centres_bit_exact_with_and_without_reciprocal_spacing(isa):
    result = _run_on_isa(GRID_SCRIPT, isa)
    # the inputs do tell a division from a multiplication by the rounded reciprocal
    assert sum(result["sensitive"].values()) > 1000, result["sensitive"]
    assert not any(result["mismatches"].values()), f"{isa}: centres differ from the reference: {result['mismatches']}"


NEAREST_SCRIPT = r"""
import json, torch, manifold_ext
from manifold_ext.ops import nearest_centre_kl
from manifold_ext.reference import nearest_centre_kl_reference
torch.manual_seed(0)
mismatches = []
for dtype in (torch.float32, torch.float64):
    for K in list(range(1, 70)) + [100, 1000]:
        for n in (1, 2, 5):
            # integer and half-integer coordinates: many exactly tied distances, decided by the lower index
            centres = torch.randint(-3, 4, (K, n)).to(dtype)
            mu = (torch.randint(-3, 4, (37, n)) + 0.5 * torch.randint(0, 2, (37, n))).to(dtype)
            mu[3, 0] = float('nan')
            index = nearest_centre_kl(mu, torch.zeros_like(mu), centres)[1]
            index_ref = nearest_centre_kl_reference(mu, torch.zeros_like(mu), centres, 1.0)[1]
            if not torch.equal(index, index_ref):
                mismatches.append(f'{dtype} K={K} n={n}')
print(json.dumps({'isa': manifold_ext.build_info()['cpu_isa_in_use'], 'mismatches': mismatches}))
"""


@pytest.mark.parametrize("isa", _isas())
def test_nearest_centre_search_ties_nan_and_block_tails_on_every_isa_copy(isa):
    """The search runs blocks of two vectors of centres, then single vectors, and folds its lanes before a scalar
    pass: every K from 1 to 69 (whole blocks, a one-vector tail, padding) must pick torch.argmin's centre, the first
    of tied ones, and the first centre for a NaN sample, as the reference does. (Not an infinite sample: the
    reference's cdist may expand the distance and make some of its infinite distances NaN.)"""
    result = _run_on_isa(NEAREST_SCRIPT, isa)
    assert not result["mismatches"], f"{isa}: indices differ from the reference: {result['mismatches']}"


@pytest.mark.parametrize("length", [1, 2, 4, 12])
def test_nll_step_per_sample_extreme_schedules(length):
    """Per-sample schedules reaching below 1e-18 (kFloat32SimdCoefficientAbar): float32 SIMD coefficients would
    underflow (abar_t * abar_next < 1e-38 gave inf or NaN), so such a call is computed with coefficients in double
    and matches the reference; a pair whose coefficients do not fit float32 raises naming its sample, and an
    invalid pair raises the schedule error. Lengths 1, 2 and 4 take the one-pass path (pairs tested while it
    computes), 12 the coefficient-array path."""
    batch = 37  # whole vectors and a partial tail
    x_t, x_next, eps, _ = _likelihood_inputs((batch, length), torch.float32)
    abar_t, abar_next = _schedule(batch)
    acc = torch.zeros(batch, dtype=torch.float64)
    abar_t[20], abar_next[20] = 1e-22, 5e-23  # abar_t * abar_next underflows float32: coefficients in double
    out = ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next)
    assert torch.isfinite(out).all()
    expected = diffusion_ref.diffusion_nll_step_reference(
        acc, x_t.double(), x_next.double(), eps.double(), abar_t, abar_next
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    abar_t[33], abar_next[33] = 0.5, 1e-100
    with pytest.raises(ValueError, match="the schedule at sample 33, abar_t = 0.5 and abar_next = 1e-100"):
        ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next)
    abar_next[33] = 0.6  # abar_next > abar_t
    with pytest.raises(ValueError, match="invalid schedule at sample 33"):
        ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next)
