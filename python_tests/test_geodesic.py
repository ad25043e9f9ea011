"""Probability-weighted geodesics (manifold_ext.analysis.geodesic) on closed-form densities."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_ext.analysis import (
    diffusion_score_fn,
    gaussian_mixture_log_prob,
    graph_path,
    path_lengths,
    resample_path,
    score_from_log_prob,
    straight_line,
    weighted_geodesic,
)
from manifold_ext.diffusion import PointEpsNet, linear_schedule
from manifold_ext.flows import FlowSequential, GlowStep, StandardNormalFlow

F64 = torch.float64


# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def two_blobs(dtype=F64):
    """Two Gaussian blobs at (+-1.5, 0), std 0.7, and ends above them: the straight line y = 0.8
    runs through thinner density than a path that dips towards the blobs."""
    log_prob = gaussian_mixture_log_prob(torch.tensor([[-1.5, 0.0], [1.5, 0.0]], dtype=dtype), 0.7)
    return log_prob, torch.tensor([-1.5, 0.8], dtype=dtype), torch.tensor([1.5, 0.8], dtype=dtype)


def test_gaussian_mixture_log_prob_matches_torch_distributions():
    means = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-1.0, 0.5]], dtype=F64)
    stds = torch.tensor([0.5, 1.0, 0.3], dtype=F64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights),
        torch.distributions.Independent(torch.distributions.Normal(means, stds[:, None].expand(3, 2)), 1),
    )
    x = torch.randn(7, 2, dtype=F64)
    torch.testing.assert_close(gaussian_mixture_log_prob(means, stds, weights)(x), mixture.log_prob(x))


def test_straight_line_lengths_against_quadrature():
    log_prob, a, b = two_blobs()
    measured = path_lengths(straight_line(a, b, 8), log_prob, subdivisions=64)
    t = torch.linspace(0, 1, 20001, dtype=F64)[:, None]
    w = torch.exp(-log_prob(a + t * (b - a)))
    reference = torch.trapezoid(w[:, 0] if w.dim() > 1 else w, dx=1 / 20000).item() * 3.0
    assert measured.euclidean_length == pytest.approx(3.0)
    assert measured.weighted_length == pytest.approx(reference, rel=1e-6)
    assert measured.log_weighted_length == pytest.approx(math.log(reference), rel=1e-6)
    assert measured.log_p.shape == (9,)


@pytest.mark.parametrize("method", ["relax", "shoot"])
def test_geodesic_is_shorter_and_passes_through_higher_density(method):
    log_prob, a, b = two_blobs()
    line = path_lengths(straight_line(a, b, 64), log_prob)
    geodesic = weighted_geodesic(log_prob, a, b, method=method, nodes=48, steps=400)
    assert geodesic.converged
    assert geodesic.path.shape == (49, 2)
    torch.testing.assert_close(geodesic.path[0], a)
    torch.testing.assert_close(geodesic.path[-1], b, atol=1e-6, rtol=0)
    # The straight line is 81.6; the geodesic 50.0 (it dips towards the blobs).
    assert geodesic.weighted_length < 0.7 * line.weighted_length
    assert geodesic.euclidean_length > line.euclidean_length
    assert geodesic.mean_log_p > line.mean_log_p + 0.4
    assert geodesic.min_log_p > line.min_log_p
    assert geodesic.path[:, 1].min() < 0.2  # it dips from y = 0.8 towards the blobs' centres


def test_relaxation_and_shooting_agree():
    log_prob, a, b = two_blobs()
    relaxed = weighted_geodesic(log_prob, a, b, method="relax", nodes=48, steps=400)
    shot = weighted_geodesic(log_prob, a, b, method="shoot", nodes=48)
    assert shot.endpoint_error < 1e-6
    assert relaxed.weighted_length == pytest.approx(shot.weighted_length, rel=2e-3)
    gap = (resample_path(relaxed.path, 48) - resample_path(shot.path, 48)).norm(dim=1).max()
    assert gap < 0.01
    # The shot satisfies the Euler-Lagrange equation exactly (up to RK4), and the symmetry of the problem.
    torch.testing.assert_close(shot.path[24, 0], torch.tensor(0.0, dtype=F64), atol=1e-6, rtol=0)


def test_shooting_solves_the_euler_lagrange_equation():
    """Finite differences of the shot path: gamma'' = (I - gamma' gamma'^T) v, v = -grad log p."""
    log_prob, a, b = two_blobs()
    shot = weighted_geodesic(log_prob, a, b, method="shoot", nodes=400)
    path = shot.path
    h = (path[1:] - path[:-1]).norm(dim=1).mean()
    velocity = (path[2:] - path[:-2]) / (2 * h)
    accel = (path[2:] - 2 * path[1:-1] + path[:-2]) / h**2
    v = -score_from_log_prob(log_prob)(path[1:-1])
    u = velocity / velocity.norm(dim=1, keepdim=True)
    expected = v - (v * u).sum(1, keepdim=True) * u
    torch.testing.assert_close(accel[5:-5], expected[5:-5], atol=2e-3, rtol=1e-3)


def test_detour_around_a_gap():
    """Three blobs on an arc: the chord between the outer ones crosses an empty gap, the geodesic follows the arc."""
    angles = torch.tensor([0.0, math.pi / 2, math.pi], dtype=F64)
    means = torch.stack([2 * torch.cos(angles), 2 * torch.sin(angles)], 1)
    log_prob = gaussian_mixture_log_prob(means, 0.6)
    a, b = means[0], means[2]
    line = path_lengths(straight_line(a, b, 64), log_prob)
    geodesic = weighted_geodesic(log_prob, a, b, nodes=48, steps=600)
    assert geodesic.weighted_length < 0.3 * line.weighted_length  # 114 vs 461
    assert geodesic.path[:, 1].max() > 1.5  # passes by the top blob
    assert geodesic.min_log_p > line.min_log_p + 2.0


def test_score_only_gives_lengths_relative_to_the_start():
    log_prob, a, b = two_blobs()
    score = score_from_log_prob(log_prob)
    line = straight_line(a, b, 32)
    absolute = path_lengths(line, log_prob)
    relative = path_lengths(line, score_fn=score)
    assert relative.relative and not absolute.relative
    p_start = log_prob(a[None]).exp().item()
    assert relative.weighted_length == pytest.approx(absolute.weighted_length * p_start, rel=1e-4)
    torch.testing.assert_close(relative.log_p, absolute.log_p - absolute.log_p[0], atol=1e-4, rtol=0)
    from_score = weighted_geodesic(None, a, b, score_fn=score, nodes=32, steps=400)
    from_log_p = weighted_geodesic(log_prob, a, b, nodes=32, steps=400)
    assert from_score.relative
    assert from_score.weighted_length / p_start == pytest.approx(from_log_p.weighted_length, rel=5e-3)
    shot = weighted_geodesic(None, a, b, method="shoot", score_fn=score, nodes=32)
    assert shot.endpoint_error < 1e-6


def test_float32_and_image_shaped_points():
    log_prob, a, b = two_blobs(torch.float32)
    for method in ("relax", "shoot"):
        result = weighted_geodesic(log_prob, a, b, method=method, nodes=24, steps=300)
        assert result.path.dtype == torch.float32
        assert result.weighted_length < 60.0
    # Points of any shape: a Gaussian on [1, 3, 3] "images".
    mean = torch.zeros(1, 3, 3, dtype=F64)

    def image_log_prob(x):
        return -0.5 * (x - mean).flatten(1).square().sum(1)

    start, end = torch.full((1, 3, 3), 1.0, dtype=F64), torch.full((1, 3, 3), -1.0, dtype=F64)
    start[0, 0, 0] = 2.0
    result = weighted_geodesic(image_log_prob, start, end, nodes=16, steps=300)
    assert result.path.shape == (17, 1, 3, 3)
    assert result.weighted_length < path_lengths(straight_line(start, end, 16), image_log_prob).weighted_length


def test_flow_and_diffusion_densities_plug_in():
    torch.manual_seed(0)
    flow = StandardNormalFlow(FlowSequential(*[GlowStep(2, 16, spatial_dims=0) for _ in range(2)])).double()
    with torch.no_grad():
        flow.log_prob(torch.randn(64, 2, dtype=F64))  # ActNorm initialisation
    a, b = torch.tensor([-1.0, 0.5], dtype=F64), torch.tensor([1.0, 0.5], dtype=F64)
    line = path_lengths(straight_line(a, b, 16), flow.log_prob)
    result = weighted_geodesic(flow.log_prob, a, b, nodes=16, steps=100)
    assert math.isfinite(result.weighted_length) and result.weighted_length <= line.weighted_length
    # An untrained eps-net predicts 0 (zero-initialised output): score 0, uniform density,
    # so the geodesic is the straight line and its relative weighted length the Euclidean one.
    model = PointEpsNet(dim=2, hidden=16, layers=2, T=10)
    score = diffusion_score_fn(model, linear_schedule(10), t=1)
    flat = weighted_geodesic(None, a.float(), b.float(), score_fn=score, nodes=8, steps=20)
    assert flat.weighted_length == pytest.approx(2.0, rel=1e-5)
    torch.testing.assert_close(flat.path, straight_line(a.float(), b.float(), 8), atol=1e-5, rtol=0)


def test_init_path_is_used():
    log_prob, a, b = two_blobs()
    detour = torch.tensor([[-1.5, 0.8], [0.0, -2.0], [1.5, 0.8]], dtype=F64)
    one_step = weighted_geodesic(log_prob, a, b, nodes=16, steps=1, init_path=detour)
    assert one_step.path[8, 1] < -1.5  # started from the detour, not the straight line


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="newton"), ValueError, "unknown method 'newton'"),
        (dict(log_prob_fn=None), ValueError, "give log_prob_fn"),
        (dict(log_prob_fn=3.0), TypeError, "log_prob_fn must be callable"),
        (dict(x_end=torch.zeros(3, dtype=F64)), ValueError, "same shape"),
        (dict(x_end=torch.tensor([-1.5, 0.8], dtype=F64)), ValueError, "same point"),
        (dict(x_end=torch.tensor([1.5, 0.8])), ValueError, "same dtype"),
        (dict(x_start=torch.tensor([float("nan"), 0.0], dtype=F64)), ValueError, "finite"),
        (dict(x_start=[0.0, 1.0]), TypeError, "must be tensors"),
        (dict(power=0.0), ValueError, "power must be a positive number"),
        (dict(nodes=1), ValueError, "nodes must be an integer >= 2"),
        (dict(steps=0), ValueError, "steps must be an integer >= 1"),
        (dict(optimizer="newton"), ValueError, "unknown optimizer"),
        (dict(init_path=torch.zeros(5, 3, dtype=F64)), ValueError, "init_path must be"),
        (dict(log_prob_fn=lambda x: x), ValueError, "one value per point"),
        (
            dict(log_prob_fn=lambda x: torch.full((x.shape[0],), float("nan"), dtype=x.dtype)),
            FloatingPointError,
            "weighted length",
        ),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, error, match):
    log_prob, a, b = two_blobs()
    args = dict(log_prob_fn=log_prob, x_start=a, x_end=b, nodes=8, steps=5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        weighted_geodesic(**args)


def test_score_fn_shape_and_diffusion_time_are_checked():
    _, a, b = two_blobs()
    with pytest.raises(ValueError, match="score_fn must return the input's shape"):
        weighted_geodesic(None, a, b, score_fn=lambda x: x[:, :1], nodes=4, steps=2)
    with pytest.raises(ValueError, match="t must be in 1..T"):
        diffusion_score_fn(PointEpsNet(dim=2, hidden=8, layers=2, T=10), linear_schedule(10), t=0)
    with pytest.raises(ValueError, match="means must be"):
        gaussian_mixture_log_prob(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="at least 2 points"):
        path_lengths(a[None], gaussian_mixture_log_prob(torch.zeros(1, 2), 1.0))


def test_graph_path_follows_an_arc_of_samples():
    """Samples on a half circle: the graph path from one end to the other runs along the arc."""
    angles = torch.linspace(0, math.pi, 400, dtype=F64)
    points = torch.stack([torch.cos(angles), torch.sin(angles)], 1) + 0.02 * torch.randn(400, 2, dtype=F64)
    a, b = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([-1.0, 0.0], dtype=F64)
    path = graph_path(points, a, b, k=8)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    assert path.norm(dim=1).min() > 0.85  # never cuts across the empty middle
    # With a closed-form density the same call uses it instead of the kernel estimate.
    log_prob = gaussian_mixture_log_prob(points, 0.05)
    torch.testing.assert_close(graph_path(points, a, b, log_prob, k=8).norm(dim=1).min() > 0.85, torch.tensor(True))
    with pytest.raises(ValueError, match="points must be"):
        graph_path(points[:, :1], a, b)
    with pytest.raises(ValueError, match="k must be"):
        graph_path(points, a, b, k=0)
