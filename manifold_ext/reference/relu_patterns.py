"""Reference ReLU pattern ops in plain PyTorch (the ops' specification; paper 001, Eq. 2-5).

Patterns are handled the way eager PyTorch code does it, as unpacked 0/1
tensors, and Hamming distances as matrix products of those; the packed
``int64`` layout of the compiled ops (bit ``g % 64`` of word ``g // 64``)
is produced and consumed only at the edges.
"""

from __future__ import annotations

from typing import Sequence

import torch

from manifold_ext import ops
from manifold_ext.reference._spec import reference_of

BITS_PER_WORD = 64


@reference_of(ops.pack_patterns)
def pack_patterns_reference(bits):
    """``bool [N, H]`` -> ``int64 [N, ceil(H/64)]``, unit ``g`` at bit ``g % 64`` of word ``g // 64``."""
    n, units = bits.shape
    words = (units + BITS_PER_WORD - 1) // BITS_PER_WORD
    padded = torch.zeros((n, words * BITS_PER_WORD), dtype=torch.int64, device=bits.device)
    padded[:, :units] = bits.to(torch.int64)
    shifts = torch.arange(BITS_PER_WORD, device=bits.device, dtype=torch.int64)
    # Distinct powers of two: the sum is an OR (bit 63 wraps to the sign bit, as intended).
    return (padded.view(n, words, BITS_PER_WORD) << shifts).sum(-1)


@reference_of(ops.unpack_patterns)
def unpack_patterns_reference(packed, num_units):
    """``int64 [N, ceil(H/64)]`` -> ``bool [N, H]``."""
    shifts = torch.arange(BITS_PER_WORD, device=packed.device, dtype=torch.int64)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], packed.shape[1] * BITS_PER_WORD)[:, :num_units].bool()


def activation_bits_reference(
    x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Unpacked patterns ``bool [N, H]``: s = (pre-activation > 0), layers concatenated (Eq. 3-4)."""
    bits = []
    h = x
    for w, b in zip(weights, biases):
        # Eq. 2, as one addmm like the op: h @ w.T + b rounds differently (bias added after the product's
        # sum), which flips the bit of a pre-activation within rounding of 0 (one in 10,000 x 1,024 seen)
        pre = torch.addmm(b, h, w.T)
        bits.append(pre > 0)  # Eq. 3 (0 -> inactive)
        h = torch.relu(pre)
    if not bits:
        return torch.zeros((x.shape[0], 0), dtype=torch.bool, device=x.device)
    return torch.cat(bits, dim=1)


@reference_of(ops.activation_patterns)
def activation_patterns_reference(x, weights, biases):
    """Packed patterns ``int64 [N, ceil(H/64)]`` (the compiled op's output format)."""
    return pack_patterns_reference(activation_bits_reference(x, weights, biases))


def hamming_distance_bits_reference(a_bits: torch.Tensor, b_bits: torch.Tensor) -> torch.Tensor:
    """Hamming distances between unpacked 0/1 patterns, as two matrix products (the eager way).

    ``d(a, b) = sum a (1 - b) + (1 - a) b = |a| + |b| - 2 a.b``. Sums of 0/1 products are exact in
    float32 below 2^24 units, in float64 beyond.
    """
    dtype = torch.float32 if a_bits.shape[1] < 2**24 else torch.float64
    a = a_bits.to(dtype)
    b = b_bits.to(dtype)
    dist = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - 2 * (a @ b.T)
    return dist.round().to(torch.int32)


@reference_of(ops.hamming_distance)
def hamming_distance_reference(a, b):
    """``int32 [Na, Nb]`` Hamming distances between packed patterns (unpacks, then matrix products)."""
    units = a.shape[1] * BITS_PER_WORD
    return hamming_distance_bits_reference(unpack_patterns_reference(a, units), unpack_patterns_reference(b, units))


def hamming_topk_bits_reference(
    query_bits: torch.Tensor, ref_bits: torch.Tensor, k: int, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest references by Hamming distance on unpacked patterns, ascending by (distance, index).

    Queries go in chunks so the distance matrix of a chunk, not of all queries, is held.
    """
    num_ref = ref_bits.shape[0]
    dists, indices = [], []
    index = torch.arange(num_ref, device=ref_bits.device, dtype=torch.int64)
    for start in range(0, query_bits.shape[0], chunk):
        dist = hamming_distance_bits_reference(query_bits[start : start + chunk], ref_bits).to(torch.int64)
        key = dist * num_ref + index  # unique keys: ties in distance go to the smaller index
        top_key = torch.topk(key, k, dim=1, largest=False, sorted=True).values
        dists.append((top_key // num_ref).to(torch.int32))
        indices.append(top_key % num_ref)
    if not dists:
        empty = torch.zeros((0, k), dtype=torch.int64, device=ref_bits.device)
        return empty.to(torch.int32), empty
    return torch.cat(dists), torch.cat(indices)


@reference_of(ops.hamming_topk)
def hamming_topk_reference(query, ref, k):
    """Packed-pattern version of :func:`hamming_topk_bits_reference`."""
    units = query.shape[1] * BITS_PER_WORD
    query_bits = unpack_patterns_reference(query, units)
    return hamming_topk_bits_reference(query_bits, unpack_patterns_reference(ref, units), k)


@reference_of(ops.region_system)
def region_system_reference(weights, biases, patterns):
    """Eq. 5 written out pattern by pattern: ``(A [P,H,d], c [P,H], W_hat [P,n_out,d], b_hat [P,n_out])``.

    ``W_hat_1 = W_1``, ``b_hat_1 = b_1``; ``W_hat_j = W_j diag(s_{j-1}) W_hat_{j-1}``,
    ``b_hat_j = W_j diag(s_{j-1}) b_hat_{j-1} + b_j``; ``A_j = diag(s'_j) W_hat_j``,
    ``c_j = -diag(s'_j) b_hat_j`` with ``s' = 1 - 2 s``; output map
    ``W_{L+1} diag(s_L) W_hat_L`` and ``W_{L+1} diag(s_L) b_hat_L + b_{L+1}``.
    """
    hidden_weights, hidden_biases = weights[:-1], biases[:-1]
    units = sum(w.shape[0] for w in hidden_weights)
    bits = unpack_patterns_reference(patterns, units)
    A_all, c_all, w_all, b_all = [], [], [], []
    for s in bits:
        s = s.to(weights[0].dtype)
        rows, rhs = [], []
        w_hat, b_hat = weights[0], biases[0]
        offset = 0
        for j, (w, b) in enumerate(zip(hidden_weights, hidden_biases)):
            if j > 0:
                prev = s[offset - hidden_weights[j - 1].shape[0] : offset]
                w_hat = w @ torch.diag(prev) @ w_hat
                b_hat = w @ torch.diag(prev) @ b_hat + b
            sign = 1 - 2 * s[offset : offset + w.shape[0]]  # s'
            rows.append(torch.diag(sign) @ w_hat)
            rhs.append(-torch.diag(sign) @ b_hat)
            offset += w.shape[0]
        last = s[offset - hidden_weights[-1].shape[0] : offset]
        A_all.append(torch.cat(rows))
        c_all.append(torch.cat(rhs))
        w_all.append(weights[-1] @ torch.diag(last) @ w_hat)
        b_all.append(weights[-1] @ torch.diag(last) @ b_hat + biases[-1])
    d, n_out = weights[0].shape[1], weights[-1].shape[0]
    if not A_all:
        empty = weights[0].new_zeros
        return empty((0, units, d)), empty((0, units)), empty((0, n_out, d)), empty((0, n_out))
    return torch.stack(A_all), torch.stack(c_all), torch.stack(w_all), torch.stack(b_all)
