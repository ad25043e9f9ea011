"""The ReLU geometry layer's API contract (issues 13 and 20): every bad input raises a clear error,
every entry point says what it takes, degenerate networks (bias-free, rescaled units) are exact."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from relu_geometry_cases import brute_force_regions, spread_network
from torch import nn

from manifold_ext._optional import MissingOptionalDependency
from manifold_ext.relu_geometry import (
    Box,
    HammingNearestNeighbour,
    RegionLPError,
    ReLUNetwork,
    active_set,
    as_box,
    chebyshev_centre,
    enumerate_regions,
    flip_units,
    neighbours,
    point_across_facet,
    sample_patterns,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(seed=0, widths=(6, 5), d=2) -> ReLUNetwork:
    return spread_network(list(widths), d, seed)


# ---------------------------------------------------------------------------
# Boxes and tolerances (issue 13 items 4 and 8)
# ---------------------------------------------------------------------------
def test_box_is_always_lo_then_hi():
    lo, hi = np.array([-1.0, -2.0]), np.array([1.0, 2.0])
    for box in [(lo, hi), [lo.tolist(), hi.tolist()], np.stack([lo, hi]), torch.tensor(np.stack([lo, hi]))]:
        b = as_box(box, 2)  # in 2-D a [2, 2] array is rows (lo, hi), never columns
        assert np.array_equal(b.lo, lo) and np.array_equal(b.hi, hi)
    b3 = as_box(([-1, -2, -3], [1, 2, 3]), 3)
    assert np.array_equal(b3.lo, [-1, -2, -3])
    assert np.array_equal(as_box((-1, 1), 3).hi, [1, 1, 1])


@pytest.mark.parametrize(
    "box,message",
    [
        (1.0, "ambiguous"),
        (np.zeros((3, 2)), r"shape \[2, 3\].*pass \(arr\[:, 0\], arr\[:, 1\]\)"),
        (([-1, -1], [1, 1]), "box lo must be a scalar or have 3 values"),
        (([-1, -1, -1, -1], 1), "have 3 values"),
        ((-1, 0, 1), "pair"),
        ((1, -1), "lo < hi"),
        ((-np.inf, 1), "finite"),
    ],
)
def test_ambiguous_or_wrong_boxes_raise(box, message):
    with pytest.raises(ValueError, match=message):
        as_box(box, 3)


def test_active_set_with_a_scalar_box_says_why():
    region = small_net().region(x=[0.1, 0.2])
    with pytest.raises(ValueError, match="box=1.0 is ambiguous"):
        active_set(region, box=1.0)
    assert active_set(region, box=(-1.0, 1.0)).num_facets > 0


def test_tolerance_must_fit_the_box_and_the_radius_cap():
    net = small_net()
    with pytest.raises(ValueError, match="must be <= 0.01"):
        enumerate_regions(net, box=(-1, 1), tol=10, progress=False)
    with pytest.raises(ValueError, match="narrower than 100 x tol"):
        enumerate_regions(net, box=(0.0, 1e-6), progress=False)
    with pytest.raises(ValueError, match="tol must be > 0"):
        enumerate_regions(net, tol=0.0, progress=False)
    with pytest.raises(TypeError, match="tol must be a real number"):
        enumerate_regions(net, tol="1e-7", progress=False)
    assert len(enumerate_regions(net, box=(0.0, 1e-3), tol=1e-9, progress=False)) >= 1


# ---------------------------------------------------------------------------
# Integer arguments: validated, never truncated (issue 13 items 8 and 9)
# ---------------------------------------------------------------------------
def test_integers_are_validated_not_truncated():
    net = small_net()
    with pytest.raises(TypeError, match="k must be an integer, got 1.5"):
        HammingNearestNeighbour(k=1.5)
    with pytest.raises(TypeError, match="k must be an integer"):
        HammingNearestNeighbour(k=True)
    assert HammingNearestNeighbour(k=np.int64(3)).k == 3
    for bad, error, message in [
        (0, ValueError, "max_regions must be >= 1, got 0"),
        (-5, ValueError, ">= 1"),
        (2.0, TypeError, "max_regions must be an integer"),
    ]:
        with pytest.raises(error, match=message):
            enumerate_regions(net, box=(-1, 1), max_regions=bad, progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        enumerate_regions(net, box=(-1, 1), batch_size=0, progress=False)
    result = enumerate_regions(net, box=(-1, 1), max_regions=np.int64(3), batch_size=np.int32(2), progress=False)
    assert len(result) == 3 and result.truncated


def test_hamming_kneighbors_k_is_checked():
    net = small_net()
    x = np.random.default_rng(0).uniform(-1, 1, (10, 2))
    clf = HammingNearestNeighbour(k=2, network=net).fit(x, np.arange(10) % 2)
    with pytest.raises(TypeError, match="must be an integer"):
        clf.kneighbors(x, k=2.5)
    with pytest.raises(ValueError, match="exceeds the 10 training patterns"):
        clf.kneighbors(x, k=11)


# ---------------------------------------------------------------------------
# Explicit region entry points (issue 20 item 5)
# ---------------------------------------------------------------------------
def test_region_of_point_and_of_pattern():
    net = small_net()
    point = np.array([0.3, -0.2])
    by_point = net.region_of_point(point)
    assert np.array_equal(by_point.pattern, net.patterns(point[None]).numpy()[0])
    by_pattern = net.region_of_pattern(by_point.pattern)
    assert np.array_equal(by_pattern.A, by_point.A) and np.array_equal(net.region(x=point).c, by_point.c)
    assert np.array_equal(net.region(by_point.pattern).A, by_point.A)
    with pytest.raises(ValueError, match="for a point use region_of_point"):
        net.region(point)  # a point passed where a pattern goes
    with pytest.raises(ValueError, match=r"one point of shape \[2\], got shape \(5, 2\)"):
        net.region(x=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="exactly one of"):
        net.region()


def test_bits_beyond_the_hidden_units_are_refused():
    net = small_net()  # 11 units in one int64 word
    pattern = net.patterns(np.zeros((1, 2))).numpy()
    with pytest.raises(ValueError, match="bits set beyond its 11 hidden units"):
        net.regions(pattern | (1 << 40))
    with pytest.raises(ValueError, match="beyond"):
        net.region_of_pattern(pattern[0] | (1 << 11))


def test_region_rows_are_the_raw_system_and_the_geometry_normalises():
    """Region.A/c are region_system's rows (documented as not normalised); scaling them changes nothing."""
    net = small_net()
    region = net.region(x=[0.1, 0.1])
    A, c, _, _ = net.systems(region.pattern[None])
    assert np.array_equal(region.A, A[0])
    scale = np.geomspace(1e-3, 1e3, len(region.c))[:, None]
    for method in ("highs", "clip", "cvxpy"):
        plain = active_set(region, (-1, 1), method=method)
        scaled = active_set((region.A * scale, region.c * scale[:, 0]), (-1, 1), method=method)
        assert np.array_equal(plain.bits, scaled.bits)


def test_chebyshev_and_active_set_share_the_default_backend():
    import inspect

    assert inspect.signature(chebyshev_centre).parameters["method"].default == "highs"
    assert inspect.signature(active_set).parameters["method"].default == "highs"
    region = small_net().region(x=[0.2, 0.1])
    for method in ("highs", "cvxpy", "clip"):
        centre, radius = chebyshev_centre(region, (-1, 1), method=method)
        assert abs(radius - chebyshev_centre(region, (-1, 1))[1]) < 1e-7
        assert region.contains(centre)


# ---------------------------------------------------------------------------
# Neighbours with points, point across a facet (issue 20 item 5)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("d,box", [(2, (-1.0, 1.0)), (2, None), (3, (-1.0, 1.0))])
def test_point_across_each_facet_lies_in_the_neighbour(d, box):
    net = small_net(seed=3, d=d)
    region = net.region(x=np.full(d, 0.05))
    act = active_set(region, box)
    patterns, points = neighbours(region, box, network=net, return_points=True)
    assert len(patterns) == len(points) == act.num_facets > 0
    assert np.array_equal(patterns, neighbours(region, box))  # non-degenerate: the flipped groups
    for k, group in enumerate(act.groups):
        point, pattern = point_across_facet(net, region, k, box)
        assert np.array_equal(pattern, flip_units(region.pattern, group))
        assert np.array_equal(net.patterns(point[None]).numpy()[0], pattern)
        assert box is None or Box(np.full(d, -1.0), np.ones(d)).contains(point)
        np.testing.assert_allclose(points[k], point)
    with pytest.raises(ValueError, match=f"facet must be < {act.num_facets}"):
        point_across_facet(net, region, act.num_facets, box)
    with pytest.raises(ValueError, match="return_points=True needs network="):
        neighbours(region, box, return_points=True)


def test_neighbours_settle_units_that_vanish_on_the_facet():
    """Bias-free: on the region where layer 1 is off, layer 2 is constant 0; crossing a facet switches on
    the layer-2 units fed by that unit. Flipping the facet's bit alone gives an empty pattern."""
    W1 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    W2 = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    net = ReLUNetwork.from_weights([W1, W2, np.ones((1, 2))], [np.zeros(3), np.zeros(2), np.zeros(1)])
    region = net.region(x=[-0.5, 0.2])  # units 0, 2 off, 1 on
    exact = neighbours(region, network=net)
    for k, pattern in enumerate(exact):
        assert np.array_equal(pattern, point_across_facet(net, region, k)[1])
    dead = net.region(x=[-1.0, -1.0 + 1e-3])  # only unit 2 on: layer 2 constant 0
    exact, points = neighbours(dead, network=net, return_points=True)
    assert np.array_equal(exact, net.patterns(points).numpy())
    assert not np.array_equal(exact, neighbours(dead))  # the plain flip misses the layer-2 units


# ---------------------------------------------------------------------------
# Degenerate networks (issue 13 items 3 and 5)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("box", [(-1.0, 1.0), None])
@pytest.mark.parametrize("method", ["clip", "highs"])
def test_bias_free_network_has_all_its_regions(box, method):
    g = np.random.default_rng(4)
    weights = [g.standard_normal((5, 2)), g.standard_normal((4, 5)), g.standard_normal((1, 4))]
    net = ReLUNetwork.from_weights(weights, [np.zeros(5), np.zeros(4), np.zeros(1)])
    result = enumerate_regions(net, box=box, method=method, progress=False)
    assert len(result) > 5  # the old seed (the origin, on every hyperplane) gave 0
    assert result.keys() == brute_force_regions(net, box)


def test_rescaling_a_unit_keeps_every_region():
    net = small_net(seed=2)
    weights = [w.numpy().copy() for w in net.layers_weights]
    biases = [b.numpy().copy() for b in net.layers_biases]
    weights[0][1] *= 1e14
    biases[0][1] *= 1e14
    weights[1][:, 1] /= 1e14
    rescaled = ReLUNetwork.from_weights(weights, biases)
    for method in ("clip", "highs"):
        for box in [(-1.0, 1.0), None]:
            assert (
                enumerate_regions(rescaled, box=box, method=method, progress=False).keys()
                == enumerate_regions(net, box=box, method=method, progress=False).keys()
            )


def test_an_enumeration_never_ends_empty_without_saying_why(monkeypatch):
    import manifold_ext.relu_geometry.enumerate as enumerate_module
    from manifold_ext.relu_geometry._analysis import analyse_batch

    def nothing_has_an_interior(*args):
        result = analyse_batch(*args)
        result.keep[:] = False
        return result

    monkeypatch.setattr(enumerate_module, "analyse_batch", nothing_has_an_interior)
    with pytest.raises(RegionLPError, match="no region with an interior"):
        enumerate_regions(small_net(), box=(-1, 1), progress=False)


def test_start_of_the_wrong_length_says_so():
    net = small_net()
    with pytest.raises(ValueError, match=r"start must be a point \[2\] or points \[n, 2\], got shape \(3,\)"):
        enumerate_regions(net, box=(-1, 1), start=[0.0, 0.0, 0.0], progress=False)
    with pytest.raises(ValueError, match="start points must lie inside the box"):
        enumerate_regions(net, box=(-1, 1), start=[5.0, 5.0], progress=False)
    with pytest.raises(ValueError, match="method must be 'auto' or one of"):
        enumerate_regions(net, method="simplex", progress=False)
    with pytest.raises(ValueError, match="needs a 2-D input space"):
        enumerate_regions(small_net(d=3), method="clip", progress=False)


# ---------------------------------------------------------------------------
# ReLUNetwork.from_module (issue 13 item 9)
# ---------------------------------------------------------------------------
def test_from_module_refuses_nan_weights():
    module = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        module[2].weight[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '2.weight' contains 1 NaN"):
        ReLUNetwork.from_module(module)
    with pytest.raises(ValueError, match="layer 0 biases contain 1 NaN"):
        ReLUNetwork.from_weights([np.ones((2, 2)), np.ones((1, 2))], [np.array([0.0, np.nan]), np.zeros(1)])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_from_module_reads_low_precision_networks(dtype):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)).to(dtype)
    net = ReLUNetwork.from_module(module)
    assert net.hidden_sizes == [16, 16]
    torch.testing.assert_close(net.output_weight, module[4].weight.double())


class RegisteredOutOfOrder(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(5, 1)  # registered first, applied last
        self.hidden = nn.Linear(4, 5)
        self.first = nn.Linear(2, 4)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(nn.functional.relu(self.first(x)))))


def test_from_module_follows_the_forward_not_the_registration_order():
    module = RegisteredOutOfOrder().double()
    net = ReLUNetwork.from_module(module)
    assert net.hidden_sizes == [4, 5] and net.output_dim == 1
    x = torch.randn(20, 2, dtype=torch.float64)
    torch.testing.assert_close(net(x), module(x))


def test_from_module_error_names_what_was_tried():
    class Residual(RegisteredOutOfOrder):
        def forward(self, x):
            h = torch.relu(self.first(x))
            return self.out(torch.relu(self.hidden(h))) + h.sum(1, keepdim=True)

    with pytest.raises(ValueError, match="torch.fx.*tried: .*registration order"):
        ReLUNetwork.from_module(Residual())


# ---------------------------------------------------------------------------
# Optional Dask
# ---------------------------------------------------------------------------
def test_scheduler_without_distributed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingOptionalDependency, match=r"pip install 'manifold_ext\[distributed\]'"):
        enumerate_regions(small_net(), box=(-1, 1), scheduler="tcp://127.0.0.1:1", progress=False)


def test_scheduler_and_executor_are_exclusive():
    with pytest.raises(ValueError, match="either executor= or scheduler="):
        enumerate_regions(small_net(), box=(-1, 1), executor=None, scheduler="tcp://127.0.0.1:1", progress=False)


def test_sample_patterns_checks_its_arguments():
    net = small_net()
    with pytest.raises(ValueError, match="needs a box"):
        sample_patterns(net, None, 10)
    with pytest.raises(TypeError, match="n must be an integer"):
        sample_patterns(net, (-1, 1), 10.5)


def test_bisection_checks_its_arguments():
    from manifold_ext.relu_geometry import bisect_to_neighbour

    net = small_net()
    with pytest.raises(ValueError, match="must be finite"):
        bisect_to_neighbour(net, [0.0, np.nan], [1.0, 1.0])
    with pytest.raises(ValueError, match="min_interval must be > 0"):
        bisect_to_neighbour(net, [0.0, 0.0], [1.0, 1.0], min_interval=0)
    with pytest.raises(ValueError, match=r"dimension 2, got shapes \(3,\)"):
        bisect_to_neighbour(net, [0.0, 0.0, 0.0], [1.0, 1.0])


def test_every_geometry_module_imports_without_the_optional_solvers():
    """Lean core (issue 16): the LP back-ends (``lp.highs``, ``lp.cvxpy_reference``) import highspy and
    cvxpy only inside the functions that solve, so every module of the package imports without them.
    Uses the optional-import suite's interpreter that hides the optional packages."""
    run_hidden = pytest.importorskip("test_optional_imports").run_hidden
    done = run_hidden("""
        import importlib, pkgutil, sys
        import manifold_ext.relu_geometry as package
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
        print("LOADED=" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED=\n" in done.stdout + "\n", done.stdout
