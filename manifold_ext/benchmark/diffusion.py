"""Benchmark cases for op families 2 and 3: diffusion likelihood step and sampler steps.

Shapes from the issue: 2-D points, N = 10,000 x 100 rounds batched as
1,000,000 x 2 (the paper's Fig. 5 evaluation), and images B = 64 x 3 x 32 x 32.
``end_to_end`` times the whole Fig. 5 likelihood evaluation and how much of it
is spent outside the network.
"""

from __future__ import annotations

import threading
import time

import torch

from manifold_ext import ops
from manifold_ext.benchmark.harness import BenchCase
from manifold_ext.reference import diffusion as ref

SHAPES = {"points": (1_000_000, 2), "images": (64, 3, 32, 32), "tiny": (4096, 2)}


def _case(family_name, label, shape, device, dtype, arrays_read, arrays_written, make_fns, note="", acc=False):
    def make():
        generator = torch.Generator(device=device).manual_seed(0)
        tensors = [torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(5)]
        accumulator = torch.zeros(shape[0], device=device, dtype=torch.float64)
        ours, reference = make_fns(tensors, accumulator)
        compiled = torch.compile(reference, dynamic=False)
        return {"eager": reference, "compile": compiled, "ours": ours}

    numel = torch.Size(shape).numel()
    itemsize = torch.empty((), dtype=dtype).element_size()
    bytes_moved = (arrays_read + arrays_written) * numel * itemsize + (2 * 8 * shape[0] if acc else 0)
    return BenchCase(
        family="diffusion",
        name=f"{family_name} ({label})",
        shape="x".join(map(str, shape)),
        dtype=str(dtype).replace("torch.", ""),
        make=make,
        bytes_moved=bytes_moved,
        note=note,
        large=label == "points",
    )


def _nll_case(label, shape, device, dtype, per_sample=False):
    def fns(t, acc):
        x_t, x_next, eps = t[:3]
        if per_sample:
            abar_t = torch.rand(shape[0], device=device, dtype=torch.float64) * 0.5 + 0.4
            abar_next = abar_t * 0.9
        else:
            abar_t, abar_next = 0.9, 0.8
        return (
            lambda: ops.diffusion_nll_step(acc, x_t, x_next, eps, abar_t, abar_next),
            lambda: ref.diffusion_nll_step_reference(acc, x_t, x_next, eps, abar_t, abar_next),
        )

    name = "nll_step per-sample abar" if per_sample else "nll_step"
    return _case(
        name,
        label,
        shape,
        device,
        dtype,
        3,
        0,
        fns,
        acc=True,
        note="compile/ours: per-sample [B] abar tensors" if per_sample else "",
    )


def _nll_fused_case(label, shape, device, dtype):
    def fns(t, acc):
        x_t, x_next, eps, noise = t[:4]
        args = (acc, x_t, x_next, eps, noise, 0.9, 0.8, 0.7)
        return (
            lambda: ops.diffusion_nll_step_and_forward(*args),
            lambda: ref.diffusion_nll_step_and_forward_reference(*args),
        )

    return _case("nll_step_and_forward", label, shape, device, dtype, 4, 1, fns, acc=True)


def _step_case(step, label, shape, device, dtype):
    def fns(t, acc):
        x, eps, noise = t[:3]
        if step == "ddim":
            return (
                lambda: ops.ddim_step(x, eps, 0.4, 0.6, 0.5, noise),
                lambda: ref.ddim_step_reference(x, eps, 0.4, 0.6, 0.5, noise),
            )
        if step == "ddpm":
            return lambda: ops.ddpm_step(x, eps, 0.4, 0.6, noise), lambda: ref.ddpm_step_reference(
                x, eps, 0.4, 0.6, noise
            )
        if step == "large_step":
            return lambda: ops.large_step(x, eps, 0.4, 0.6, noise), lambda: ref.large_step_reference(
                x, eps, 0.4, 0.6, noise
            )
        return (
            lambda: ops.diffusion_forward_step(x, noise, 0.9, 0.8),
            lambda: ref.diffusion_forward_step_reference(x, noise, 0.9, 0.8),
        )

    reads = 2 if step == "forward_step" else 3
    return _case(step, label, shape, device, dtype, reads, 1, fns)


def _rk4_case(kind, label, shape, device, dtype):
    def fns(t, acc):
        if kind == "rk4_combine":
            return lambda: ops.rk4_combine(*t[:4]), lambda: ref.rk4_combine_reference(*t[:4])
        return lambda: ops.rk4_update(*t, 0.1), lambda: ref.rk4_update_reference(*t, 0.1)

    return _case(kind, label, shape, device, dtype, 4 if kind == "rk4_combine" else 5, 1, fns)


def cases(device: torch.device, quick: bool = False) -> list[BenchCase]:
    dtype = torch.float32
    if quick:
        shape = SHAPES["tiny"]
        return [_nll_case("tiny", shape, device, dtype), _step_case("ddim", "tiny", shape, device, dtype)]
    out = []
    for label in ("points", "images"):
        shape = SHAPES[label]
        out += [
            _nll_case(label, shape, device, dtype),
            _nll_fused_case(label, shape, device, dtype),
            _step_case("forward_step", label, shape, device, dtype),
            _step_case("ddpm", label, shape, device, dtype),
            _step_case("ddim", label, shape, device, dtype),
            _step_case("large_step", label, shape, device, dtype),
            _rk4_case("rk4_combine", label, shape, device, dtype),
            _rk4_case("rk4_update", label, shape, device, dtype),
        ]
    out.append(_nll_case("points", SHAPES["points"], device, dtype, per_sample=True))
    if device.type == "cuda":
        out.append(_nll_fused_case("images", SHAPES["images"], device, torch.bfloat16))
    return out


class _TimedModel(torch.nn.Module):
    """Wraps an eps-model and adds up the time spent inside it, summed over the threads that call it
    (``log_likelihood`` runs whole batches on several Python threads at once)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seconds = inner, 0.0
        self._lock = threading.Lock()

    def forward(self, x, t):
        start = time.perf_counter()
        out = self.inner(x, t)
        if x.is_cuda:
            torch.cuda.synchronize()
        with self._lock:
            self.seconds += time.perf_counter() - start
        return out


def end_to_end(
    points: int = 10_000,
    rounds: int = 100,
    T: int = 100,
    hidden: int = 128,
    batch_size: int = 16_384,
    device: str = "cpu",
) -> dict:
    """Time the Fig. 5 likelihood evaluation (points x rounds x T steps at dt = 1) with the
    Swiss-roll eps-MLP (weights do not change the cost) and split it into network / the rest."""
    from manifold_ext.diffusion import PointEpsNet, linear_schedule, log_likelihood

    schedule = linear_schedule(T)
    torch.manual_seed(0)
    model = _TimedModel(PointEpsNet(hidden=hidden, T=T).to(device).eval())
    x0 = torch.randn(points, 2, device=device)
    result = {}
    # log_likelihood's default: whole batches on this many Python threads at once (one intra-op thread each)
    batch_threads = torch.get_num_threads() if device == "cpu" else 1
    for fused in (True, False):
        model.seconds = 0.0
        start = time.perf_counter()
        log_likelihood(
            model,
            x0,
            schedule,
            dt=1,
            rounds=rounds,
            batch_size=batch_size,
            fused=fused,
            generator=torch.Generator(device=device).manual_seed(0),
            progress=True,
        )
        total = time.perf_counter() - start
        result["fused" if fused else "unfused"] = {
            "seconds": round(total, 2),
            "network_seconds_summed_over_threads": round(model.seconds, 2),
            # of the thread time (wall x batch threads), the share not spent in the network
            "outside_network_share": round(1 - model.seconds / (total * batch_threads), 4),
        }
    result.update(
        batch_threads=batch_threads,
        points=points,
        rounds=rounds,
        T=T,
        hidden=hidden,
        batch_size=batch_size,
        device=device,
        threads=torch.get_num_threads(),
    )
    return result
