"""Probability-weighted geodesics (slides ``002_…``, "Probability-based geodesics on the data manifold").

The weighted length of a path gamma from x = gamma(0) to y = gamma(1) is

    d_w(x, y) = int_0^1 w(gamma(t)) |gamma'(t)| dt,    w(x) = 1 / p(x)   (here w = p^-power, power = 1 by default)

so a path is short where it runs through likely points. Its minimisers satisfy
the Euler-Lagrange equation, in arc length s (|gamma'| = 1),

    gamma'' = (I - gamma' gamma'^T) v,    v = grad log w = -power * grad log p,

(acceleration perpendicular to the velocity). Two solvers:

* ``method="relax"``: the path is discretised into ``nodes`` segments with fixed
  ends; the discretised weighted length (Simpson's rule on every segment, in
  log space: ``log d_w = logsumexp_i(log |Delta_i| + log wbar_i)``) is minimised
  over the interior nodes by a torch optimiser, and the nodes are redistributed
  to equal Euclidean spacing along the current polyline every ``reparam_every``
  steps (the string method of E, Ren and Vanden-Eijnden, 2002), which removes
  the parametrisation freedom without changing the objective.
* ``method="shoot"``: the Euler-Lagrange ODE is integrated from ``x_start`` by
  classical RK4 (the fused ``rk4_update`` op) over the state (x, u = gamma');
  the unknown initial velocity q = L u_0 (direction and length) is found by
  damped Newton iterations on the end-point residual gamma(L) - x_end, with a
  finite-difference Jacobian whose D + 1 shots run as one batch. Best in low
  dimension (the Jacobian costs D + 1 shots); the ODE is unstable along density
  ridges (v pushes the path away from higher density, as light bends towards a
  higher refractive index), so start it from a relaxed path for long paths.

Densities: ``log_prob_fn(x [B, *shape]) -> [B]`` (a flow's ``log_prob``, a
closed form) must be differentiable; or give ``score_fn(x) -> grad log p``
only (a diffusion model: :func:`diffusion_score_fn`). With a score only, p is
known up to a constant: log p along the path is the line integral of the score
from ``x_start`` (trapezoidal rule), so the reported weighted length is
``d_w * p(x_start)^power`` (``relative=True`` in the result); comparisons between
paths with the same ends are unaffected. A learned score need not be a
gradient field; the line integral then depends slightly on the path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from manifold_ext._optional import require
from manifold_ext.ops import rk4_update

LogProbFn = Callable[[torch.Tensor], torch.Tensor]
ScoreFn = Callable[[torch.Tensor], torch.Tensor]

METHODS = ("relax", "shoot")


@dataclasses.dataclass
class GeodesicResult:
    """A path and its lengths.

    Attributes:
        path: ``[nodes + 1, *shape]`` points from ``x_start`` to ``x_end``.
        weighted_length: d_w of the polyline (Simpson's rule on ``subdivisions``
            sub-segments per segment); ``inf`` if it overflows float64 (see ``log_weighted_length``).
        log_weighted_length: log d_w (finite even where d_w overflows, e.g. images).
        euclidean_length: sum of the segment lengths.
        log_p: ``[nodes + 1]`` log p at the nodes (relative to ``log p(x_start)`` when ``relative``).
        relative: True when only a score was given: weighted lengths are d_w * p(x_start)^power.
        method: ``"relax"``, ``"shoot"`` or ``"straight"``.
        converged: the solver met its tolerance.
        iterations: optimiser steps (relax) or Newton iterations (shoot).
        history: the objective per iteration (log d_w for relax, |residual| for shoot).
        endpoint_error: |gamma(L) - x_end| of the final shot (0 for relax).
    """

    path: torch.Tensor
    weighted_length: float
    log_weighted_length: float
    euclidean_length: float
    log_p: torch.Tensor
    relative: bool
    method: str
    converged: bool = True
    iterations: int = 0
    history: list[float] = dataclasses.field(default_factory=list)
    endpoint_error: float = 0.0

    @property
    def mean_log_p(self) -> float:
        """Mean of log p over the nodes (equally spaced in Euclidean arc length after relaxation)."""
        return float(self.log_p.mean())

    @property
    def min_log_p(self) -> float:
        return float(self.log_p.min())


# ---------------------------------------------------------------------------
# Densities
# ---------------------------------------------------------------------------
def gaussian_mixture_log_prob(
    means: torch.Tensor, stds: torch.Tensor | float, weights: torch.Tensor | None = None
) -> LogProbFn:
    """Closed-form log density of an isotropic Gaussian mixture (tests, docs).

    ``means`` ``[K, D]``; ``stds`` a float or ``[K]``; ``weights`` ``[K]`` (default equal).
    The returned function maps ``[B, D]`` to ``[B]`` and is differentiable.
    """
    means = torch.as_tensor(means)
    if means.dim() != 2:
        raise ValueError(f"gaussian_mixture_log_prob: means must be [K, D], got shape {list(means.shape)}")
    k, d = means.shape
    stds = torch.as_tensor(stds, dtype=means.dtype).expand(k).clone()
    if (stds <= 0).any():
        raise ValueError("gaussian_mixture_log_prob: every std must be > 0")
    weights = (
        torch.full((k,), 1.0 / k, dtype=means.dtype) if weights is None else torch.as_tensor(weights, dtype=means.dtype)
    )
    if weights.shape != (k,) or (weights <= 0).any():
        raise ValueError(f"gaussian_mixture_log_prob: weights must be [K] = [{k}] and positive")
    log_weights = torch.log(weights / weights.sum())

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        m, s, lw = means.to(x), stds.to(x), log_weights.to(x)
        sq = (x[:, None, :] - m[None]).square().sum(-1)  # [B, K]
        log_comp = -0.5 * sq / s.square() - d * torch.log(s) - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(log_comp + lw, dim=1)

    return log_prob


def diffusion_score_fn(model: torch.nn.Module, schedule, t: int = 1) -> ScoreFn:
    """grad log p_t(x) of a trained eps-model at step ``t``: ``-eps_theta(x, t) / sqrt(1 - abar_t)``.

    (Tweedie / the denoising score: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps gives
    grad log p_t(x_t) = -E[eps | x_t] / sqrt(1 - abar_t).) A small ``t`` is the data
    density slightly smoothed; larger ``t`` smooths more (and scales space by sqrt(abar_t)).
    Differentiable in ``x`` (the relaxation back-propagates through it).
    """
    from manifold_ext.diffusion.models import time_tensor

    if not 1 <= t <= schedule.T:
        raise ValueError(f"diffusion_score_fn: t must be in 1..T = 1..{schedule.T}, got {t}")
    scale = 1.0 / math.sqrt(1.0 - schedule.abar(t))

    def score(x: torch.Tensor) -> torch.Tensor:
        param = next(model.parameters())
        times = time_tensor(t, x.shape[0], x.device)  # the eps-net contract: int64 [B]
        return -model(x.to(param.dtype), times).to(x.dtype) * scale

    return score


def score_from_log_prob(log_prob_fn: LogProbFn) -> ScoreFn:
    """grad log p by autograd, differentiable itself when its input requires grad (for relaxation)."""

    def score(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # differentiable score (relaxation): keep the graph
            (grad,) = torch.autograd.grad(log_prob_fn(x).sum(), x, create_graph=True)
            return grad
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob_fn(leaf).sum(), leaf)
        return grad

    return score


# ---------------------------------------------------------------------------
# Path quantities
# ---------------------------------------------------------------------------
def _segment_log_weights(a: torch.Tensor, m: torch.Tensor, b: torch.Tensor, power: float) -> torch.Tensor:
    """log of Simpson's mean of w = p^-power over a segment from log p at its start, middle, end."""
    stacked = torch.stack([-power * a, -power * m, -power * b], 0)
    log_coeffs = torch.tensor([1.0, 4.0, 1.0], dtype=a.dtype, device=a.device).log()[:, None] - math.log(6.0)
    return torch.logsumexp(stacked + log_coeffs, 0)


class _Density:
    """log p at the nodes and segment midpoints of a path, absolute or (score only) relative."""

    def __init__(self, log_prob_fn: LogProbFn | None, score_fn: ScoreFn | None, shape: tuple[int, ...]):
        self.log_prob_fn, self.score_fn, self.shape = log_prob_fn, score_fn, shape
        self.relative = log_prob_fn is None

    def _eval(self, fn, flat: torch.Tensor) -> torch.Tensor:
        return fn(flat.reshape(flat.shape[0], *self.shape))

    def log_p(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p at the nodes [N+1], at the segment midpoints [N]) for flat nodes [N+1, D]."""
        mids = 0.5 * (nodes[1:] + nodes[:-1])
        n = nodes.shape[0]
        if not self.relative:
            values = self._eval(self.log_prob_fn, torch.cat([nodes, mids], 0))
            if values.shape != (2 * n - 1,):
                raise ValueError(f"log_prob_fn must return one value per point ([B]), got shape {list(values.shape)}")
            return values[:n], values[n:]
        scores = self._eval(self.score_fn, torch.cat([nodes, mids], 0)).reshape(2 * n - 1, -1)
        if scores.shape[1] != nodes.shape[1]:
            raise ValueError(
                f"score_fn must return the input's shape, got {scores.shape[1]} values per point for {nodes.shape[1]}"
            )
        s_node, s_mid = scores[:n], scores[n:]
        half = 0.5 * (nodes[1:] - nodes[:-1])  # node -> midpoint and midpoint -> next node
        # Line integral of the score (trapezoidal rule on each half segment): log p relative to x_start.
        rise_first = 0.5 * ((s_node[:-1] + s_mid) * half).sum(1)
        rise_second = 0.5 * ((s_mid + s_node[1:]) * half).sum(1)
        zero = torch.zeros(1, dtype=nodes.dtype, device=nodes.device)
        at_nodes = torch.cat([zero, torch.cumsum(rise_first + rise_second, 0)])
        return at_nodes, at_nodes[:-1] + rise_first


def _log_weighted_length(nodes: torch.Tensor, density: _Density, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log d_w of the polyline by Simpson per segment, log p at the nodes)."""
    at_nodes, at_mids = density.log_p(nodes)
    seg = (nodes[1:] - nodes[:-1]).norm(dim=1)
    log_w = _segment_log_weights(at_nodes[:-1], at_mids, at_nodes[1:], power)
    return torch.logsumexp(torch.log(seg.clamp_min(1e-300)) + log_w, 0), at_nodes


def _subdivide(nodes: torch.Tensor, pieces: int) -> torch.Tensor:
    if pieces == 1:
        return nodes
    frac = torch.arange(pieces, dtype=nodes.dtype, device=nodes.device)[:, None, None] / pieces  # [P, 1, 1]
    inner = nodes[:-1][None] + frac * (nodes[1:] - nodes[:-1])[None]  # [P, N, D]
    return torch.cat([inner.transpose(0, 1).reshape(-1, nodes.shape[1]), nodes[-1:]], 0)


def path_lengths(
    path: torch.Tensor,
    log_prob_fn: LogProbFn | None = None,
    *,
    score_fn: ScoreFn | None = None,
    power: float = 1.0,
    subdivisions: int = 8,
) -> GeodesicResult:
    """Weighted and Euclidean length of any polyline ``path`` ``[N+1, *shape]`` (e.g. the straight line).

    Every segment is cut into ``subdivisions`` pieces and d_w is summed by Simpson's
    rule on each, so paths of different node counts are measured alike.
    """
    if path.dim() < 2 or path.shape[0] < 2:
        raise ValueError(f"path_lengths: path must be [N + 1, *shape] with at least 2 points, got {list(path.shape)}")
    if subdivisions < 1:
        raise ValueError(f"path_lengths: subdivisions must be >= 1, got {subdivisions}")
    density = _make_density(log_prob_fn, score_fn, tuple(path.shape[1:]))
    flat = path.detach().reshape(path.shape[0], -1)
    with torch.no_grad():
        fine = _subdivide(flat, subdivisions)
        log_dw, log_p_fine = _log_weighted_length(fine, density, power)
    log_dw = float(log_dw.detach())
    return GeodesicResult(
        path=path.detach().clone(),
        weighted_length=math.exp(log_dw) if log_dw < 709 else math.inf,
        log_weighted_length=log_dw,
        euclidean_length=float((flat[1:] - flat[:-1]).norm(dim=1).sum()),
        log_p=log_p_fine.detach()[::subdivisions].clone(),
        relative=density.relative,
        method="straight",
    )


def straight_line(x_start: torch.Tensor, x_end: torch.Tensor, nodes: int = 64) -> torch.Tensor:
    """``[nodes + 1, *shape]`` equally spaced points from ``x_start`` to ``x_end``."""
    t = torch.linspace(0, 1, nodes + 1, dtype=x_start.dtype, device=x_start.device).reshape(-1, *([1] * x_start.dim()))
    return x_start[None] + t * (x_end - x_start)[None]


def resample_path(path: torch.Tensor, nodes: int) -> torch.Tensor:
    """``[nodes + 1, *shape]`` points equally spaced in Euclidean arc length along the polyline ``path``."""
    flat = path.reshape(path.shape[0], -1)
    return _equal_arclength(flat, nodes).reshape(nodes + 1, *path.shape[1:])


def _equal_arclength(flat: torch.Tensor, nodes: int) -> torch.Tensor:
    seg = (flat[1:] - flat[:-1]).norm(dim=1)
    cumulative = torch.cat([torch.zeros(1, dtype=flat.dtype, device=flat.device), torch.cumsum(seg, 0)])
    total = cumulative[-1]
    if total <= 0:
        return flat[:1].expand(nodes + 1, -1).clone()
    targets = torch.linspace(0, 1, nodes + 1, dtype=flat.dtype, device=flat.device) * total
    index = torch.searchsorted(cumulative, targets, right=True).clamp(1, flat.shape[0] - 1)
    left, right = cumulative[index - 1], cumulative[index]
    frac = ((targets - left) / (right - left).clamp_min(torch.finfo(flat.dtype).tiny))[:, None]
    out = flat[index - 1] + frac.clamp(0, 1) * (flat[index] - flat[index - 1])
    out[0], out[-1] = flat[0], flat[-1]
    return out


def graph_path(
    points: torch.Tensor,
    x_start: torch.Tensor,
    x_end: torch.Tensor,
    log_prob_fn: LogProbFn | None = None,
    *,
    k: int = 10,
    power: float = 1.0,
    bandwidth: float | None = None,
) -> torch.Tensor:
    """A global initial path: the d_w-shortest path through a k-nearest-neighbour graph of ``points``.

    Relaxation and shooting are local methods; on curved data (a spiral) the straight line
    can relax into a local minimum that crosses a gap. The graph over samples (data, or
    samples drawn from the model) plus the two ends, with every edge weighted by its own
    weighted length (Simpson's rule: log p at both ends and the middle), gives a path
    near the global minimum (Dijkstra, scipy). ``log_prob_fn`` gives log p; without it
    p is a Gaussian kernel density estimate of ``points`` (bandwidth: the mean distance of a
    point to its k-th nearest neighbour unless ``bandwidth`` is given; Scott's rule is far too
    wide for data on a thin manifold and bridges gaps), which only serves the initialisation. Returns the path
    ``[M, *shape]`` from ``x_start`` to ``x_end`` (pass it as ``init_path``).
    """
    coo_matrix = require("scipy.sparse", feature="graph_path").coo_matrix
    dijkstra = require("scipy.sparse.csgraph", feature="graph_path").dijkstra

    x_start, x_end = _check_endpoints(x_start, x_end)
    shape = tuple(x_start.shape)
    if points.dim() != len(shape) + 1 or tuple(points.shape[1:]) != shape or points.shape[0] < 1:
        raise ValueError(f"graph_path: points must be [N, {', '.join(map(str, shape))}], got {list(points.shape)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"graph_path: k must be an integer >= 1, got {k!r}")
    flat = torch.cat(
        [x_start.reshape(1, -1), x_end.reshape(1, -1), points.detach().reshape(points.shape[0], -1).to(x_start)], 0
    )
    n, d = flat.shape
    k = min(k, n - 1)
    if log_prob_fn is None:
        centres = flat[2:].to(torch.float64)
        if bandwidth is None:  # mean distance to the k-th neighbour: follows a thin manifold (Scott's rule blurs gaps)
            within = torch.cdist(centres, centres)
            within.fill_diagonal_(math.inf)
            bandwidth = (
                float(within.topk(min(k, centres.shape[0] - 1), dim=1, largest=False).values[:, -1].mean())
                if centres.shape[0] > 1
                else 1.0
            )
        h = bandwidth

        def log_prob(x: torch.Tensor) -> torch.Tensor:
            sq = torch.cdist(x.reshape(x.shape[0], -1).to(torch.float64), centres).square()
            return (
                torch.logsumexp(-0.5 * sq / h**2, 1)
                - math.log(centres.shape[0])
                - d * math.log(h)
                - 0.5 * d * math.log(2 * math.pi)
            )
    else:

        def log_prob(x: torch.Tensor) -> torch.Tensor:
            return log_prob_fn(x.reshape(x.shape[0], *shape).to(x_start)).to(torch.float64)

    with torch.no_grad():
        distances = torch.cdist(flat.to(torch.float64), flat.to(torch.float64))
        distances.fill_diagonal_(math.inf)
        neighbour_distance, neighbour = distances.topk(k, dim=1, largest=False)
        rows = torch.arange(n).repeat_interleave(k)
        cols = neighbour.reshape(-1)
        node_log_p = torch.cat([log_prob(chunk) for chunk in flat.split(4096)])
        mids = 0.5 * (flat[rows] + flat[cols])
        mid_log_p = torch.cat([log_prob(chunk) for chunk in mids.split(4096)])
        log_w = _segment_log_weights(node_log_p[rows], mid_log_p, node_log_p[cols], power)
        log_cost = torch.log(neighbour_distance.reshape(-1)) + log_w
        # One common scale (float64 keeps the ratios); never 0, which csgraph would read as no edge.
        cost = torch.exp((log_cost - log_cost.max() + 600.0).clamp_min(-700.0))
    graph = coo_matrix((cost.numpy(), (rows.numpy(), cols.numpy())), shape=(n, n)).tocsr()
    _, predecessors = dijkstra(graph, directed=False, indices=0, return_predecessors=True)
    if predecessors[1] < 0:
        raise ValueError(f"graph_path: x_end is not connected to x_start in the {k}-nearest-neighbour graph; raise k")
    order = [1]
    while order[-1] != 0:
        order.append(int(predecessors[order[-1]]))
    return flat[torch.tensor(order[::-1])].reshape(len(order), *shape)


# ---------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------
def _make_density(log_prob_fn, score_fn, shape) -> _Density:
    if log_prob_fn is None and score_fn is None:
        raise ValueError("weighted_geodesic: give log_prob_fn (a differentiable log density) or score_fn (grad log p)")
    if log_prob_fn is not None and not callable(log_prob_fn):
        raise TypeError(f"log_prob_fn must be callable (x [B, *shape] -> [B]), got {type(log_prob_fn).__name__}")
    if score_fn is not None and not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x [B, *shape] -> [B, *shape]), got {type(score_fn).__name__}")
    return _Density(log_prob_fn, score_fn if log_prob_fn is None else None, shape)


def _check_endpoints(x_start, x_end) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x_start, torch.Tensor) or not isinstance(x_end, torch.Tensor):
        raise TypeError("weighted_geodesic: x_start and x_end must be tensors (one point each, e.g. [D] or [C, H, W])")
    if x_start.shape != x_end.shape:
        raise ValueError(
            f"weighted_geodesic: x_start and x_end must have the same shape, got {list(x_start.shape)} "
            f"and {list(x_end.shape)}"
        )
    if x_start.dim() == 0 or x_start.numel() == 0:
        raise ValueError(
            "weighted_geodesic: x_start must be one point with at least one coordinate, "
            f"got shape {list(x_start.shape)}"
        )
    if not x_start.is_floating_point() or x_start.dtype != x_end.dtype:
        raise ValueError(
            "weighted_geodesic: x_start and x_end must be floating point of the same dtype, "
            f"got {x_start.dtype} and {x_end.dtype}"
        )
    if not (torch.isfinite(x_start).all() and torch.isfinite(x_end).all()):
        raise ValueError("weighted_geodesic: x_start and x_end must be finite")
    if torch.equal(x_start, x_end):
        raise ValueError("weighted_geodesic: x_start and x_end are the same point (the geodesic is that point)")
    return x_start.detach(), x_end.detach()


def weighted_geodesic(
    log_prob_fn: LogProbFn | None,
    x_start: torch.Tensor,
    x_end: torch.Tensor,
    method: str = "relax",
    *,
    score_fn: ScoreFn | None = None,
    power: float = 1.0,
    nodes: int = 64,
    init_path: torch.Tensor | None = None,
    steps: int = 500,
    lr: float | None = None,
    optimizer: str | Callable = "adam",
    reparam_every: int = 5,
    tol: float = 1e-6,
    shooting_steps: int | None = None,
    newton_iterations: int = 50,
    fd_step: float | None = None,
    subdivisions: int = 8,
    progress: bool = False,
) -> GeodesicResult:
    """Shortest path from ``x_start`` to ``x_end`` under d_w = int p(gamma)^-power |gamma'| dt.

    Args:
        log_prob_fn: differentiable ``x [B, *shape] -> log p [B]``; ``None`` with ``score_fn``.
        x_start, x_end: one point each, same shape (``[D]``, ``[C, H, W]``, ...) and dtype.
        method: ``"relax"`` (optimise the discretised path) or ``"shoot"`` (RK4 shooting on
            the Euler-Lagrange equation, Newton on the initial velocity).
        score_fn: ``x -> grad log p`` (same shape as x), used when ``log_prob_fn`` is None
            (lengths are then relative to p(x_start), see the module docstring).
        power: w = p^-power (the slides' w = 1/p is power 1).
        nodes: segments of the returned path.
        init_path: a starting path ``[M, *shape]`` (resampled to ``nodes``; its ends are replaced
            by ``x_start`` and ``x_end``); default the straight line. For ``"shoot"`` its first
            segment and its length give the initial velocity.
        steps: optimiser steps (relax); lr: step size (default 1% of |x_end - x_start| for Adam);
        optimizer: ``"adam"``, ``"sgd"`` or a factory ``params -> torch.optim.Optimizer``.
        reparam_every: redistribute nodes to equal spacing every this many steps (0: never).
        tol: relax stops when log d_w changed less than ``tol`` over 20 steps; shoot when the
            end-point error is below ``tol * |x_end - x_start|``.
        shooting_steps: RK4 steps per shot (default ``nodes``); newton_iterations: at most this many;
        fd_step: finite-difference step for the Jacobian (default sqrt(machine eps) * |x_end - x_start|).
        subdivisions: sub-segments per segment when measuring the final path.
        progress: tqdm bar.

    Returns a :class:`GeodesicResult` (path, weighted and Euclidean length, log p at the nodes, ...).
    """
    if method not in METHODS:
        raise ValueError(f"weighted_geodesic: unknown method {method!r}; expected 'relax' or 'shoot'")
    x_start, x_end = _check_endpoints(x_start, x_end)
    shape = tuple(x_start.shape)
    density = _make_density(log_prob_fn, score_fn, shape)
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power > 0):
        raise ValueError(f"weighted_geodesic: power must be a positive number, got {power!r}")
    if not isinstance(nodes, int) or nodes < 2:
        raise ValueError(f"weighted_geodesic: nodes must be an integer >= 2, got {nodes!r}")
    if init_path is not None:
        if (
            not isinstance(init_path, torch.Tensor)
            or init_path.dim() != len(shape) + 1
            or tuple(init_path.shape[1:]) != shape
            or init_path.shape[0] < 2
        ):
            raise ValueError(
                f"weighted_geodesic: init_path must be [M >= 2, {', '.join(map(str, shape))}], got "
                f"{list(init_path.shape) if isinstance(init_path, torch.Tensor) else type(init_path).__name__}"
            )
        init = init_path.detach().to(x_start).clone()
        init[0], init[-1] = x_start, x_end
        init = resample_path(init, nodes)
    else:
        init = straight_line(x_start, x_end, nodes)
    if method == "relax":
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"weighted_geodesic: steps must be an integer >= 1, got {steps!r}")
        path, converged, history = _relax(init, density, power, steps, lr, optimizer, reparam_every, tol, progress)
        endpoint_error = 0.0
    else:
        if density.relative is False:
            score = score_from_log_prob(log_prob_fn)
        else:
            score = density.score_fn
        path, converged, history, endpoint_error = _shoot(
            init, x_start, x_end, score, power, shooting_steps or nodes, newton_iterations, tol, fd_step, progress
        )
    measured = path_lengths(path, log_prob_fn, score_fn=score_fn, power=power, subdivisions=subdivisions)
    measured.method = method
    measured.converged = converged
    measured.iterations = len(history)
    measured.history = history
    measured.endpoint_error = endpoint_error
    return measured


def _relax(init, density: _Density, power, steps, lr, optimizer, reparam_every, tol, progress):
    n = init.shape[0] - 1
    flat = init.reshape(n + 1, -1)
    start, end = flat[:1].clone(), flat[-1:].clone()
    interior = torch.nn.Parameter(flat[1:-1].clone())
    scale = float((end - start).norm())
    if callable(optimizer):
        opt = optimizer([interior])
    elif optimizer == "adam":
        opt = torch.optim.Adam([interior], lr=lr if lr is not None else 0.01 * scale)
    elif optimizer == "sgd":
        opt = torch.optim.SGD([interior], lr=lr if lr is not None else 0.01 * scale, momentum=0.9)
    else:
        raise ValueError(f"weighted_geodesic: unknown optimizer {optimizer!r}; expected 'adam', 'sgd' or a factory")
    # Built-in optimisers anneal the step (cosine) so the nodes settle instead of jittering at lr.
    annealing = None if callable(optimizer) else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history: list[float] = []
    converged = False
    # Keep the best iterate: with a learned score (not exactly a gradient field) the Euler-Lagrange
    # flow need not decrease the measured length monotonically.
    best_value, best_path = math.inf, None
    bar = tqdm(range(steps), desc="relaxing geodesic", unit="step", disable=not progress, mininterval=0.5)
    for step in bar:
        opt.zero_grad(set_to_none=True)
        path = torch.cat([start, interior, end], 0)
        if density.relative:
            # Score only: descend along the Euler-Lagrange residual (the slides' relaxation), not the
            # line-integral length, whose optimiser would exploit any curl of a learned score.
            with torch.no_grad():
                objective, _ = _log_weighted_length(path, density, power)  # monitored, not differentiated
                interior.grad = -_euler_lagrange_residual(path, density, power)
        else:
            with torch.enable_grad():
                objective, _ = _log_weighted_length(path, density, power)
                if torch.isfinite(objective):
                    objective.backward()
        if not torch.isfinite(objective) or not torch.isfinite(interior.grad).all():
            raise FloatingPointError(
                f"weighted_geodesic: the weighted length or its gradient became non-finite "
                f"(log d_w = {objective.item()}) at step {step} (log p not finite on the path?)"
            )
        opt.step()
        if annealing is not None:
            annealing.step()
        if reparam_every and (step + 1) % reparam_every == 0:
            with torch.no_grad():
                interior.copy_(_equal_arclength(torch.cat([start, interior, end], 0), n)[1:-1])
        history.append(float(objective.detach()))
        if history[-1] < best_value:  # the objective was evaluated at the path before this step
            best_value, best_path = history[-1], path.detach().clone()
        if step % 20 == 0:
            bar.set_postfix(log_dw=f"{history[-1]:.4f}")
        if len(history) > 40 and abs(history[-21] - history[-1]) < tol and abs(history[-41] - history[-21]) < tol:
            converged = True
            break
    with torch.no_grad():
        final = torch.cat([start, interior.detach(), end], 0)
        final_value = float(_log_weighted_length(final, density, power)[0])
        if best_path is not None and best_value < final_value:
            final = best_path
        if reparam_every:
            final = _equal_arclength(final, n)
    return final.reshape(init.shape), converged, history


def _euler_lagrange_residual(path: torch.Tensor, density: _Density, power: float) -> torch.Tensor:
    """gamma'' - (I - T T^T) v at the interior nodes, v = -power * score, weighted by the node's share of length.

    gamma'' (arc length) is the discrete curvature vector 2 (t_next - t_prev) / (h_prev + h_next) of the
    unit segment directions; at a geodesic the residual vanishes. Its negative, times the node's
    share (h_prev + h_next) / 2, is the gradient of d_w / w(x_i) (the first variation of Eq. d_w).
    """
    segments = path[1:] - path[:-1]
    lengths = segments.norm(dim=1, keepdim=True).clamp_min(torch.finfo(path.dtype).tiny)
    directions = segments / lengths
    share = 0.5 * (lengths[:-1] + lengths[1:])
    curvature = (directions[1:] - directions[:-1]) / share
    tangent = directions[1:] + directions[:-1]
    tangent = tangent / tangent.norm(dim=1, keepdim=True).clamp_min(torch.finfo(path.dtype).tiny)
    interior = path[1:-1]
    score = density.score_fn(interior.reshape(interior.shape[0], *density.shape)).reshape(interior.shape)
    normal_score = score - (score * tangent).sum(1, keepdim=True) * tangent
    return (curvature + power * normal_score) * share


def _geodesic_rhs(score: ScoreFn, shape, power: float):
    """d/ds (x, u) = (u, (I - u u^T) v) with v = -power * grad log p (Euler-Lagrange, arc length)."""

    def rhs(state: torch.Tensor) -> torch.Tensor:
        d = state.shape[1] // 2
        x, u = state[:, :d], state[:, d:]
        v = -power * score(x.reshape(x.shape[0], *shape)).reshape(x.shape[0], d)
        accel = v - (v * u).sum(1, keepdim=True) * u / u.square().sum(1, keepdim=True)
        return torch.cat([u, accel], 1)

    return rhs


def _integrate(rhs, x0: torch.Tensor, q: torch.Tensor, steps: int, keep: bool = False):
    """Shots from x0 with initial velocities q [B, D] (u0 = q/|q|, length |q|); end points [B, D] (and paths)."""
    length = q.norm(dim=1, keepdim=True)  # [B, 1]
    u0 = q / length
    d = q.shape[1]
    state = torch.cat([x0.expand(q.shape[0], -1), u0], 1)
    # Each shot has its own length; integrate in t in [0, 1] with ds = L dt: d/dt = L * rhs.
    h = 1.0 / steps
    scale = torch.cat([length.expand(-1, d), length.expand(-1, d)], 1)
    trajectory = [state[:, :d]] if keep else None
    for _ in range(steps):
        k1 = scale * rhs(state)
        k2 = scale * rhs(state + 0.5 * h * k1)
        k3 = scale * rhs(state + 0.5 * h * k2)
        k4 = scale * rhs(state + h * k3)
        state = rk4_update(state, k1, k2, k3, k4, h)  # Eq. 33, fused
        u = state[:, d:]
        state = torch.cat([state[:, :d], u / u.norm(dim=1, keepdim=True)], 1)  # |u| = 1 is invariant; stop drift
        if keep:
            trajectory.append(state[:, :d])
    return state[:, :d], (torch.stack(trajectory, 1) if keep else None)


def _shoot(init, x_start, x_end, score, power, steps, iterations, tol, fd_step, progress):
    shape = tuple(x_start.shape)
    d = x_start.numel()
    x0, x1 = x_start.reshape(1, d), x_end.reshape(1, d)
    flat_init = init.reshape(init.shape[0], d)
    first = flat_init[1] - flat_init[0]
    q = (first / first.norm() * (flat_init[1:] - flat_init[:-1]).norm(dim=1).sum()).reshape(1, d)
    rhs = _geodesic_rhs(score, shape, power)
    scale = float((x1 - x0).norm())
    eps = fd_step if fd_step is not None else math.sqrt(torch.finfo(x_start.dtype).eps) * scale
    history: list[float] = []
    converged = False
    damping = 1e-3
    bar = tqdm(range(iterations), desc="shooting geodesic", unit="iter", disable=not progress, mininterval=0.5)
    with torch.no_grad():
        end, _ = _integrate(rhs, x0, q, steps)
        residual = (end - x1).reshape(d)
        for _ in bar:
            error = float(residual.norm())
            history.append(error)
            bar.set_postfix(error=f"{error:.2e}")
            if not math.isfinite(error):
                break
            if error < tol * scale:
                converged = True
                break
            # Forward-difference Jacobian d(end)/dq: the D perturbed shots run as one batch.
            perturbed = q + eps * torch.eye(d, dtype=q.dtype, device=q.device)
            ends, _ = _integrate(rhs, x0, perturbed, steps)
            jacobian = ((ends - end) / eps).T  # [D, D]: column j = d end / d q_j
            # Levenberg-Marquardt step; accept if the residual drops, else raise the damping.
            improved = False
            for _ in range(12):
                lhs = jacobian.T @ jacobian + damping * torch.eye(d, dtype=q.dtype, device=q.device)
                delta = torch.linalg.solve(lhs, -(jacobian.T @ residual))
                candidate = q + delta.reshape(1, d)
                if float(candidate.norm()) <= 0:
                    damping *= 10
                    continue
                cand_end, _ = _integrate(rhs, x0, candidate, steps)
                cand_residual = (cand_end - x1).reshape(d)
                if torch.isfinite(cand_residual).all() and cand_residual.norm() < residual.norm():
                    q, end, residual = candidate, cand_end, cand_residual
                    damping = max(damping / 10, 1e-12)
                    improved = True
                    break
                damping *= 10
            if not improved:
                break
        _, trajectory = _integrate(rhs, x0, q, steps, keep=True)
    path = trajectory[0]
    endpoint_error = float((path[-1] - x1[0]).norm())
    if not converged and history and history[-1] < tol * scale:
        converged = True
    return path.reshape(steps + 1, *shape), converged, history, endpoint_error
