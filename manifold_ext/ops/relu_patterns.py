"""ReLU activation patterns (op family 5; paper 001, Liu et al., Eq. 3-5).

Conventions shared by every op here:

* A *pattern* is the sign bit of every hidden pre-activation of a ReLU MLP,
  hidden layers concatenated in order (Eq. 4). It is packed into ``int64``
  words, ``[N, ceil(H / 64)]``: hidden unit ``g`` is bit ``g % 64`` (least
  significant bit first) of word ``g // 64``; bits past the last unit are 0.
* Tie rule (Eq. 3): a unit is active (bit 1) iff its pre-activation is
  ``> 0``; a pre-activation of exactly 0 gives 0, and so does NaN (as
  ``pre > 0`` does in PyTorch; :class:`manifold_ext.relu_geometry.ReLUNetwork`
  rejects non-finite inputs before calling the op).
* Top-k ties: neighbours are ordered by ``(distance, reference index)``, so of
  two references at the same distance the one with the smaller index comes first.

None of these ops is differentiable (patterns are discrete; region systems
are for geometry, not training).
"""
from __future__ import annotations

from typing import Sequence

import torch

BITS_PER_WORD = 64


def words_for_units(num_units: int) -> int:
    """int64 words of a packed pattern of ``num_units`` hidden units."""
    return (int(num_units) + BITS_PER_WORD - 1) // BITS_PER_WORD


def activation_patterns(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """Packed activation patterns of a ReLU MLP (Eq. 3-4).

    Args:
        x: ``[N, d]`` inputs.
        weights: the hidden layers' weight matrices ``[h_j, h_{j-1}]`` (``h_0 = d``),
            in order; the output layer is *not* included.
        biases: the hidden layers' biases ``[h_j]``.

    Returns:
        ``int64 [N, ceil(H / 64)]`` with ``H = sum h_j``: bit ``j`` of word ``w`` is
        hidden unit ``64 w + j`` (LSB first), set when its pre-activation is > 0.

    Each layer is one GEMM; the sign bits are packed and the ReLU applied in
    one pass. CPU: float32/float64; CUDA: also float16/bfloat16.
    """
    return torch.ops.manifold_ext.activation_patterns.default(x, list(weights), list(biases))


def unpack_patterns(packed: torch.Tensor, num_units: int) -> torch.Tensor:
    """``int64 [N, ceil(H/64)]`` packed patterns -> ``bool [N, H]`` (``num_units = H``)."""
    return torch.ops.manifold_ext.unpack_patterns.default(packed, int(num_units))


def pack_patterns(bits: torch.Tensor) -> torch.Tensor:
    """``bool [N, H]`` patterns -> ``int64 [N, ceil(H/64)]`` (the packing of :func:`activation_patterns`)."""
    return torch.ops.manifold_ext.pack_patterns.default(bits)


def hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distances between two sets of packed patterns.

    Args:
        a: ``int64 [Na, W]``; b: ``int64 [Nb, W]`` (same ``W``).

    Returns:
        ``int32 [Na, Nb]``, ``popcount(a_i XOR b_j)`` (cache-blocked; on CPU the
        popcounts run 8 lanes wide where AVX512-VPOPCNTDQ is available).
    """
    return torch.ops.manifold_ext.hamming_distance.default(a, b)


def hamming_topk(query: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` Hamming-nearest reference patterns of every query, without the full distance matrix.

    Args:
        query: ``int64 [Nq, W]``; ref: ``int64 [Nr, W]``; ``0 <= k <= Nr``.

    Returns:
        ``(dist, index)``: ``int32 [Nq, k]`` and ``int64 [Nq, k]``, ascending by
        ``(distance, reference index)``: ties go to the smaller index.
    """
    return torch.ops.manifold_ext.hamming_topk.default(query, ref, int(k))


def region_system(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], patterns: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear system of each pattern's region (Eq. 5) and the network's affine map on it.

    Args:
        weights: the hidden layers' weights followed by the output layer's
            (``L + 1`` matrices); biases likewise.
        patterns: ``int64 [P, ceil(H / 64)]`` packed patterns of the ``H`` hidden units.

    Returns:
        ``(A, c, W_hat, b_hat)``: ``A [P, H, d]`` and ``c [P, H]`` with one row per
        hidden unit in pattern order, ``A_g x <= c_g`` being the closed half-space
        on which unit ``g`` keeps the sign the pattern gives it (row ``g`` is
        ``s'_g W_hat_g`` with ``s' = +1`` for inactive, ``-1`` for active units);
        and the network's output on the region, ``f(x) = W_hat x + b_hat`` with
        ``W_hat [P, n_out, d]`` and ``b_hat [P, n_out]``.
    """
    return torch.ops.manifold_ext.region_system.default(list(weights), list(biases), patterns)


# ---------------------------------------------------------------------------
# Fake (meta) kernels: shapes and dtypes only, so torch.compile/export trace the ops.
# ---------------------------------------------------------------------------
@torch.library.register_fake("manifold_ext::activation_patterns")
def _activation_patterns_fake(x, weights, biases):
    torch._check(x.dim() == 2, lambda: f"activation_patterns: x must have shape [N, d], got {tuple(x.shape)}")
    torch._check(len(weights) == len(biases) and len(weights) > 0,
                 lambda: "activation_patterns: pass one bias per weight matrix, at least one layer")
    hidden = sum(w.shape[0] for w in weights)
    return x.new_empty((x.shape[0], words_for_units(hidden)), dtype=torch.int64)


@torch.library.register_fake("manifold_ext::unpack_patterns")
def _unpack_patterns_fake(packed, num_units):
    torch._check(packed.dim() == 2, lambda: "unpack_patterns: packed must have shape [N, words]")
    return packed.new_empty((packed.shape[0], num_units), dtype=torch.bool)


@torch.library.register_fake("manifold_ext::pack_patterns")
def _pack_patterns_fake(bits):
    torch._check(bits.dim() == 2, lambda: "pack_patterns: bits must have shape [N, H]")
    return bits.new_empty((bits.shape[0], (bits.shape[1] + BITS_PER_WORD - 1) // BITS_PER_WORD), dtype=torch.int64)


@torch.library.register_fake("manifold_ext::hamming_distance")
def _hamming_distance_fake(a, b):
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "hamming_distance: a and b must have shape [N, words]")
    torch._check(a.shape[1] == b.shape[1], lambda: "hamming_distance: a and b must have the same number of words")
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@torch.library.register_fake("manifold_ext::hamming_topk")
def _hamming_topk_fake(query, ref, k):
    torch._check(query.dim() == 2 and ref.dim() == 2, lambda: "hamming_topk: query and ref must have shape [N, words]")
    torch._check(query.shape[1] == ref.shape[1], lambda: "hamming_topk: query and ref must have the same number of words")
    torch._check(0 <= k and k <= ref.shape[0], lambda: "hamming_topk: k must be in [0, number of reference patterns]")
    return (query.new_empty((query.shape[0], k), dtype=torch.int32),
            query.new_empty((query.shape[0], k), dtype=torch.int64))


@torch.library.register_fake("manifold_ext::region_system")
def _region_system_fake(weights, biases, patterns):
    torch._check(len(weights) >= 2 and len(weights) == len(biases),
                 lambda: "region_system: weights/biases must list the hidden layers and the output layer")
    hidden = sum(w.shape[0] for w in weights[:-1])
    d = weights[0].shape[1]
    n_out = weights[-1].shape[0]
    num = patterns.shape[0]
    ref = weights[0]
    return (ref.new_empty((num, hidden, d)), ref.new_empty((num, hidden)),
            ref.new_empty((num, n_out, d)), ref.new_empty((num, n_out)))
