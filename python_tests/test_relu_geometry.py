"""The polyhedral toolbox (manifold_ext.relu_geometry) against sampling and the plain LP definition."""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import numpy as np
import pytest
import torch
from torch import nn

from manifold_ext.relu_geometry import (
    Box,
    HammingNearestNeighbour,
    ReLUNetwork,
    active_bits,
    active_set,
    bisect_to_neighbour,
    chebyshev_centre,
    enumerate_regions,
    flip_units,
    is_bounded,
    neighbours,
    sample_patterns,
)


def random_network(widths, d=2, seed=0, n_out=1):
    torch.manual_seed(seed)
    layers = []
    fan_in = d
    for w in widths:
        layers += [nn.Linear(fan_in, w), nn.ReLU()]
        fan_in = w
    layers.append(nn.Linear(fan_in, n_out))
    return nn.Sequential(*layers).double()


def issue_network() -> ReLUNetwork:
    """f(x) = [2, -4] . ReLU([[1, 1], [1, 1]] x + [1, 0]) - 1 (the issue's example)."""
    return ReLUNetwork.from_weights([[[1.0, 1.0], [1.0, 1.0]], [[2.0, -4.0]]], [[1.0, 0.0], [-1.0]])


# ---------------------------------------------------------------------------
# ReLUNetwork.from_module
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("widths", [(3,), (10, 10), (4, 7, 5, 3)], ids=str)
def test_from_sequential_any_depth(widths):
    module = random_network(widths, d=3, n_out=2)
    net = ReLUNetwork.from_module(module)
    assert net.hidden_sizes == list(widths) and net.input_dim == 3 and net.output_dim == 2
    x = torch.randn(20, 3, dtype=torch.float64)
    torch.testing.assert_close(net(x), module(x))


def test_from_sequential_nested_identity_dropout_and_linear_chain():
    module = (
        nn.Sequential(
            nn.Sequential(nn.Linear(2, 5), nn.ReLU()),
            nn.Dropout(0.0),
            nn.Identity(),
            nn.Linear(5, 4),
            nn.Linear(4, 6),
            nn.ReLU(),
            nn.Linear(6, 1),
        )
        .double()
        .eval()
    )
    net = ReLUNetwork.from_module(module)
    assert net.hidden_sizes == [5, 6]  # Linear(5,4) then Linear(4,6) compose into one layer
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(net(x), module(x))


def test_from_sequential_ending_in_relu_has_identity_output():
    module = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.ReLU())
    net = ReLUNetwork.from_module(module)
    assert net.hidden_sizes == [3, 4] and net.output_dim == 4
    x = torch.randn(10, 2)
    torch.testing.assert_close(net(x).float(), module(x), rtol=1e-5, atol=1e-6)


class AttributeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 6)
        self.fc2 = nn.Linear(6, 5)
        self.out = nn.Linear(5, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.out(self.act(self.fc2(torch.relu(self.fc1(x)))))


class ScrambledNet(AttributeNet):
    def forward(self, x):  # not the registration order: cannot be read as an MLP
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x))))) + self.fc1.weight.sum()


def test_from_module_with_top_level_attributes():
    module = AttributeNet()
    net = ReLUNetwork.from_module(module)
    assert net.hidden_sizes == [6, 5]
    x = torch.randn(10, 2)
    torch.testing.assert_close(net(x).float(), module(x), rtol=1e-5, atol=1e-6)


def test_from_module_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="neither its Linear children"):
        ReLUNetwork.from_module(ScrambledNet())
    with pytest.raises(TypeError, match="unsupported layer Tanh"):
        ReLUNetwork.from_module(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="a ReLU must follow a Linear"):
        ReLUNetwork.from_module(nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
    with pytest.raises(TypeError, match="Conv1d"):

        class WithConv(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(1, 1, 1)
                self.fc = nn.Linear(2, 1)

        ReLUNetwork.from_module(WithConv())
    with pytest.raises(ValueError, match="layer 1 takes 4 inputs but the previous layer has 3"):
        ReLUNetwork.from_weights([np.ones((3, 2)), np.ones((1, 4))], [np.ones(3), np.ones(1)])
    net = issue_network()
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        net.patterns(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NaN or infinity"):
        net.patterns(torch.tensor([[float("nan"), 0.0]]))


# ---------------------------------------------------------------------------
# The issue's network: exactly three regions with known affine maps
# ---------------------------------------------------------------------------
def test_issue_network_has_three_regions_with_the_right_maps():
    net = issue_network()
    result = enumerate_regions(net, progress=False)
    assert len(result) == 3 and result.empty_candidates == 0 and not result.failures
    maps = sorted((r.W_hat[0, 0], r.W_hat[0, 1], r.b_hat[0]) for r in result.regions(net))
    assert maps == [(-2.0, -2.0, 1.0), (0.0, 0.0, -1.0), (2.0, 2.0, 1.0)]
    # All three are unbounded strips/half-planes; the pattern (0, 1) (x+y > 0 but x+y+1 <= 0) is empty.
    assert result.num_bounded == 0 and result.num_unbounded == 3
    assert not np.any(result.index_of(np.array([[0b10]])) >= 0)
    in_box = enumerate_regions(net, box=(-0.2, 0.2), progress=False)
    assert len(in_box) == 2  # the line x + y = -1 misses this box


def test_empty_pattern_region_reports_no_interior():
    net = issue_network()
    region = net.region(np.array([0b10], dtype=np.int64))  # unit 1 on, unit 0 off: impossible
    result = active_set(region)
    assert result.empty and result.groups == []
    centre, radius = chebyshev_centre(region)
    assert radius < 0  # no ball fits: the region is empty


# ---------------------------------------------------------------------------
# Enumeration vs sampling
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("widths,d,seed", [((6,), 2, 1), ((5, 5), 2, 2), ((4, 4, 4), 2, 3), ((6, 5), 3, 4)], ids=str)
def test_enumeration_never_misses_a_sampled_region(widths, d, seed):
    net = ReLUNetwork.from_module(random_network(widths, d, seed))
    box = (-1.0, 1.0)
    result = enumerate_regions(net, box=box, progress=False)
    assert not result.failures and not result.truncated
    sampled = sample_patterns(net, box, 200_000 if d == 2 else 150_000, seed=seed)
    assert np.all(result.index_of(sampled) >= 0), "a sampled region was not enumerated"
    # Every enumerated region is real: its interior point lies in the box and has its pattern.
    assert np.all(Box(np.full(d, -1.0), np.ones(d)).contains(result.interior_points, tol=1e-12))
    assert np.array_equal(net.patterns(result.interior_points).numpy(), result.patterns)
    assert len(np.unique(result.patterns, axis=0)) == len(result)
    # Sampling finds all but slivers: any region it missed has a small inscribed ball.
    missed = np.ones(len(result), dtype=bool)
    missed[result.index_of(sampled)] = False
    assert np.all(result.radii[missed] < 0.02), result.radii[missed]


def test_enumeration_over_the_plane_and_its_unbounded_regions():
    net = ReLUNetwork.from_module(random_network((5, 5), 2, seed=5))
    everywhere = enumerate_regions(net, progress=False)
    in_box = enumerate_regions(net, box=(-1, 1), progress=False)
    assert len(everywhere) >= len(in_box)
    assert np.all(everywhere.index_of(in_box.patterns) >= 0)
    assert everywhere.num_bounded + everywhere.num_unbounded == len(everywhere)
    # The unbounded regions are those a huge circle passes through, in order around it.
    angles = np.linspace(0, 2 * np.pi, 200_001)[:-1]
    circle = 1e5 * np.stack([np.cos(angles), np.sin(angles)], 1)
    on_circle = net.patterns(circle).numpy()
    distinct = np.unique(on_circle, axis=0)
    unbounded = everywhere.patterns[~everywhere.bounded]
    assert {p.tobytes() for p in distinct} == {p.tobytes() for p in unbounded}
    # Bounded regions are bounded: the LP agrees with the facets.
    for region, bounded in zip(everywhere.regions(net)[:20], everywhere.bounded[:20]):
        assert is_bounded(region) == bounded


def test_duplicated_units_share_a_facet_and_are_flipped_together():
    # Units 0 and 2 are identical: Eq. 6 alone would call both redundant and lose their facet.
    w1 = np.array([[1.0, 0.5], [-0.3, 1.0], [1.0, 0.5], [0.7, -1.0]])
    b1 = np.array([0.1, -0.2, 0.1, 0.3])
    net = ReLUNetwork.from_weights([w1, np.ones((1, 4))], [b1, np.zeros(1)])
    result = enumerate_regions(net, box=(-2, 2), progress=False)
    sampled = sample_patterns(net, (-2, 2), 100_000)
    assert {p.tobytes() for p in sampled} == result.keys()
    region = net.region(x=np.array([1.0, 1.0]))
    groups = [sorted(g.tolist()) for g in active_set(region, (-2, 2)).groups]
    assert [0, 2] in groups
    for method in ("highs", "cvxpy"):
        assert 0 in active_bits(region, (-2, 2), method=method)


def test_executors_give_the_serial_answer():
    net = ReLUNetwork.from_module(random_network((6, 6), 2, seed=6))
    serial = enumerate_regions(net, box=(-1, 1), progress=False)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        threaded = enumerate_regions(net, box=(-1, 1), executor=pool, batch_size=8, progress=False)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        processes = enumerate_regions(net, box=(-1, 1), executor=pool, batch_size=16, progress=False)
    assert np.array_equal(serial.patterns, threaded.patterns)
    assert np.array_equal(serial.patterns, processes.patterns)
    np.testing.assert_allclose(serial.radii, processes.radii)
    assert threaded.used_executor and processes.used_executor


def test_default_moves_long_enumerations_to_a_local_process_pool():
    net = ReLUNetwork.from_module(random_network((6, 6), 2, seed=6))
    inline = enumerate_regions(net, box=(-1, 1), executor=None, batch_size=2, progress=False)
    quick = enumerate_regions(net, box=(-1, 1), batch_size=2, progress=False)  # "auto": done before 2 s
    pooled = enumerate_regions(net, box=(-1, 1), pool_after=0.0, workers=2, batch_size=2, progress=False)
    assert not inline.used_executor and not quick.used_executor
    assert pooled.used_executor  # spawned workers, single-threaded each
    for result in (quick, pooled):
        assert np.array_equal(inline.patterns, result.patterns)
        np.testing.assert_allclose(inline.radii, result.radii)


def test_bad_executor_arguments_are_refused():
    net = ReLUNetwork.from_module(random_network((4,), 2, seed=0))
    with pytest.raises(ValueError, match="executor must be a concurrent.futures.Executor, None or one of"):
        enumerate_regions(net, box=(-1, 1), executor="threads", progress=False)
    with pytest.raises(ValueError, match="pool_after must be >= 0 seconds"):
        enumerate_regions(net, box=(-1, 1), pool_after=-1, progress=False)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        enumerate_regions(net, box=(-1, 1), workers=0, progress=False)


def test_max_regions_truncates():
    net = ReLUNetwork.from_module(random_network((6, 6), 2, seed=6))
    result = enumerate_regions(net, box=(-1, 1), max_regions=5, progress=False)
    assert len(result) == 5 and result.truncated


# ---------------------------------------------------------------------------
# Active bits: the fast path equals the plain LP definition
# ---------------------------------------------------------------------------
def _random_regions(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    configs = [((10, 10), 2), ((8, 6), 3), ((12,), 4), ((5, 5, 5), 2)]
    for k in range(count):
        widths, d = configs[k % len(configs)]
        net = ReLUNetwork.from_module(random_network(widths, d, seed=100 + k))
        x = rng.uniform(-1, 1, size=d)
        out.append((net.region(x=x), (-1.5, 1.5) if k % 2 else None))
    return out


def test_fast_active_bits_agree_with_the_cvxpy_definition():
    for region, box in _random_regions(24, seed=0):
        fast = active_set(region, box)
        reference = active_set(region, box, method="cvxpy")
        assert not fast.empty and not reference.empty
        assert np.array_equal(fast.bits, reference.bits), (fast.bits, reference.bits)
        assert fast.n_lps <= reference.n_lps


def test_active_bits_match_brute_force_witnesses_in_2d():
    # Independent check: a unit is a facet iff points just outside it, violating only that
    # inequality, exist; found by densely sampling a ring around the region inside the box.
    net = ReLUNetwork.from_module(random_network((10, 10), 2, seed=7))
    box = Box(np.full(2, -1.0), np.ones(2))
    pts = box.sample(150_000, np.random.default_rng(0))
    for region in net.regions(torch.from_numpy(np.unique(net.patterns(pts[:2000]).numpy(), axis=0)[:8])):
        violated = pts @ region.A.T > region.c + 1e-12  # [N, H]
        only_one = violated.sum(1) == 1
        witnessed = np.unique(np.argmax(violated[only_one], axis=1))
        assert set(witnessed.tolist()) <= set(active_bits(region, box).tolist())


def test_neighbours_are_across_each_facet():
    net = ReLUNetwork.from_module(random_network((6, 6), 2, seed=8))
    region = net.region(x=np.zeros(2))
    result = active_set(region)
    nbrs = neighbours(region)
    assert len(nbrs) == result.num_facets
    everywhere = enumerate_regions(net, progress=False)
    assert np.all(everywhere.index_of(nbrs) >= 0)
    for p, group in zip(nbrs, result.groups):
        assert np.array_equal(p, flip_units(region.pattern, group))


def test_bad_arguments():
    net = issue_network()
    region = net.region(x=np.zeros(2))
    with pytest.raises(ValueError, match="lo < hi"):
        active_set(region, box=(1, -1))
    with pytest.raises(ValueError, match="method must be"):
        active_set(region, method="simplex")
    with pytest.raises(ValueError, match="tol must be > 0"):
        active_set(region, tol=0)
    with pytest.raises(ValueError, match="start points must lie inside the box"):
        enumerate_regions(net, box=(-1, 1), start=[5.0, 5.0], progress=False)
    with pytest.raises(ValueError, match="A \\[H, d\\] and c \\[H\\]"):
        active_set((np.ones((3, 2)), np.ones(2)))


# ---------------------------------------------------------------------------
# Bisection (Algorithm 2)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("widths,d", [((10, 10), 2), ((20, 20, 20), 5)], ids=str)
def test_bisection_steps_flip_exactly_one_bit(widths, d):
    net = ReLUNetwork.from_module(random_network(widths, d, seed=9))
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, d), rng.uniform(-1, 1, d)
    path = bisect_to_neighbour(net, x, y)
    assert path.ts[0] == 0 and path.ts[-1] == 1 and np.all(np.diff(path.ts) > 0)
    assert np.array_equal(net.patterns(path.points).numpy(), path.patterns)
    bits = net.bits(path.points).numpy()
    steps = (bits[1:] != bits[:-1]).sum(1)
    assert path.degenerate == [] and np.all(steps == 1)
    assert np.array_equal(np.argmax(bits[1:] != bits[:-1], axis=1), path.flipped_units)
    # As many regions as a fine walk along the segment passes through.
    t = np.linspace(0, 1, 200_001)
    walk = net.patterns(x + t[:, None] * (y - x)).numpy()
    changes = np.any(walk[1:] != walk[:-1], axis=1).sum()
    assert path.num_regions == changes + 1
    assert np.all((path.crossings > path.ts[:-1]) & (path.crossings < path.ts[1:]))


def test_bisection_within_one_region():
    net = issue_network()
    path = bisect_to_neighbour(net, [1.0, 1.0], [2.0, 0.5])
    assert path.num_regions == 1 and len(path.crossings) == 0


# ---------------------------------------------------------------------------
# Chebyshev centre (Eq. 7-8)
# ---------------------------------------------------------------------------
def test_chebyshev_ball_lies_inside_its_region():
    net = ReLUNetwork.from_module(random_network((10, 10), 2, seed=10))
    rng = np.random.default_rng(2)
    for x in rng.uniform(-1, 1, size=(10, 2)):
        region = net.region(x=x)
        centre, radius = chebyshev_centre(region, box=(-1, 1))
        centre_h, radius_h = chebyshev_centre(region, box=(-1, 1), method="highs")
        assert radius > 0 and abs(radius - radius_h) < 1e-7
        directions = rng.standard_normal((500, 2))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        ball = centre + 0.999 * radius * directions * rng.uniform(0, 1, (500, 1)) ** 0.5
        assert np.all(region.contains(ball, tol=1e-9))
        assert np.all(Box(-np.ones(2), np.ones(2)).contains(ball))
        # The ball touches the boundary: a slightly larger one does not fit.
        slack = region.c - region.A @ centre
        touching = np.min(np.concatenate([slack / np.linalg.norm(region.A, axis=1), 1 - np.abs(centre)]))
        assert abs(touching - radius) < 1e-6


def test_chebyshev_of_unbounded_region_without_box_is_infinite():
    net = issue_network()
    region = net.region(x=np.array([5.0, 5.0]))  # x + y > 0: a half-plane
    centre, radius = chebyshev_centre(region)
    assert radius == float("inf")
    _, radius_box = chebyshev_centre(region, box=(0, 1))
    assert abs(radius_box - 0.5) < 1e-7


# ---------------------------------------------------------------------------
# Hamming nearest neighbour
# ---------------------------------------------------------------------------
def test_hamming_nearest_neighbour_matches_brute_force():
    net = ReLUNetwork.from_module(random_network((32, 32), 4, seed=11))
    rng = np.random.default_rng(3)
    X_train, X_test = rng.normal(size=(300, 4)), rng.normal(size=(50, 4))
    y_train = (X_train[:, 0] > 0).astype(int) + (X_train[:, 1] > 0).astype(int)
    bits_train, bits_test = net.bits(X_train).numpy(), net.bits(X_test).numpy()
    dist = (bits_test[:, None, :] != bits_train[None, :, :]).sum(-1)
    for k in (1, 3, 4):
        clf = HammingNearestNeighbour(k=k, network=net).fit(X_train, y_train)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        d, idx = clf.kneighbors(X_test)
        assert np.array_equal(idx, order)
        labels = y_train[order]
        expected = []
        for row in labels:
            counts = np.bincount(row, minlength=3)
            tied = np.flatnonzero(counts == counts.max())
            expected.append(next(lab for lab in row if lab in tied))
        assert np.array_equal(clf.predict(X_test), expected)
    # Packed patterns directly, without a network.
    clf = HammingNearestNeighbour(k=1).fit(net.patterns(X_train), y_train)
    assert clf.score(net.patterns(X_train), y_train) == 1.0 or len(np.unique(bits_train, axis=0)) < 300
    with pytest.raises(ValueError, match="packed patterns int64"):
        clf.predict(X_test)
