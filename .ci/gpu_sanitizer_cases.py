"""Every CUDA launch path of manifold_ext once, on small inputs, for compute-sanitizer.

Run by .ci/gpu-check under ``compute-sanitizer --tool memcheck`` and ``--tool
racecheck``: each op family's kernels, forward and backward, on shapes that take
every launch path (thread / warp / chunked rows, per-sample coefficients with
the immediate and the deferred schedule check, top-k with its merge pass).
Small inputs take the 32-bit index path only. Small enough to finish in seconds
under the sanitizer. Prints one line per family; any sanitizer report makes
compute-sanitizer exit non-zero (--error-exitcode).
"""

from __future__ import annotations

import torch

from manifold_ext import ops

CUDA = "cuda"


def coupling() -> None:
    for row_len in (5, 100, 5000):  # thread rows, warp rows, chunks
        for layout in ("cross", "split"):
            x = torch.randn(3, 2, row_len, device=CUDA, requires_grad=True)
            h = torch.randn(3, 4, row_len, device=CUDA, requires_grad=True)
            y, logdet = ops.affine_coupling(x, h, scale="glow", layout=layout)
            (y.sum() + logdet.sum()).backward()


def diffusion() -> None:
    for len_ in (2, 100, 5000):
        x_t, x_next, eps, noise = torch.randn(4, 9, len_, device=CUDA)
        acc = torch.zeros(9, device=CUDA, dtype=torch.float64)
        per_sample = torch.linspace(0.5, 0.9, 9, device=CUDA, dtype=torch.float64)
        ops.diffusion_nll_step_and_forward(acc, x_t, x_next, eps, noise, 0.9, 0.8, 0.7)
        ops.diffusion_nll_step(acc, x_t, x_next, eps, per_sample, per_sample * 0.9)
        with ops.deferred_schedule_checks():
            ops.diffusion_forward_step(x_t, noise, 1.0, per_sample)
        ops.ddim_step(x_t, eps, 0.5, 0.6, eta=0.5, noise=noise)
        x = x_t.clone().requires_grad_()
        ops.diffusion_nll_step(acc, x, x_next, eps, 0.9, 0.8).sum().backward()
        ops.rk4_update(x_t, x_t, x_next, eps, noise, 0.1)


def closest_centre_kl() -> None:
    for n in (2, 40):  # thread rows, warp rows
        mu = torch.randn(300, n, device=CUDA, requires_grad=True)
        logvar = torch.randn(300, n, device=CUDA, requires_grad=True)
        kl, _ = ops.closest_centre_kl(mu, logvar, spacing=0.3, offset=0.1, low=-2.0, high=3.0)
        kl.sum().backward()
        centres = torch.randn(7, n, device=CUDA, requires_grad=True)
        kl, _ = ops.nearest_centre_kl(mu, logvar, centres)
        kl.sum().backward()


def gaussian_elbo() -> None:
    for pixels, latents in ((10, 4), (5000, 16), (100, 2000)):  # warp rows, chunks, chunks for the latents
        x = torch.randn(5, pixels, device=CUDA)
        x_mean = torch.randn(5, pixels, device=CUDA, requires_grad=True)
        mu = torch.randn(5, latents, device=CUDA, requires_grad=True)
        logvar = torch.randn(5, latents, device=CUDA, requires_grad=True)
        elbo, kl = ops.gaussian_elbo(x, x_mean, mu, logvar, decoder_logvar=-1.0)
        (elbo.sum() + kl.sum()).backward()


def relu_patterns() -> None:
    weights = [torch.randn(70, 3, device=CUDA), torch.randn(30, 70, device=CUDA), torch.randn(2, 30, device=CUDA)]
    biases = [torch.randn(70, device=CUDA), torch.randn(30, device=CUDA), torch.randn(2, device=CUDA)]
    x = torch.randn(500, 3, device=CUDA)
    patterns = ops.activation_patterns(x, weights[:2], biases[:2])
    ops.unpack_patterns(patterns, 100)
    ops.hamming_distance(patterns, patterns[:50])
    ops.hamming_topk(patterns[:1], patterns, 9)  # split + merge
    ops.hamming_topk(patterns, patterns[:20], 3)  # splits over few references
    ops.region_system(weights, biases, patterns[:4])


def main() -> None:
    for family in (coupling, diffusion, closest_centre_kl, gaussian_elbo, relu_patterns):
        family()
        torch.cuda.synchronize()
        print(f"sanitizer case {family.__name__}: ran", flush=True)


if __name__ == "__main__":
    main()
