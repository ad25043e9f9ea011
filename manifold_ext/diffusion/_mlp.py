"""Inference of the point eps-MLP when a whole batch shares one time (likelihood, sampling): the Fig. 5 hot path.

Measured on the project's 2-core AMD EPYC (AVX-512), float32, per row and core
(docs/guides/diffusion.md, "Performance"):

* PyTorch's ``F.linear`` on CPU calls MKL's sgemm, which runs its AVX2 kernels on
  AMD CPUs: ~310 ns per row for a 128x128 layer. oneDNN's linear (the op
  ``torch.compile``'s CPU backend emits for linear layers,
  ``torch.ops.mkldnn._linear_pointwise``) uses AVX-512: ~155 ns, and gives the
  same bits as MKL here (each output is the same in-order sum over the inputs);
  this is checked once per process and the MKL path is kept where it is not so.
* Fresh outputs of 1 MB and more cost page faults on every call (glibc hands
  them back to the kernel): rows are processed in chunks whose activations stay
  around 512 KB, inside the per-core L2, and the network output is written in place.
* The input layer (K = dim inputs) and the output layer (dim outputs) are too
  thin for oneDNN to pay off; they stay on ``torch.addmm``.

Every chunk computes exactly what the eager layers compute, so the answer does
not depend on the chunking (rows are independent in a GEMM here).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

ACTIVATION_BYTES_PER_CHUNK = 512 * 1024


@functools.cache
def onednn_linear():
    """oneDNN's ``linear(x, weight, bias)`` if this torch has it and it gives ``F.linear``'s bits, else None."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(257, 128, generator=generator)
        weight = torch.randn(96, 128, generator=generator) / 11
        bias = torch.randn(96, generator=generator)
        with torch.inference_mode():
            if not torch.equal(op(x, weight, bias, "none", [], ""), F.linear(x, weight, bias)):
                return None
    except (RuntimeError, TypeError):  # a torch whose op takes other arguments: keep the plain path
        return None
    return lambda h, weight, bias: op(h, weight, bias, "none", [], "")


def applies(x: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """The fast path is for float32 CPU inference on contiguous weights (else the eager layers run)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 2
        and not torch.is_grad_enabled()
        and all(w.dtype == torch.float32 and w.is_contiguous() for w in weights)
    )


def chunk_rows(hidden: int) -> int:
    """Rows per chunk: activations of about ACTIVATION_BYTES_PER_CHUNK (1,024 rows for 128 units)."""
    return max(64, ACTIVATION_BYTES_PER_CHUNK // (4 * hidden))


def shared_time_mlp(
    x: torch.Tensor,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    output_weight: torch.Tensor,
    output_bias: torch.Tensor,
) -> torch.Tensor:
    """SiLU MLP ``x -> silu(W_k ... silu(W_1 x + b_1) ... + b_k) -> W_out h + b_out`` (time folded into the b_i)."""
    out = torch.empty(x.shape[0], output_weight.shape[0], dtype=x.dtype)
    linear = onednn_linear() or F.linear
    (first_weight, first_bias), rest = layers[0], layers[1:]
    step = chunk_rows(first_weight.shape[0])
    for start in range(0, x.shape[0], step):
        h = F.silu(F.linear(x[start : start + step], first_weight, first_bias), inplace=True)
        for weight, bias in rest:
            h = F.silu(linear(h, weight, bias), inplace=True)
        torch.addmm(output_bias, h, output_weight.t(), out=out[start : start + step])
    return out
