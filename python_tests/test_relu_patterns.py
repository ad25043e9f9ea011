"""ReLU pattern ops (op family 5) against their plain-PyTorch references."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import requires_cuda
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


def test_activation_patterns_non_contiguous_inputs(device):
    weights, biases = make_network((20, 9), 6, device=device)
    x = torch.randn(6, 40, dtype=torch.float64, device=device)[:, ::4].T  # [10, 6], non-contiguous
    w0 = weights[0].T.contiguous().T  # column-major copy
    packed = activation_patterns(x, [w0, weights[1]], biases[:2])
    torch.testing.assert_close(packed, activation_patterns_reference(x.contiguous(), weights[:2], biases[:2]))


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


@pytest.mark.parametrize("nq,nr,words,k", [(0, 5, 1, 2), (7, 5, 1, 0), (1, 1, 1, 1), (50, 1500, 1, 1),
                                          (33, 700, 2, 5), (20, 300, 17, 300), (9, 1100, 1, 64)])
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
    weights = [torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64), torch.tensor([[2.0, -4.0]], dtype=torch.float64)]
    biases = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)]
    patterns = pack_patterns(torch.tensor([[True, True], [True, False], [False, False]]))
    A, c, W_hat, b_hat = region_system(weights, biases, patterns)
    assert W_hat[:, 0].tolist() == [[-2.0, -2.0], [2.0, 2.0], [0.0, 0.0]]
    assert b_hat[:, 0].tolist() == [1.0, 1.0, -1.0]
    # Both active: x+y+1 >= 0 and x+y >= 0, written as -(x+y) <= 1 and -(x+y) <= 0.
    assert A[0].tolist() == [[-1.0, -1.0], [-1.0, -1.0]] and c[0].tolist() == [1.0, 0.0]
    assert A[2].tolist() == [[1.0, 1.0], [1.0, 1.0]] and c[2].tolist() == [-1.0, 0.0]


# ---------------------------------------------------------------------------
# The ops as PyTorch citizens: opcheck, torch.compile
# ---------------------------------------------------------------------------
def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck_all_ops(device):
    weights, biases = make_network((30, 41), 3, device=device)
    x = torch.randn(11, 3, dtype=torch.float64, device=device)
    packed = activation_patterns(x, weights[:-1], biases[:-1])
    _opcheck(torch.ops.manifold_ext.activation_patterns.default, (x, weights[:-1], biases[:-1]))
    _opcheck(torch.ops.manifold_ext.unpack_patterns.default, (packed, 71))
    _opcheck(torch.ops.manifold_ext.pack_patterns.default, (unpack_patterns(packed, 71),))
    _opcheck(torch.ops.manifold_ext.hamming_distance.default, (packed, packed[:5]))
    _opcheck(torch.ops.manifold_ext.hamming_topk.default, (packed, packed[:5], 3))
    _opcheck(torch.ops.manifold_ext.region_system.default, (weights, biases, packed))


def test_opcheck_autograd_registration():
    # Inputs that require grad: the ops are registered without autograd (they are not
    # differentiable), and opcheck's autograd-registration check accepts that for outputs
    # that are integer (patterns) or that callers use under no_grad (region systems).
    weights, biases = make_network((8,), 2)
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.library.opcheck(torch.ops.manifold_ext.activation_patterns.default, (x, weights[:-1], biases[:-1]),
                          test_utils="test_autograd_registration")


def test_torch_compile_fullgraph():
    weights, biases = make_network((20, 20), 2)

    def nearest_pattern(x, ref_x):
        q = activation_patterns(x, weights[:-1], biases[:-1])
        r = activation_patterns(ref_x, weights[:-1], biases[:-1])
        return hamming_topk(q, r, 2), hamming_distance(q, r), unpack_patterns(q, 40)

    compiled = torch.compile(nearest_pattern, fullgraph=True, backend="aot_eager")
    x, ref_x = torch.randn(13, 2, dtype=torch.float64), torch.randn(29, 2, dtype=torch.float64)
    for got, want in zip(torch.utils._pytree.tree_leaves(compiled(x, ref_x)),
                         torch.utils._pytree.tree_leaves(nearest_pattern(x, ref_x))):
        torch.testing.assert_close(got, want)


def test_every_cpu_isa_copy_agrees():
    """The Hamming loops are compiled per instruction set; each copy must give the same answers."""
    import manifold_ext

    script = (
        "import torch, manifold_ext, json\n"
        "from manifold_ext.ops import hamming_distance, hamming_topk\n"
        "g = torch.Generator().manual_seed(0)\n"
        "a = torch.randint(-2**63, 2**63 - 1, (70, 3), generator=g)\n"
        "b = torch.randint(-2**63, 2**63 - 1, (1100, 3), generator=g)\n"
        "d = hamming_distance(a, b); t = hamming_topk(a, b, 7)\n"
        "print(json.dumps([manifold_ext.build_info()['cpu_isa_in_use'], int(d.sum()), t[1].tolist()]))\n"
    )
    in_use = manifold_ext.build_info()["cpu_isa_in_use"]
    others = [isa for isa in ("default", "avx2", "avx512") if isa != in_use]
    # The copy in use runs here; the others in parallel subprocesses.
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, ATEN_CPU_CAPABILITY=isa),
                              stdout=subprocess.PIPE, text=True) for isa in others]
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**63), 2**63 - 1, (70, 3), generator=g)
    b = torch.randint(-(2**63), 2**63 - 1, (1100, 3), generator=g)
    here = [int(hamming_distance(a, b).sum()), hamming_topk(a, b, 7)[1].tolist()]
    assert here[0] == int(hamming_distance_reference(a, b).sum())
    for isa, proc in zip(others, procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        isa_used, *result = json.loads(out)
        assert result == here, f"ISA copy {isa_used} disagrees"


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


def test_compile_reports_bad_k_at_trace_time():
    a = random_packed(3, 1)
    fn = torch.compile(lambda q, r: hamming_topk(q, r, 5), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="k must be in"):
        fn(a, a)


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_patterns(dtype):
    weights, biases = make_network((64, 64), 8, dtype=torch.float32, device="cuda")
    x = torch.randn(500, 8, device="cuda")
    packed = activation_patterns(x.to(dtype), [w.to(dtype) for w in weights[:-1]], [b.to(dtype) for b in biases[:-1]])
    full = activation_patterns(x, weights[:-1], biases[:-1])
    # Low precision may flip units whose pre-activation is near 0, but only a few.
    assert hamming_distance(packed, full).diagonal().float().mean() < 3


@requires_cuda
def test_cuda_matches_cpu_large():
    q, r = random_packed(3000, 16, seed=7), random_packed(5000, 16, seed=8)
    for k in (1, 10):
        got = hamming_topk(q.cuda(), r.cuda(), k)
        want = hamming_topk(q, r, k)
        torch.testing.assert_close(got[0].cpu(), want[0])
        torch.testing.assert_close(got[1].cpu(), want[1])
    torch.testing.assert_close(hamming_distance(q.cuda(), r.cuda()).cpu(), hamming_distance(q, r))
