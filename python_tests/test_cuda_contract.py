"""CUDA-specific behaviour of the kernels: device handling, accumulation, rounding, launch shapes.

Every test needs a CUDA device (``@pytest.mark.cuda``: skipped without one, run by ``make gpu-check``).
The CPU kernels are the reference throughout: the CUDA kernels must give their answer (bit for bit where
the contract says so), refuse what they refuse with the same words, and never poison the CUDA context.
These tests need torch, numpy and pytest only (no hypothesis, scikit-learn or LP solvers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from manifold_ext import ops

pytestmark = pytest.mark.cuda

CUDA = "cuda"


def on_cuda(*tensors):
    return [t.to(CUDA) if isinstance(t, torch.Tensor) else t for t in tensors]


def to_cpu(result):
    if isinstance(result, (tuple, list)):
        return [to_cpu(r) for r in result]
    return result.cpu() if isinstance(result, torch.Tensor) else result


def assert_context_usable():
    """A device-side assert would make every later CUDA call fail: one more kernel must still run."""
    torch.cuda.synchronize()
    assert torch.arange(4, device=CUDA).sum().item() == 6


# ---------------------------------------------------------------------------------------------------------
# Issue 13, review of the CUDA kernels
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, -1])
def test_nearest_backward_refuses_an_out_of_range_index_before_the_launch(bad):
    mu, logvar, centres = on_cuda(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3))
    index = torch.tensor([0, bad, 2, 4], device=CUDA)
    grad = torch.ones(4, device=CUDA)
    with pytest.raises(RuntimeError, match=rf"index {bad} of sample 1 is out of range for 5 centres"):
        torch.ops.manifold_ext.nearest_centre_kl_backward(grad, mu, logvar, centres, index, 1 / 16)
    assert_context_usable()
    # the CPU kernel says the same
    with pytest.raises(RuntimeError, match=rf"index {bad} of sample 1 is out of range for 5 centres"):
        torch.ops.manifold_ext.nearest_centre_kl_backward(*to_cpu([grad, mu, logvar, centres, index]), 1 / 16)


def test_diffusion_cpu_inputs_with_a_cuda_accumulator_get_the_op_device_error():
    x_t, x_next, eps = torch.randn(3, 8, 2)
    acc = torch.zeros(8, device=CUDA)
    with pytest.raises(RuntimeError, match=r"acc must be on the device of x_t \(cpu\), got cuda"):
        torch.ops.manifold_ext.diffusion_nll_step(
            acc, x_t, x_next, eps, torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
        )
    assert_context_usable()


def _abar_cases():
    """Each op taking abar, as (name, args builder): the builder gets (abar_a, abar_b) and returns the args."""
    x, eps, noise = torch.randn(3, 6, 5, dtype=torch.float64)
    acc = torch.randn(6, dtype=torch.float64)
    abar_after = torch.tensor(0.7, dtype=torch.float64)
    return [
        ("diffusion_nll_step", lambda a, b: (acc, x, eps, noise, a, b), (0.9, 0.8)),
        ("diffusion_nll_step_backward", lambda a, b: (acc, x, eps, noise, a, b), (0.9, 0.8)),
        ("diffusion_nll_step_and_forward", lambda a, b: (acc, x, eps, noise, x, a, b, abar_after), (0.9, 0.8)),
        ("diffusion_forward_step", lambda a, b: (x, noise, a, b), (0.9, 0.8)),
        ("ddpm_step", lambda a, b: (x, eps, a, b, noise), (0.8, 0.9)),
        ("ddim_step", lambda a, b: (x, eps, a, b, 0.5, noise), (0.8, 0.9)),
        ("large_step", lambda a, b: (x, eps, a, b, None), (0.8, 0.9)),
        ("diffusion_step_backward", lambda a, b: (x, "ddim", a, b, 0.3), (0.8, 0.9)),
    ]


@pytest.mark.parametrize("name, build, values", _abar_cases(), ids=[case[0] for case in _abar_cases()])
def test_a_zero_dim_cuda_abar_with_cpu_inputs_runs_the_cpu_kernel(name, build, values):
    """A 0-dim abar is one number read on the host: on any device it gives the CPU answer on CPU inputs."""
    op = getattr(torch.ops.manifold_ext, name)
    cpu_a, cpu_b = (torch.tensor(v, dtype=torch.float64) for v in values)
    expected = op(*build(cpu_a, cpu_b))
    got = op(*build(cpu_a.to(CUDA), cpu_b.to(CUDA)))
    for g, e in zip(
        got if isinstance(got, (tuple, list)) else [got],
        expected if isinstance(expected, (tuple, list)) else [expected],
    ):
        assert g.device.type == "cpu"
        assert torch.equal(g, e)


def test_a_per_sample_cuda_abar_with_cpu_inputs_is_refused_with_the_op_error():
    x, noise = torch.randn(2, 4, 3)
    with pytest.raises(RuntimeError, match=r"a per-sample abar_next must be on the device of the inputs \(cpu\)"):
        torch.ops.manifold_ext.diffusion_forward_step(
            x, noise, torch.tensor(1.0, dtype=torch.float64), torch.full((4,), 0.5, device=CUDA)
        )


# Float32 sums. The CUDA kernels compute the element terms in float32 and, like the CPU kernels, add
# them in double. With one large term among many small ones, float32 sums lose the small terms next to the
# large one (the CUDA kernels did that before, off by several float32 ulps); sums in double keep them.
# The CUDA code is built without implicit FMA (--fmad=false, as the CPU's -ffp-contract=off), so
# the terms themselves are the CPU's bit for bit where no exp or log is involved.
def _one_large_among_small(shape, large, small, generator):
    values = small * (1 + 0.01 * torch.rand(shape, generator=generator))
    values.view(shape[0], -1)[:, 0] = large
    return values


@pytest.mark.parametrize("pixels_shape", [(3, 64, 64), (500,), (20,)], ids=["chunks", "warp-rows", "short"])
def test_gaussian_elbo_float32_sums_in_double_like_the_cpu(pixels_shape):
    g = torch.Generator().manual_seed(0)
    batch = 6
    pixels = torch.Size(pixels_shape).numel()
    small = (120.0 / pixels) ** 0.5  # the small squared residuals add up to ~15 float32 ulps of the large one
    x = _one_large_among_small((batch, *pixels_shape), 1e4, small, g)
    x_mean = torch.zeros_like(x)
    mu = _one_large_among_small((batch, 40), 3e2, 0.5, g)
    logvar = torch.zeros_like(mu)  # exp(0) = 1 on every backend: no library differences in the terms
    cpu = ops.gaussian_elbo(x, x_mean, mu, logvar, decoder_logvar=0.0)
    gpu = ops.gaussian_elbo(*on_cuda(x, x_mean, mu, logvar), decoder_logvar=0.0)
    for c, d in zip(cpu, gpu):
        torch.testing.assert_close(d.cpu(), c, rtol=2.5e-7, atol=0)


def test_diffusion_nll_short_rows_float32_sums_in_double_like_the_cpu():
    g = torch.Generator().manual_seed(1)
    batch, len_ = 64, 8  # one thread per sample on CUDA; a double row sum on the CPU
    x_t = _one_large_among_small((batch, len_), 3e2, 0.1, g)
    x_next = _one_large_among_small((batch, len_), -3e2, 0.2, g)
    eps = torch.zeros_like(x_t)
    acc = torch.zeros(batch, dtype=torch.float64)
    cpu = ops.diffusion_nll_step(acc, x_t, x_next, eps, 0.9, 0.8)
    gpu = ops.diffusion_nll_step(*on_cuda(acc, x_t, x_next, eps), 0.9, 0.8)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=0)


# Longer rows: the CPU's SIMD lanes hold float32 partial sums within a chunk of 4,096 elements (in double
# above), the CUDA kernels double from the first addition; on ordinary data both are within float32
# rounding of the float64 answer.
@pytest.mark.parametrize("len_", [100, 5000], ids=["warp-rows", "chunks"])
def test_diffusion_nll_float32_agrees_with_cpu(len_):
    g = torch.Generator().manual_seed(2)
    x_t, x_next, eps = torch.randn(3, 16, len_, generator=g)
    acc = torch.zeros(16, dtype=torch.float64)
    cpu = ops.diffusion_nll_step(acc, x_t, x_next, eps, 0.9, 0.8)
    gpu = ops.diffusion_nll_step(*on_cuda(acc, x_t, x_next, eps), 0.9, 0.8)
    exact = ops.diffusion_nll_step(acc, *(t.double() for t in (x_t, x_next, eps)), 0.9, 0.8)
    scale = 1e-6 * exact.abs().max().item() + 1e-6 * len_
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=scale)
    torch.testing.assert_close(gpu.cpu(), exact, rtol=0, atol=scale)


@pytest.mark.parametrize("row_len", [16, 256, 8192], ids=["thread-rows", "warp-rows", "chunks"])
def test_coupling_logdet_float32_agrees_with_cpu(row_len):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, row_len, generator=g)
    h = torch.randn(4, 4, row_len, generator=g)
    _, cpu = ops.affine_coupling(x, h, scale="glow", layout="split")
    _, gpu = ops.affine_coupling(*on_cuda(x, h), scale="glow", layout="split")
    _, exact = ops.affine_coupling(x.double(), h.double(), scale="glow", layout="split")
    scale = 2e-6 * exact.abs().max().item()
    torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=0, atol=scale)
    torch.testing.assert_close(gpu.cpu().double(), exact, rtol=0, atol=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spacing, offset", [(0.1, 0.013), (0.37, -0.7), (1 / 3, 0.0), (2.0 / 7.0, 1e-3)])
def test_grid_centres_are_bitwise_equal_on_cpu_cuda_and_the_reference(dtype, spacing, offset):
    """offset + spacing * k is rounded twice on every backend (never fused into one FMA)."""
    from manifold_ext.reference import closest_centre_kl_reference

    g = torch.Generator().manual_seed(3)
    mu = torch.randn(4096, 7, generator=g, dtype=dtype) * 5
    logvar = torch.randn(4096, 7, generator=g, dtype=dtype)
    _, cpu = ops.closest_centre_kl(mu, logvar, spacing=spacing, offset=offset)
    _, gpu = ops.closest_centre_kl(*on_cuda(mu, logvar), spacing=spacing, offset=offset)
    _, ref = closest_centre_kl_reference(
        mu, logvar, sigma0=1 / 16, spacing=spacing, offset=offset, low=None, high=None, target=None, mask=None
    )
    assert torch.equal(gpu.cpu(), cpu)
    assert torch.equal(cpu, ref)


def test_centre_gradient_is_reproducible():
    """The centres' gradient of nearest_centre_kl sums the samples of each centre in sample order (stable sort,
    then segment_reduce), not with atomics: repeated runs give identical bits without deterministic mode."""
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(20000, 8, generator=g).to(CUDA)
    logvar = torch.randn(20000, 8, generator=g).to(CUDA)
    centres = torch.randn(3, 8, generator=g).to(CUDA)

    def centre_grad():
        c = centres.clone().requires_grad_()
        kl, _ = ops.nearest_centre_kl(mu, logvar, c)
        (grad,) = torch.autograd.grad(kl.sum(), c)
        return grad

    first, second = centre_grad(), centre_grad()
    assert torch.equal(first, second)
    c = centres.cpu().requires_grad_()
    kl, _ = ops.nearest_centre_kl(mu.cpu(), logvar.cpu(), c)
    (cpu_grad,) = torch.autograd.grad(kl.sum(), c)
    torch.testing.assert_close(first.cpu(), cpu_grad, rtol=1e-4, atol=1e-2)


# ---------------------------------------------------------------------------------------------------------
# Issue 18, item 5: launch shapes (each path against the CPU kernel, float64, tight)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("len_", [1, 32, 33, 64, 1000, 1024, 1025, 4097])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared-abar", "per-sample-abar"])
def test_nll_step_paths_match_cpu(len_, per_sample):
    g = torch.Generator().manual_seed(len_)
    batch = 37
    x_t, x_next, eps, noise = torch.randn(4, batch, len_, generator=g, dtype=torch.float64)
    acc = torch.randn(batch, generator=g, dtype=torch.float64)
    if per_sample:
        abar_t = 0.5 + 0.4 * torch.rand(batch, generator=g, dtype=torch.float64)
        abar_next, abar_after = abar_t * 0.9, abar_t * 0.8
    else:
        abar_t, abar_next, abar_after = 0.9, 0.8, 0.7
    cpu = ops.diffusion_nll_step_and_forward(acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after)
    gpu = ops.diffusion_nll_step_and_forward(*on_cuda(acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after))
    for c, d in zip(cpu, gpu):
        torch.testing.assert_close(d.cpu(), c, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("row_len", [1, 32, 33, 100, 1024, 1025, 9000])
@pytest.mark.parametrize("layout", ["cross", "split"])
def test_coupling_paths_match_cpu(row_len, layout):
    g = torch.Generator().manual_seed(row_len)
    x = torch.randn(5, 2, row_len, generator=g, dtype=torch.float64)
    h = torch.randn(5, 4, row_len, generator=g, dtype=torch.float64)
    cpu = ops.affine_coupling(x, h, scale="glow", layout=layout)
    gpu = ops.affine_coupling(*on_cuda(x, h), scale="glow", layout=layout)
    for c, d in zip(cpu, gpu):
        torch.testing.assert_close(d.cpu(), c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pixels, latents", [(1, 1), (33, 8), (1024, 1024), (1025, 3), (10, 2000), (20000, 64)])
def test_gaussian_elbo_paths_match_cpu(pixels, latents):
    g = torch.Generator().manual_seed(pixels)
    x, x_mean = torch.randn(2, 9, pixels, generator=g, dtype=torch.float64)
    mu, logvar = torch.randn(2, 9, latents, generator=g, dtype=torch.float64)
    cpu = ops.gaussian_elbo(x, x_mean, mu, logvar, decoder_logvar=-1.3)
    gpu = ops.gaussian_elbo(*on_cuda(x, x_mean, mu, logvar), decoder_logvar=-1.3)
    for c, d in zip(cpu, gpu):
        torch.testing.assert_close(d.cpu(), c, rtol=1e-12, atol=1e-9)


def _patterns(rows, words, generator, distinct_bits=6):
    """Packed patterns with few distinct bits, so distances tie often (ties go to the smaller index)."""
    bits = torch.zeros(rows, words * 64, dtype=torch.bool)
    bits[:, :distinct_bits] = torch.rand(rows, distinct_bits, generator=generator) < 0.5
    return ops.pack_patterns(bits)


@pytest.mark.parametrize(
    "num_query, num_ref, words, k",
    [
        (1, 100_000, 2, 17),  # one query: split over the references, then merged
        (300, 5_000, 20, 9),  # query words not held in registers
        (5, 1_000, 1, 1_000),  # k = all references
        (300_000, 40, 1, 3),  # one thread per query fills the device: no merge pass
    ],
)
def test_hamming_topk_matches_cpu(num_query, num_ref, words, k):
    g = torch.Generator().manual_seed(num_query)
    query, ref = _patterns(num_query, words, g), _patterns(num_ref, words, g)
    cpu = ops.hamming_topk(query, ref, k)
    gpu = ops.hamming_topk(*on_cuda(query, ref), k)
    for c, d in zip(cpu, gpu):
        assert torch.equal(d.cpu(), c)


def test_elementwise_kernels_index_past_two_to_the_31():
    """A linear step over 2^31 + 2 elements takes the 64-bit index path; its per-sample coefficients
    must still be read for the right sample at the far end."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    len_ = 2**30 + 1
    x = torch.ones(2, len_, dtype=torch.float16, device=CUDA)
    noise = torch.full((2, len_), 0.5, dtype=torch.float16, device=CUDA)
    abar_t = torch.tensor([1.0, 1.0], dtype=torch.float64, device=CUDA)
    abar_next = torch.tensor([0.25, 0.64], dtype=torch.float64, device=CUDA)
    out = ops.diffusion_forward_step(x, noise, abar_t, abar_next)
    for sample, (scale_x, scale_noise) in enumerate([(0.5, 0.75**0.5), (0.8, 0.6)]):
        expected = torch.tensor(scale_x + 0.5 * scale_noise, dtype=torch.float16)
        for part in (out[sample, :1000], out[sample, -1000:]):
            assert torch.equal(part.cpu(), expected.expand(1000))
    del x, noise, out
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------
# Per-sample schedules: immediate (one sync) or deferred (in the kernel, no sync, CUDA graphs)
# ---------------------------------------------------------------------------------------------------------


def _per_sample_forward_inputs(batch=64, d=5):
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(2, batch, d, generator=g)
    abar = 0.05 + 0.9 * torch.rand(batch, generator=g, dtype=torch.float64)
    return on_cuda(x0, eps, abar)


def test_immediate_schedule_checks_synchronise_and_deferred_ones_do_not():
    x0, eps, abar = _per_sample_forward_inputs()
    expected = ops.diffusion_forward_step(x0, eps, 1.0, abar)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            ops.diffusion_forward_step(x0, eps, 1.0, abar)
        with ops.deferred_schedule_checks():
            got = ops.diffusion_forward_step(x0, eps, 1.0, abar)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert torch.equal(got, expected)


def test_per_sample_steps_capture_into_a_cuda_graph():
    x0, eps, abar = _per_sample_forward_inputs()
    expected = ops.diffusion_forward_step(x0, eps, 1.0, abar)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture, as CUDA graphs want
        ops.diffusion_forward_step(x0, eps, 1.0, abar)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # checked in the kernel: no sync during the capture
        out = ops.diffusion_forward_step(x0, eps, 1.0, abar)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)


def test_deferred_check_stops_the_kernel_on_a_bad_pair():
    """In a child process: a device-side assert leaves the CUDA context unusable."""
    script = textwrap.dedent("""
        import torch
        from manifold_ext import ops
        x = torch.randn(8, 3, device="cuda")
        abar = torch.full((8,), 0.5, dtype=torch.float64, device="cuda")
        abar[3] = 1.5  # abar_next > abar_t = 1
        with ops.deferred_schedule_checks():
            ops.diffusion_forward_step(x, x, 1.0, abar)
            torch.cuda.synchronize()
        print("NO ERROR")
    """)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "NO ERROR" not in output, output
    # the kernel's printf names the sample; the assert's own text is printed in any case
    assert "invalid per-sample diffusion schedule" in output, output


def test_immediate_check_names_the_bad_sample_and_keeps_the_context():
    x = torch.randn(8, 3, device=CUDA)
    abar = torch.full((8,), 0.5, dtype=torch.float64, device=CUDA)
    abar[3] = 1.5
    with pytest.raises(ValueError, match="invalid schedule at sample 3"):
        ops.diffusion_forward_step(x, x, 1.0, abar)
    assert_context_usable()
