"""Benchmark cases for op family 5, ReLU activation patterns, and the polyhedral toolbox's LPs.

Pattern ops: ``eager`` is the plain-PyTorch way (unpacked bool patterns, Hamming
distances as float matrix products, ``torch.topk``: ``manifold_ext.reference``),
``compile`` the same under ``torch.compile``, ``ours`` the packed ops.

LP cases reuse the three columns for the three ways of finding active bits:
``eager`` is the approach of the article's public toolbox, one freshly built
cvxpy problem per bit; ``compile`` is this package's readable reference path
(one parametrised cvxpy problem, compiled once); ``ours`` is the fast path
(screening + one reused HiGHS model). All three must give the same answers,
which each case asserts before timing.

Enumeration cases time all of Algorithm 1 on networks from
:meth:`~manifold_ext.relu_geometry.ReLUNetwork.random` (hyperplanes crossing the
box as a trained network's do): ``eager`` is the per-bit cvxpy traversal (or,
for networks where that takes many minutes, this package's LP path), ``ours``
the default (exact C++ polygon clipping in 2-D, screening + HiGHS otherwise);
the region sets are asserted identical, and the shape column gives the count
(regions/s in the note).
"""

from __future__ import annotations

import numpy as np
import torch

from manifold_ext.benchmark.harness import BenchCase
from manifold_ext.ops import activation_patterns, hamming_distance, hamming_topk
from manifold_ext.reference import (
    activation_bits_reference,
    hamming_distance_bits_reference,
    hamming_topk_bits_reference,
)


def _mlp_weights(d: int, widths: list[int], device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [d, *widths]
    weights = [
        (torch.randn(sizes[i + 1], sizes[i], generator=g) / sizes[i] ** 0.5).to(device) for i in range(len(widths))
    ]
    biases = [(0.1 * torch.randn(sizes[i + 1], generator=g)).to(device) for i in range(len(widths))]
    return weights, biases


def _pipeline_case(n: int, d: int, widths: list[int], k: int, device) -> BenchCase:
    """Patterns of n query and n reference points, then the k Hamming-nearest references of each query."""
    H = sum(widths)

    def make():
        weights, biases = _mlp_weights(d, widths, device)
        g = torch.Generator().manual_seed(1)
        query = torch.randn(n, d, generator=g).to(device)
        ref = torch.randn(n, d, generator=g).to(device)

        def eager_pipeline(q, r):
            return hamming_topk_bits_reference(
                activation_bits_reference(q, weights, biases), activation_bits_reference(r, weights, biases), k
            )

        def ours():
            return hamming_topk(
                activation_patterns(query, weights, biases), activation_patterns(ref, weights, biases), k
            )

        compiled = torch.compile(eager_pipeline, dynamic=False)
        got, want = ours(), eager_pipeline(query, ref)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), "ours and eager disagree"
        return {"eager": lambda: eager_pipeline(query, ref), "compile": lambda: compiled(query, ref), "ours": ours}

    return BenchCase(
        family="relu",
        name=f"patterns + top-{k} Hamming (H={H})",
        shape=f"{n} x {n}, d={d}",
        dtype="float32",
        make=make,
        max_rounds=5,
        warmup_calls=1,
        note=f"H={H}: {len(widths)} hidden layers of {widths[0]}; eager = bool patterns, "
        "float matmul distances, torch.topk",
    )


def _distance_case(n: int, H: int, device) -> BenchCase:
    def make():
        g = torch.Generator().manual_seed(2)
        a_bits = (torch.rand(n, H, generator=g) > 0.5).to(device)
        b_bits = (torch.rand(n, H, generator=g) > 0.5).to(device)
        from manifold_ext.ops import pack_patterns

        a, b = pack_patterns(a_bits), pack_patterns(b_bits)
        compiled = torch.compile(hamming_distance_bits_reference, dynamic=False)
        assert torch.equal(hamming_distance(a, b), hamming_distance_bits_reference(a_bits, b_bits))
        return {
            "eager": lambda: hamming_distance_bits_reference(a_bits, b_bits),
            "compile": lambda: compiled(a_bits, b_bits),
            "ours": lambda: hamming_distance(a, b),
        }

    return BenchCase(
        family="relu",
        name=f"Hamming distance matrix (H={H})",
        shape=f"{n} x {n}",
        dtype="bits",
        make=make,
        max_rounds=7,
    )


def _patterns_case(n: int, d: int, widths: list[int], device) -> BenchCase:
    def make():
        weights, biases = _mlp_weights(d, widths, device)
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(3)).to(device)
        compiled = torch.compile(activation_bits_reference, dynamic=False)
        return {
            "eager": lambda: activation_bits_reference(x, weights, biases),
            "compile": lambda: compiled(x, weights, biases),
            "ours": lambda: activation_patterns(x, weights, biases),
        }

    return BenchCase(
        family="relu",
        name=f"activation patterns (H={sum(widths)})",
        shape=f"{n} x {d}",
        dtype="float32",
        make=make,
        max_rounds=7,
        note="eager/compile return unpacked bool patterns, ours packed int64 (H/8 bytes per point)",
    )


# ---------------------------------------------------------------------------
# Active-bit LPs and region enumeration
# ---------------------------------------------------------------------------
def naive_active_bits(A: np.ndarray, c: np.ndarray, box=None, tol: float = 1e-7) -> np.ndarray:
    """The public toolbox's approach: for every bit, build a new cvxpy problem (Eq. 6) and solve it.
    Rows are normalised (as in the fast path) so the tolerance means the same thing."""
    import cvxpy as cp

    norms = np.linalg.norm(A, axis=1)
    A, c = A / norms[:, None], c / norms
    d = A.shape[1]
    active = []
    for i in range(len(A)):
        others = np.arange(len(A)) != i
        x = cp.Variable(d)
        constraints = [A[others] @ x <= c[others]]
        if box is not None:
            constraints += [x >= box[0], x <= box[1]]
        problem = cp.Problem(cp.Maximize(A[i] @ x), constraints)
        problem.solve()
        if problem.status == "unbounded" or (problem.status == "optimal" and problem.value > c[i] + tol):
            active.append(i)
    return np.array(active, dtype=np.int64)


def naive_enumerate(net, box, tol: float = 1e-7) -> set[bytes]:
    """Algorithm 1 with :func:`naive_active_bits` (and a plain set for the visited patterns), started
    at the box centre (or the origin)."""
    from manifold_ext.relu_geometry import flip_units

    centre = np.zeros((1, net.input_dim)) if box is None else np.full((1, net.input_dim), 0.5 * (box[0] + box[1]))
    start = net.patterns(centre).numpy()[0]
    seen, frontier, regions = {start.tobytes()}, [start], set()
    while frontier:
        pattern = frontier.pop()
        A, c, _, _ = net.systems(torch.from_numpy(pattern[None]))
        bits = naive_active_bits(A[0], c[0], box, tol)
        regions.add(pattern.tobytes())
        for unit in bits:
            flipped = flip_units(pattern, [unit])
            if flipped.tobytes() not in seen:
                seen.add(flipped.tobytes())
                frontier.append(flipped)
    return regions


def _network(d: int, widths: list[int], seed: int = 0):
    """A random network whose hyperplanes cross the unit box as a trained one's do (deterministic)."""
    from manifold_ext.relu_geometry import ReLUNetwork

    return ReLUNetwork.random(d, widths, seed=seed)


def _active_bits_case() -> BenchCase:
    def make():
        from manifold_ext.relu_geometry import active_set

        net = _network(2, [10, 10])
        regions = net.regions(net.patterns(np.random.default_rng(0).uniform(-1, 1, (8, 2))))
        box = (-1.0, 1.0)

        def eager():
            return [naive_active_bits(r.A, r.c, box) for r in regions]

        def reference():
            return [active_set(r, box, method="cvxpy").bits for r in regions]

        def ours():
            return [active_set(r, box).bits for r in regions]

        results = [eager(), reference(), ours(), [active_set(r, box, method="clip").bits for r in regions]]
        for other in results[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(results[0], other)), "active bits disagree"
        return {"eager": eager, "compile": reference, "ours": ours}

    return BenchCase(
        family="relu",
        name="active bits, 8 regions of a 2x10 net",
        shape="20 rows, d=2, box",
        dtype="float64",
        make=make,
        max_rounds=3,
        warmup_calls=0,
        note="LP case: eager = new cvxpy problem per bit (public toolbox), compile = parametrised "
        "cvxpy reference, ours = screening + reused HiGHS model; answers asserted equal",
    )


def _enumeration_case(
    d: int, widths: list[int], box: tuple[float, float] | None, baseline: str | None, max_regions: int | None = None
) -> BenchCase:
    """Every region of a d-D net (or the first ``max_regions``): ``eager`` the per-bit cvxpy Algorithm 1
    (baseline="cvxpy"), or, where that would take many minutes, the package's LP path
    (baseline="highs"), or none; ``ours`` the default (exact C++ polygon clipping for d = 2,
    screening + HiGHS otherwise), in this process."""
    where = "R^%d" % d if box is None else f"[{box[0]:g},{box[1]:g}]^{d}"
    arch = "x".join(map(str, [len(widths), widths[0]])) if len(set(widths)) == 1 else "-".join(map(str, widths))
    first = "" if max_regions is None else f"first {max_regions:,} "
    case = BenchCase(
        family="relu",
        name=f"enumerate {first}regions, {d}-D {arch} net in {where}",
        shape="",
        dtype="float64",
        make=lambda: {},
        max_rounds=1 if baseline == "cvxpy" else 3,
        warmup_calls=0,
    )

    def make():
        from manifold_ext.relu_geometry import enumerate_regions

        net = _network(d, widths)

        def ours():
            return enumerate_regions(net, box=box, executor=None, max_regions=max_regions, progress=False)

        def eager():
            if baseline == "cvxpy":
                return naive_enumerate(net, box)
            return enumerate_regions(net, box=box, method="highs", executor=None, progress=False).keys()

        result = ours()
        seconds = min(ours().seconds, result.seconds)
        count = len(result)
        bounded = "" if result.bounded is None else f" ({result.num_bounded} bounded)"
        case.shape = f"{count} regions{bounded}, H={sum(widths)}"
        # The rate of the faster untimed check run; under load it can differ from the timed median
        # (count / ours ms), which is the number to quote.
        rate = (
            f"ours = method '{result.method}' in one process, about {count / seconds:,.0f} regions/s in the "
            "untimed check runs"
        )
        if baseline is None:
            case.note = rate + ("" if max_regions is None else " (over the first regions of the traversal)")
            return {"ours": ours}
        assert eager() == result.keys(), "the baseline's region set differs from ours"
        what = (
            "new cvxpy problem per bit (public toolbox's Algorithm 1)"
            if baseline == "cvxpy"
            else "this package's LP path (screening + HiGHS)"
        )
        case.note = f"eager = {what}; {rate}; region sets asserted identical"
        return {"eager": eager, "ours": ours}

    case.make = make
    return case


def cases(device: torch.device, quick: bool = False) -> list[BenchCase]:
    if quick:
        return [_pipeline_case(500, 16, [32, 32], 5, device), _distance_case(256, 64, device)]
    out = [
        _pipeline_case(10_000, 64, [256, 256, 256, 256], 10, device),
        _pipeline_case(10_000, 16, [32, 32], 10, device),
        _distance_case(4096, 1024, device),
        _distance_case(4096, 64, device),
        _patterns_case(100_000, 64, [256, 256, 256, 256], device),
    ]
    if device.type == "cpu":  # the geometry runs on the CPU whatever the device
        out += [
            _active_bits_case(),
            _enumeration_case(2, [10, 10], (-1.0, 1.0), "cvxpy"),  # issue 14: >= 200x per-bit cvxpy
            _enumeration_case(2, [10, 10], None, "cvxpy"),
            _enumeration_case(3, [10, 10, 10], (-0.5, 0.5), "cvxpy"),  # issue 14: >= 50x per-bit cvxpy
            _enumeration_case(2, [25, 25, 25], None, "highs"),  # Table 1's largest net, all of R^2
            _enumeration_case(8, [8, 8], (-1.0, 1.0), None, max_regions=1000),
        ]
    return out
