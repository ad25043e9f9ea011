"""ReLU pattern ops (op family 5) against their plain-PyTorch references."""

from __future__ import annotations

import pytest
import torch

from manifold_ext.ops import (
    activation_patterns,
    hamming_distance,
    hamming_topk,
    pack_patterns,
    region_system,
    unpack_patterns,
)
from manifold_ext.reference import (
    activation_bits_reference,
    activation_patterns_reference,
    hamming_distance_reference,
    hamming_topk_reference,
    pack_patterns_reference,
    region_system_reference,
    unpack_patterns_reference,
)


def make_network(widths, d, n_out=3, dtype=torch.float64, device="cpu", seed=0):
    """Hidden layers of the given widths on d inputs, plus an output layer."""
    g = torch.Generator().manual_seed(seed)
    sizes = [d, *widths, n_out]
    weights = [torch.randn(sizes[i + 1], sizes[i], generator=g, dtype=dtype).to(device) for i in range(len(sizes) - 1)]
    biases = [torch.randn(sizes[i + 1], generator=g, dtype=dtype).to(device) for i in range(len(sizes) - 1)]
    return weights, biases


def random_packed(n, words, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, (n, words), generator=g, dtype=torch.int64).to(device)


# (hidden widths, input dim): odd H, H < 64, H = 64 exactly, layers straddling word boundaries.
NETWORKS = [((10, 10), 2), ((7,), 3), ((64,), 5), ((33, 40, 5), 4), ((1,), 1), ((100, 29), 8)]


# ---------------------------------------------------------------------------
# activation_patterns / pack / unpack
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("widths,d", NETWORKS, ids=str)
@pytest.mark.parametrize("n", [0, 1, 17, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_activation_patterns_match_reference(device, widths, d, n, dtype):
    weights, biases = make_network(widths, d, dtype=dtype, device=device)
    x = torch.randn(n, d, dtype=dtype, device=device)
    packed = activation_patterns(x, weights[:-1], biases[:-1])
    H = sum(widths)
    assert packed.shape == (n, (H + 63) // 64) and packed.dtype == torch.int64
    torch.testing.assert_close(packed, activation_patterns_reference(x, weights[:-1], biases[:-1]), rtol=0, atol=0)
    torch.testing.assert_close(unpack_patterns(packed, H), activation_bits_reference(x, weights[:-1], biases[:-1]))


def test_bit_order_is_lsb_first_layers_concatenated():
    # Layer 1: 3 units, layer 2: 70 units (so it spans words 0 and 1).
    w1 = torch.eye(3, 2, dtype=torch.float64)  # pre = (x1, x2, 0)
    b1 = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    w2 = torch.zeros(70, 3, dtype=torch.float64)
    b2 = -torch.ones(70, dtype=torch.float64)
    b2[60] = 1.0  # global unit 63: last bit of word 0 (the sign bit)
    b2[61] = 1.0  # global unit 64: first bit of word 1
    b2[69] = 1.0  # global unit 72
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    packed = activation_patterns(x, [w1, w2], [b1, b2])
    word0 = (1 << 0) | (1 << 63)  # unit 0 (x1 > 0) and unit 63; unit 1 (x2 < 0) and unit 2 (== 0) are off
    assert packed[0, 0].item() == word0 - (1 << 64)  # as a signed int64
    assert packed[0, 1].item() == (1 << 0) | (1 << 8)


def test_zero_preactivation_is_inactive():
    w = torch.tensor([[1.0], [-1.0], [0.0]], dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    x = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    bits = unpack_patterns(activation_patterns(x, [w], [b]), 3)
    assert bits.tolist() == [[False, False, False], [True, False, False]]


@pytest.mark.parametrize("units", [0, 1, 63, 64, 65, 130, 1000])
def test_pack_unpack_roundtrip(device, units):
    bits = torch.rand(37, units, device=device) > 0.5
    packed = pack_patterns(bits)
    torch.testing.assert_close(packed, pack_patterns_reference(bits), rtol=0, atol=0)
    torch.testing.assert_close(unpack_patterns(packed, units), bits)
    torch.testing.assert_close(unpack_patterns_reference(packed, units), bits)


# ---------------------------------------------------------------------------
# Hamming distance and top-k
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("na,nb,words", [(0, 5, 1), (5, 0, 2), (1, 1, 1), (37, 1029, 1), (130, 600, 3), (20, 70, 17)])
def test_hamming_distance_matches_reference(device, na, nb, words):
    a = random_packed(na, words, device, seed=1)
    b = random_packed(nb, words, device, seed=2)
    dist = hamming_distance(a, b)
    assert dist.dtype == torch.int32 and dist.shape == (na, nb)
    torch.testing.assert_close(dist, hamming_distance_reference(a, b), rtol=0, atol=0)


def test_hamming_distance_of_network_patterns_counts_flipped_units():
    weights, biases = make_network((50, 50), 3)
    x = torch.randn(40, 3, dtype=torch.float64)
    packed = activation_patterns(x, weights[:-1], biases[:-1])
    bits = unpack_patterns(packed, 100)
    expected = (bits[:, None, :] != bits[None, :, :]).sum(-1).to(torch.int32)
    torch.testing.assert_close(hamming_distance(packed, packed), expected)
    assert torch.all(torch.diagonal(hamming_distance(packed, packed)) == 0)


@pytest.mark.parametrize(
    "nq,nr,words,k",
    [(0, 5, 1, 2), (7, 5, 1, 0), (1, 1, 1, 1), (50, 1500, 1, 1), (33, 700, 2, 5), (20, 300, 17, 300), (9, 1100, 1, 64)],
)
def test_hamming_topk_matches_reference(device, nq, nr, words, k):
    query = random_packed(nq, words, device, seed=3)
    ref = random_packed(nr, words, device, seed=4)
    dist, index = hamming_topk(query, ref, k)
    assert dist.dtype == torch.int32 and index.dtype == torch.int64
    assert dist.shape == (nq, k) and index.shape == (nq, k)
    ref_dist, ref_index = hamming_topk_reference(query, ref, k)
    torch.testing.assert_close(dist, ref_dist, rtol=0, atol=0)
    torch.testing.assert_close(index, ref_index, rtol=0, atol=0)


def test_hamming_topk_ties_go_to_the_smaller_index(device):
    # Only a few distinct patterns: most distances tie, across several reference tiles.
    base = random_packed(4, 1, device, seed=5)
    ref = base[torch.arange(2000, device=device) % 4]
    query = base[[0, 3]]
    dist, index = hamming_topk(query, ref, 6)
    assert index[0].tolist() == [0, 4, 8, 12, 16, 20]
    assert index[1].tolist() == [3, 7, 11, 15, 19, 23]
    assert dist.eq(0).all()
    full = hamming_distance(query, ref)
    kth = torch.sort(full, dim=1, stable=True)
    torch.testing.assert_close(index, kth.indices[:, :6])


# ---------------------------------------------------------------------------
# region_system (Eq. 5)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("widths,d", NETWORKS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_region_system_matches_reference(device, widths, d, dtype):
    weights, biases = make_network(widths, d, dtype=dtype, device=device)
    x = torch.randn(9, d, dtype=dtype, device=device)
    patterns = activation_patterns(x, weights[:-1], biases[:-1])
    out = region_system(weights, biases, patterns)
    H = sum(widths)
    assert [t.shape for t in out] == [(9, H, d), (9, H), (9, 3, d), (9, 3)]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, want in zip(out, region_system_reference(weights, biases, patterns)):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("widths,d", NETWORKS, ids=str)
def test_region_system_holds_at_the_points_and_gives_the_network_output(widths, d):
    weights, biases = make_network(widths, d)
    x = torch.randn(50, d, dtype=torch.float64)
    patterns = activation_patterns(x, weights[:-1], biases[:-1])
    A, c, W_hat, b_hat = region_system(weights, biases, patterns)
    # Every point satisfies its own region's inequalities (Eq. 5) ...
    slack = c - torch.einsum("phd,pd->ph", A, x)
    assert (slack >= -1e-9).all()
    # ... and the region's affine map is the network there.
    h = x
    for w, b in zip(weights[:-1], biases[:-1]):
        h = torch.relu(h @ w.T + b)
    out = h @ weights[-1].T + biases[-1]
    torch.testing.assert_close(torch.einsum("pod,pd->po", W_hat, x) + b_hat, out, rtol=1e-9, atol=1e-9)


def test_region_system_of_no_patterns():
    weights, biases = make_network((5, 4), 2)
    A, c, W_hat, b_hat = region_system(weights, biases, torch.zeros(0, 1, dtype=torch.int64))
    assert A.shape == (0, 9, 2) and c.shape == (0, 9) and W_hat.shape == (0, 3, 2) and b_hat.shape == (0, 3)


def test_region_system_of_the_issue_network():
    # f(x) = [2, -4] . ReLU([[1, 1], [1, 1]] x + [1, 0]) - 1
    weights = [
        torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64),
        torch.tensor([[2.0, -4.0]], dtype=torch.float64),
    ]
    biases = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)]
    patterns = pack_patterns(torch.tensor([[True, True], [True, False], [False, False]]))
    A, c, W_hat, b_hat = region_system(weights, biases, patterns)
    assert W_hat[:, 0].tolist() == [[-2.0, -2.0], [2.0, 2.0], [0.0, 0.0]]
    assert b_hat[:, 0].tolist() == [1.0, 1.0, -1.0]
    # Both active: x+y+1 >= 0 and x+y >= 0, written as -(x+y) <= 1 and -(x+y) <= 0.
    assert A[0].tolist() == [[-1.0, -1.0], [-1.0, -1.0]] and c[0].tolist() == [1.0, 0.0]
    assert A[2].tolist() == [[1.0, 1.0], [1.0, 1.0]] and c[2].tolist() == [-1.0, 0.0]


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the problem
# ---------------------------------------------------------------------------
def test_bad_network_shapes():
    weights, biases = make_network((5, 4), 3)
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weights\[1\] takes 5 inputs but layer 0 has 4 units|takes"):
        activation_patterns(x, [weights[0], weights[0]], [biases[0], biases[0]])
    with pytest.raises(ValueError, match="one bias per layer"):
        activation_patterns(x, weights[:2], biases[:1])
    with pytest.raises(ValueError, match=r"biases\[0\] must have shape \[5\]"):
        activation_patterns(x, weights[:1], [biases[1]])
    with pytest.raises(ValueError, match="x has 2 features but weights\\[0\\] expects 3"):
        activation_patterns(x[:, :2], weights[:1], biases[:1])
    with pytest.raises(ValueError, match="at least one layer"):
        activation_patterns(x, [], [])
    with pytest.raises(ValueError, match="must be a matrix"):
        activation_patterns(x, [weights[0].flatten()], [biases[0]])


def test_bad_dtypes():
    weights, biases = make_network((5,), 3)
    x = torch.randn(2, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="x and the weights must share one dtype"):
        activation_patterns(x, weights[:1], biases[:1])
    with pytest.raises(ValueError, match="share one dtype"):
        activation_patterns(x.double(), [weights[0]], [biases[0].float()])
    with pytest.raises(ValueError, match="must be floating point"):
        activation_patterns(x.long(), [weights[0].long()], [biases[0].long()])
    with pytest.raises(RuntimeError, match="float32 and float64"):
        activation_patterns(x.half(), [weights[0].half()], [biases[0].half()])
    with pytest.raises(ValueError, match="dtype int64"):
        hamming_distance(torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="bool tensor"):
        pack_patterns(torch.zeros(2, 3))


def test_bad_pattern_shapes():
    a = random_packed(3, 2)
    with pytest.raises(ValueError, match="same number of words"):
        hamming_distance(a, random_packed(3, 1))
    with pytest.raises(ValueError, match=r"shape \[N, words\]"):
        hamming_distance(a.flatten(), a)
    with pytest.raises(ValueError, match=r"k must be in \[0, number of reference patterns = 3\], got k = 4"):
        hamming_topk(a, a, 4)
    with pytest.raises(ValueError, match="k must be in"):
        hamming_topk(a, a, -1)
    with pytest.raises(ValueError, match="65 units need 2 int64 words"):
        unpack_patterns(random_packed(3, 1), 65)
    weights, biases = make_network((70,), 2)
    with pytest.raises(ValueError, match="70 hidden units, so patterns need 2 int64 words"):
        region_system(weights, biases, random_packed(3, 1))
    with pytest.raises(ValueError, match="hidden layers followed by the output layer"):
        region_system(weights[:1], biases[:1], random_packed(3, 2))


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_patterns(dtype):
    weights, biases = make_network((64, 64), 8, dtype=torch.float32, device="cuda")
    x = torch.randn(500, 8, device="cuda")
    packed = activation_patterns(x.to(dtype), [w.to(dtype) for w in weights[:-1]], [b.to(dtype) for b in biases[:-1]])
    full = activation_patterns(x, weights[:-1], biases[:-1])
    # Low precision may flip units whose pre-activation is near 0, but only a few.
    assert hamming_distance(packed, full).diagonal().float().mean() < 3


@pytest.mark.cuda
def test_cuda_matches_cpu_large():
    q, r = random_packed(3000, 16, seed=7), random_packed(5000, 16, seed=8)
    for k in (1, 10):
        got = hamming_topk(q.cuda(), r.cuda(), k)
        want = hamming_topk(q, r, k)
        torch.testing.assert_close(got[0].cpu(), want[0])
        torch.testing.assert_close(got[1].cpu(), want[1])
    torch.testing.assert_close(hamming_distance(q.cuda(), r.cuda()).cpu(), hamming_distance(q, r))


# ---------------------------------------------------------------------------
# Issue 13 items 7 and 8: the NaN rule, integers that are not truncated, bits past the last unit
# ---------------------------------------------------------------------------
def test_nan_pre_activation_is_refused():
    """A NaN pre-activation read as an inactive bit, and later layers gave plausible bits."""
    weights, biases = make_network((5, 4), 3)
    x = torch.randn(4, 3, dtype=torch.float64)
    x[2, 1] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"the pre-activation of hidden unit \d+ \(unit \d+ of layer 0\) is NaN for "
        r"sample 2, so its pattern bit is undefined",
    ):
        activation_patterns(x, weights[:2], biases[:2])
    bad = [w.clone() for w in weights[:2]]
    bad[1][3, 0] = float("inf")  # inf * 0 or inf - inf in layer 1 only where unit 0 of layer 0 is active
    x = torch.randn(50, 3, dtype=torch.float64)
    layer0 = torch.relu(x @ weights[0].T + biases[0])
    if (layer0[:, 0] > 0).any():
        with pytest.raises(ValueError, match="of layer 1"):
            activation_patterns(x, bad, biases[:2])
    # infinities have a sign: they give bits
    packed = activation_patterns(
        torch.tensor([[float("inf")]], dtype=torch.float64),
        [torch.tensor([[1.0], [-1.0]], dtype=torch.float64)],
        [torch.zeros(2, dtype=torch.float64)],
    )
    assert unpack_patterns(packed, 2).tolist() == [[True, False]]


def test_integer_arguments_are_not_truncated():
    a = random_packed(3, 1)
    with pytest.raises(TypeError, match=r"hamming_topk: k must be an integer, got 2.7 \(float\); it is not rounded"):
        hamming_topk(a, a, 2.7)
    with pytest.raises(TypeError, match="num_units must be an integer, got 69.9"):
        unpack_patterns(random_packed(3, 2), 69.9)
    with pytest.raises(TypeError, match="k must be an integer, got the bool True"):
        hamming_topk(a, a, True)
    import numpy as np

    dist, index = hamming_topk(a, a, np.int64(2))  # NumPy integers are integers
    assert dist.shape == (3, 2)
    assert unpack_patterns(pack_patterns(torch.ones(2, 5, dtype=torch.bool)), np.int32(5)).all()


def test_bits_past_the_last_unit_are_refused():
    """Bits set beyond H were ignored: patterns of a wider network read as valid."""
    packed = pack_patterns(torch.rand(4, 70) > 0.5)
    packed[2, 1] |= 1 << 10  # unit 74 of a 70-unit network
    with pytest.raises(ValueError, match="unpack_patterns: packed row 2 has bits set beyond unit 69"):
        unpack_patterns(packed, 70)
    weights, biases = make_network((70,), 2)
    with pytest.raises(ValueError, match="region_system: patterns row 2 has bits set beyond unit 69"):
        region_system(weights, biases, packed)
    unpack_patterns(packed, 75)  # the same words as 75 units: fine


def test_region_system_gradient_is_refused_not_silently_wrong():
    weights, biases = make_network((6,), 2)
    weights = [w.requires_grad_() for w in weights]
    patterns = activation_patterns(torch.randn(3, 2, dtype=torch.float64), weights[:1], biases[:1])
    A, _, _, _ = region_system(weights, biases, patterns)
    with pytest.raises(RuntimeError, match="region_system is not differentiable"):
        A.sum().backward()
