"""Linear programs on one region ``A x <= c``: active (non-redundant) bits (Eq. 6),
Chebyshev centre and radius (Eq. 7-8), boundedness.

Definitions (the answers every path here must give):

* Rows are compared after normalisation to unit length, so every tolerance is
  a Euclidean distance. ``tol`` (default ``1e-7``) is that distance.
* Row ``i`` is **non-redundant** (its bit is active, Eq. 6) iff
  ``max a_i.x`` over the other rows (and the box, if one is given) exceeds
  ``c_i + tol``: the hyperplane cuts more than ``tol`` off the polyhedron the
  other rows define. An unbounded maximum counts as non-redundant.
* Rows with the same normalised hyperplane (duplicated units, or units whose
  hyperplanes coincide on this region) form **one facet group**: the LP is
  solved once, excluding the whole group, and all its bits are active
  together (flipping the facet flips all of them). Of several parallel rows
  with the same normal only the tightest can be a facet. Without this rule
  Eq. 6 marks both copies of a duplicated hyperplane redundant and loses the facet.
* Zero rows (units whose pre-activation is constant on the region) are
  redundant when ``c_i >= -tol`` and make the region empty otherwise.
* A region is **empty** when its Chebyshev radius (within the box) is
  ``<= tol``: it has no interior, so it is not a region of the decomposition.

The fast path (:func:`active_set`, method ``"highs"``) proves as many rows as it
can without an LP, then solves the rest with one reused HiGHS model:

1. zero rows, duplicate/parallel rows (sorted projection keys, not a quadratic scan);
2. box bounds: ``max_{x in box} a_i.x <= c_i + tol`` proves redundancy;
3. one Chebyshev LP gives an interior point ``x0`` (and the empty test);
4. ray shooting from ``x0`` along the rows' normals and random directions: the
   first hyperplane a ray meets, if no other is within ``tol``, is a facet
   (the point just past it is a witness);
5. Clarkson-style LPs for the rest: maximise ``a_i.x`` over the facets found
   so far (rows not yet proven are switched off by an infinite bound). A value
   ``<= c_i + tol`` proves ``i`` redundant (the found facets contain the
   region); otherwise the segment from ``x0`` to the optimum leaves the region
   through a facet that ray shooting identifies, which is added, and row ``i``
   is tried again. Only row bounds and the objective change between LPs.

A failed or infeasible LP is never counted either way: it raises
:class:`RegionLPError`, or with ``on_failure="report"`` leaves the row in
``ActiveSet.undecided`` with a message in ``ActiveSet.failures``.

The reference path (method ``"cvxpy"``) is the plain definition: one LP per
facet group, as a cvxpy problem compiled once per shape with parameters.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

DEFAULT_TOL = 1e-7
# Rows whose normalised hyperplanes differ by less than this are the same hyperplane.
SAME_HYPERPLANE_TOL = 1e-9
# Chebyshev radius cap used only to find an interior point of an unbounded region.
INTERIOR_RADIUS_CAP = 1.0


class RegionLPError(RuntimeError):
    """A linear program on a region failed (infeasible where it cannot be, or numerically)."""


# ---------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Box:
    """Axis-aligned box ``lo <= x <= hi``."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        return 0.5 * (self.lo + self.hi)

    @property
    def half_width(self) -> np.ndarray:
        return 0.5 * (self.hi - self.lo)

    def contains(self, x, tol: float = 0.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.all((x >= self.lo - tol) & (x <= self.hi + tol), axis=-1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.lo, self.hi, size=(n, len(self.lo)))

    def as_tuple(self) -> tuple[list[float], list[float]]:
        return self.lo.tolist(), self.hi.tolist()


def as_box(box, dim: int) -> Box | None:
    """``None``, a :class:`Box`, ``(lo, hi)`` (scalars or length-``dim`` sequences) or an array ``[dim, 2]``."""
    if box is None:
        return None
    if isinstance(box, Box):
        lo, hi = box.lo, box.hi
    else:
        arr = np.asarray(box, dtype=np.float64)
        if arr.ndim == 2 and arr.shape == (dim, 2):
            lo, hi = arr[:, 0], arr[:, 1]
        elif len(box) == 2:
            lo, hi = box
        else:
            raise ValueError(f"box must be (lo, hi) or an array [{dim}, 2], got {box!r}")
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (dim,)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (dim,)).copy()
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ValueError(f"box needs finite bounds with lo < hi in every dimension, got lo={lo}, hi={hi}")
    return Box(lo, hi)


def _system(region) -> tuple[np.ndarray, np.ndarray]:
    """``(A, c)`` of a :class:`~manifold_ext.relu_geometry.network.Region` or an ``(A, c)`` pair."""
    if hasattr(region, "A") and hasattr(region, "c"):
        A, c = region.A, region.c
    else:
        A, c = region
    A = np.asarray(A, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    if A.ndim != 2 or c.shape != (A.shape[0],):
        raise ValueError(f"a region needs A [H, d] and c [H], got {A.shape} and {c.shape}")
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(c))):
        raise ValueError("the region's system A x <= c contains NaN or infinity")
    return A, c


# ---------------------------------------------------------------------------
# Normalisation and duplicate hyperplanes (shared by both paths: it is part of the definition)
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class NormalisedSystem:
    A: np.ndarray  # [m, d] unit rows: one representative per facet group
    c: np.ndarray  # [m]
    rows: np.ndarray  # [m] original row index of each representative
    groups: list[np.ndarray]  # [m] original rows sharing each representative's hyperplane
    dominated: np.ndarray  # original rows proven redundant by a tighter parallel row or a zero normal
    infeasible: bool  # a zero row with c < -tol


def normalise_system(A: np.ndarray, c: np.ndarray, tol: float) -> NormalisedSystem:
    h, d = A.shape
    norms = np.linalg.norm(A, axis=1)
    scale = norms.max(initial=0.0)
    zero = norms <= 1e-13 * max(scale, 1e-300)
    infeasible = bool(np.any(c[zero] < -tol))
    nonzero = np.flatnonzero(~zero)
    An = A[nonzero] / norms[nonzero, None]
    cn = c[nonzero] / norms[nonzero]
    # Same direction => same projection on a fixed generic vector; sort, then compare neighbours.
    probe = np.random.default_rng(12345).standard_normal(d)
    probe /= max(np.linalg.norm(probe), 1e-300)
    key = An @ probe
    order = np.argsort(key, kind="stable")
    window = SAME_HYPERPLANE_TOL * (np.sqrt(d) + 1)
    close = np.diff(key[order]) <= window
    if not close.any():  # the usual case: no two rows share a direction
        return NormalisedSystem(A=An, c=cn, rows=nonzero, groups=[nonzero[i:i + 1] for i in range(len(nonzero))],
                                dominated=np.flatnonzero(zero).astype(np.int64), infeasible=infeasible)
    parent = np.arange(len(nonzero))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    run_start = 0
    for pos in range(1, len(order) + 1):
        if pos < len(order) and key[order[pos]] - key[order[pos - 1]] <= window:
            continue
        run = order[run_start:pos]
        if len(run) > 1:  # rare: compare directions pairwise inside the run
            for a_pos in range(len(run)):
                for b_pos in range(a_pos + 1, len(run)):
                    i, j = run[a_pos], run[b_pos]
                    if np.max(np.abs(An[i] - An[j])) <= SAME_HYPERPLANE_TOL:
                        parent[find(j)] = find(i)
        run_start = pos
    clusters: dict[int, list[int]] = {}
    for i in range(len(nonzero)):
        clusters.setdefault(find(i), []).append(i)
    representatives: list[tuple[int, np.ndarray]] = []  # (representative, its group), original row indices
    dominated = [np.flatnonzero(zero)]
    for members in clusters.values():
        members = np.array(sorted(members))
        tightest = cn[members].min()
        same = np.abs(cn[members] - tightest) <= SAME_HYPERPLANE_TOL * (1 + abs(tightest))
        representatives.append((int(members[same][0]), nonzero[members[same]]))
        dominated.append(nonzero[members[~same]])  # a tighter parallel row implies these
    representatives.sort(key=lambda item: item[0])
    reps = np.array([r for r, _ in representatives], dtype=np.int64)
    return NormalisedSystem(
        A=An[reps].reshape(len(reps), d), c=cn[reps], rows=nonzero[reps], groups=[g for _, g in representatives],
        dominated=np.sort(np.concatenate(dominated)).astype(np.int64), infeasible=infeasible,
    )


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class ActiveSet:
    """The non-redundant inequalities of a region (its facets, Eq. 6)."""

    groups: list[np.ndarray]  # one array of hidden units per facet (several when hyperplanes coincide)
    interior_point: np.ndarray | None  # a point inside (Chebyshev centre within the box; None if empty)
    radius: float  # Chebyshev radius within the box (capped at INTERIOR_RADIUS_CAP without a box)
    empty: bool  # no interior: not a region of the decomposition
    undecided: np.ndarray  # rows whose LP failed (only with on_failure="report")
    failures: list[str]
    n_lps: int  # linear programs solved (the Chebyshev LP included)
    screened: dict  # rows decided without an LP, by rule

    @property
    def bits(self) -> np.ndarray:
        """Sorted hidden-unit indices of all active bits."""
        if not self.groups:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate(self.groups))

    @property
    def num_facets(self) -> int:
        return len(self.groups)


# ---------------------------------------------------------------------------
# HiGHS: one model per region, changed in place
# ---------------------------------------------------------------------------
_BANNER_SILENCED = False


def _highs():
    import highspy

    return highspy


def _new_highs():
    """A HiGHS instance. The first one of a process prints a banner on stdout from C++;
    it is sent to /dev/null (file-descriptor level) so library users do not see it."""
    global _BANNER_SILENCED
    hs = _highs()
    if _BANNER_SILENCED:
        return hs.Highs()
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            instance = hs.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SILENCED = True
    return instance


class _HighsModel:
    """A dense LP ``max cost.x  s.t.  row_lo <= M x <= row_hi,  col_lo <= x <= col_hi`` kept in one
    HiGHS instance; callers change the objective and row bounds and re-solve (warm-started)."""

    def __init__(self, M: np.ndarray, row_hi: np.ndarray, col_lo: np.ndarray, col_hi: np.ndarray):
        hs = _highs()
        self.inf = hs.kHighsInf
        self.h = _new_highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("presolve", "off")  # tiny LPs, re-solved many times from a warm basis
        self.h.setOptionValue("primal_feasibility_tolerance", 1e-10)
        self.h.setOptionValue("dual_feasibility_tolerance", 1e-10)
        m, n = M.shape
        lp = hs.HighsLp()
        lp.num_col_ = n
        lp.num_row_ = m
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_ = np.where(np.isfinite(col_lo), col_lo, -self.inf)
        lp.col_upper_ = np.where(np.isfinite(col_hi), col_hi, self.inf)
        lp.row_lower_ = np.full(m, -self.inf)
        lp.row_upper_ = np.where(np.isfinite(row_hi), row_hi, self.inf)
        lp.sense_ = hs.ObjSense.kMaximize
        lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
        lp.a_matrix_.start_ = (np.arange(n + 1) * m).astype(np.int32)  # dense, column by column
        lp.a_matrix_.index_ = np.tile(np.arange(m, dtype=np.int32), n)
        lp.a_matrix_.value_ = np.ascontiguousarray(M.T).reshape(-1)
        self.h.passModel(lp)
        self._cols = np.arange(n, dtype=np.int32)
        self._optimal = hs.HighsModelStatus.kOptimal

    def set_objective(self, cost: np.ndarray) -> None:
        self.h.changeColsCost(len(self._cols), self._cols, np.ascontiguousarray(cost, dtype=np.float64))

    def set_col_bounds(self, col: int, lower: float, upper: float) -> None:
        self.h.changeColBounds(int(col), float(lower), float(upper))

    def set_row_upper(self, row: int, upper: float) -> None:
        self.h.changeRowBounds(int(row), -self.inf, float(upper) if np.isfinite(upper) else self.inf)

    def solve(self) -> tuple[bool, float, np.ndarray | None, str]:
        self.h.run()
        status = self.h.getModelStatus()
        if status != self._optimal:
            return False, float("nan"), None, self.h.modelStatusToString(status)
        x = np.array(self.h.getSolution().col_value)
        return True, float(self.h.getInfo().objective_function_value), x, "optimal"


def _chebyshev_model(An: np.ndarray, cn: np.ndarray, box: Box | None, cap: float | None) -> "_HighsModel":
    """Eq. 7-8 on unit rows: ``max r  s.t.  a_i.x + r <= c_i`` and, with a box, ``x_k + r <= hi_k``,
    ``-x_k + r <= -lo_k``. Columns ``(x, r)``; rows: the region's, then the box's."""
    m, d = An.shape
    M = np.hstack([An, np.ones((m, 1))])
    hi = cn.copy()
    if box is not None:
        eye = np.eye(d)
        M = np.vstack([M, np.hstack([eye, np.ones((d, 1))]), np.hstack([-eye, np.ones((d, 1))])])
        hi = np.concatenate([hi, box.hi, -box.lo])
    col_lo = np.full(d + 1, -np.inf)
    col_hi = np.full(d + 1, np.inf)
    if cap is not None:
        col_hi[d] = cap
    model = _HighsModel(M, hi, col_lo, col_hi)
    cost = np.zeros(d + 1)
    cost[d] = 1.0
    model.set_objective(cost)
    return model


def _chebyshev_highs(An: np.ndarray, cn: np.ndarray, box: Box | None, cap: float | None):
    """Solves :func:`_chebyshev_model`. Returns ``(ok, x, r, status, model)``."""
    d = An.shape[1]
    model = _chebyshev_model(An, cn, box, cap)
    ok, value, x, status = model.solve()
    if not ok:
        return False, None, float("nan"), status, model
    return True, x[:d], value, status, model


def _ray_hits(x0: np.ndarray, U: np.ndarray, An: np.ndarray, slack: np.ndarray, box: Box | None, tol: float,
              t_max: float = np.inf) -> np.ndarray:
    """For rays ``x0 + t u`` (rows of ``U``), the row each ray meets first, or -1 when that is not proven:
    no hit before ``t_max``, a box face first, or another row within ``tol`` of it."""
    S = U @ An.T  # [rays, m]
    with np.errstate(divide="ignore", invalid="ignore"):
        T = np.where(S > 1e-14, slack[None, :] / S, np.inf)
    if box is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            tb = np.where(U > 1e-14, (box.hi - x0) / U, np.where(U < -1e-14, (box.lo - x0) / U, np.inf))
        t_box = tb.min(axis=1)
    else:
        t_box = np.full(len(U), np.inf)
    if T.shape[1] == 0:
        return np.full(len(U), -1)
    first = np.argmin(T, axis=1)
    t1 = T[np.arange(len(U)), first]
    if T.shape[1] > 1:
        t2 = np.partition(T, 1, axis=1)[:, 1]
    else:
        t2 = np.full(len(U), np.inf)
    t_next = np.minimum(t2, t_box)
    speed = S[np.arange(len(U)), first]
    # Past the hit, the ray violates only row `first` until t_next: depth (t_next - t1) * speed > tol.
    with np.errstate(invalid="ignore"):  # inf - inf where nothing is hit: not proven
        proven = np.isfinite(t1) & (t1 < t_box) & (t1 <= t_max) & ((t_next - t1) * speed > tol)
    return np.where(proven, first, -1)


def clip_polygon(lo: np.ndarray, hi: np.ndarray, A: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Vertices ``[k, 2]`` (counter-clockwise) of ``{A x <= c} ∩ [lo, hi]`` in 2-D, by clipping the
    rectangle with one half-plane after another (Sutherland-Hodgman); ``[0, 2]`` if empty."""
    poly = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]], dtype=np.float64)
    for a, b in zip(A, c):
        if len(poly) == 0:
            break
        value = poly @ a - b  # <= 0 inside
        inside = value <= 0
        if inside.all():
            continue
        if not inside.any():
            return np.zeros((0, 2))
        out = []
        for k in range(len(poly)):
            j = (k + 1) % len(poly)
            if inside[k]:
                out.append(poly[k])
            if inside[k] != inside[j]:
                t = value[k] / (value[k] - value[j])
                out.append(poly[k] + t * (poly[j] - poly[k]))
        poly = np.array(out).reshape(-1, 2)
    return poly


def _vertex_screen(Ac, cc, state, box, x0, tol) -> int:
    """2-D only: rows whose maximum over the polygon cut out by the facets found so far (and the
    box) is ``<= c_i + tol`` are redundant (the region lies inside that polygon), the same proof a
    Clarkson LP gives, without the LP. Without a box it applies only when that polygon is bounded.
    Marks them in ``state``; returns how many."""
    facets = np.flatnonzero(state == 1)
    todo = np.flatnonzero(state == 0)
    if len(todo) == 0 or len(facets) < 2:
        return 0
    if box is not None:
        lo, hi = box.lo, box.hi
    else:
        reach = 1e6 * (1.0 + np.abs(x0).max())
        lo, hi = x0 - reach, x0 + reach
    poly = clip_polygon(lo, hi, Ac[facets], cc[facets])
    if len(poly) == 0:
        return 0
    if box is None and np.any(np.isclose(poly, lo, rtol=0, atol=1e-6 * (hi - lo)[0])
                              | np.isclose(poly, hi, rtol=0, atol=1e-6 * (hi - lo)[0])):
        return 0  # the facets found so far do not bound a polygon: no proof
    redundant = todo[(poly @ Ac[todo].T).max(axis=0) <= cc[todo] + tol]
    state[redundant] = -1
    return len(redundant)


# ---------------------------------------------------------------------------
# The fast path
# ---------------------------------------------------------------------------
def active_set(region, box=None, *, tol: float = DEFAULT_TOL, method: str = "highs", on_failure: str = "raise",
               rng: np.random.Generator | None = None) -> ActiveSet:
    """Active (non-redundant) bits of a region (Eq. 6), with facet groups, an interior point and counts.

    Args:
        region: a :class:`~manifold_ext.relu_geometry.network.Region` or an ``(A, c)`` pair.
        box: restrict to ``region ∩ box`` (``(lo, hi)``, see :func:`as_box`); facets are those of the
            intersection, box faces excluded.
        tol: distance tolerance (see the module docstring).
        method: ``"highs"`` (screening + one reused HiGHS model) or ``"cvxpy"`` (the plain definition,
            one parametrised cvxpy LP per facet group).
        on_failure: ``"raise"`` (default) or ``"report"`` (undecided rows and messages in the result).
    """
    if method not in ("highs", "cvxpy"):
        raise ValueError(f"active_set: method must be 'highs' or 'cvxpy', got {method!r}")
    if on_failure not in ("raise", "report"):
        raise ValueError(f"active_set: on_failure must be 'raise' or 'report', got {on_failure!r}")
    if not tol > 0:
        raise ValueError(f"active_set: tol must be > 0, got {tol}")
    A, c = _system(region)
    box = as_box(box, A.shape[1])
    if method == "cvxpy":
        return _active_set_cvxpy(A, c, box, tol, on_failure)
    return _active_set_highs(A, c, box, tol, on_failure, rng or np.random.default_rng(0))


def _empty_result(n_lps, screened, failures=(), x=None, r=float("nan")) -> ActiveSet:
    return ActiveSet([], x, r, True, np.zeros(0, np.int64), list(failures), n_lps, screened)


def _fail(on_failure: str, message: str, failures: list[str]) -> None:
    if on_failure == "raise":
        raise RegionLPError(message)
    failures.append(message)


def _active_set_highs(A, c, box, tol, on_failure, rng) -> ActiveSet:
    d = A.shape[1]
    system = normalise_system(A, c, tol)
    screened = {"zero_or_parallel": int(len(system.dominated)), "box": 0, "ray": 0, "vertices": 0,
                "lp_redundant": 0, "lp_facet": 0}
    failures: list[str] = []
    if system.infeasible:
        return _empty_result(0, screened)
    An, cn = system.A, system.c
    m = len(cn)
    # 1) box bounds: the hyperplane cannot cut the box by more than tol.
    candidate = np.ones(m, dtype=bool)
    if box is not None:
        box_max = An @ box.centre + np.abs(An) @ box.half_width
        by_box = box_max <= cn + tol
        candidate &= ~by_box
        screened["box"] = int(by_box.sum())
    cand = np.flatnonzero(candidate)
    # 2) an interior point (Chebyshev centre on the candidate rows; redundant rows do not change the set).
    ok, x0, radius, status, model = _chebyshev_highs(An[cand], cn[cand], box,
                                                     None if box is not None else INTERIOR_RADIUS_CAP)
    n_lps = 1
    if not ok:
        _fail(on_failure, f"Chebyshev LP failed ({status})", failures)
        return ActiveSet([], None, float("nan"), False, system.rows[cand], failures, n_lps, screened)
    if radius <= tol:
        return _empty_result(n_lps, screened, x=x0, r=radius)
    Ac, cc = An[cand], cn[cand]
    slack = cc - Ac @ x0
    state = np.zeros(len(cand), dtype=np.int8)  # 0 unknown, 1 facet, -1 redundant, 2 failed
    # 3) ray shooting along the normals and random directions proves facets.
    U = np.vstack([Ac, rng.standard_normal((4 * d + 8, d))]) if len(cand) else np.zeros((0, d))
    hits = _ray_hits(x0, U, Ac, slack, box, tol) if len(U) else np.zeros(0, dtype=np.int64)
    state[np.unique(hits[hits >= 0])] = 1
    screened["ray"] = int((state == 1).sum())
    if d == 2:
        screened["vertices"] += _vertex_screen(Ac, cc, state, box, x0, tol)
    # 4) Clarkson-style LPs over the facets found so far, in the Chebyshev model with r fixed
    #    to 0 (its box rows become the box) and the rows not proven facets switched off.
    if np.any(state == 0):
        model.set_col_bounds(d, 0.0, 0.0)
        for i in np.flatnonzero(state != 1):
            model.set_row_upper(i, np.inf)
        facets_when_screened = int((state == 1).sum())
        for i in np.flatnonzero(state == 0):
            if d == 2 and state[i] == 0 and (state == 1).sum() > facets_when_screened:
                screened["vertices"] += _vertex_screen(Ac, cc, state, box, x0, tol)  # new facets: re-screen
                facets_when_screened = int((state == 1).sum())
            while state[i] == 0:
                model.set_objective(np.append(Ac[i], 0.0))
                model.set_row_upper(i, cc[i] + 1.0)  # the probe: bounded, and still > c_i + tol if i cuts
                ok, value, x_star, status = model.solve()
                n_lps += 1
                model.set_row_upper(i, np.inf)
                if not ok:
                    _fail(on_failure, f"redundancy LP of row {int(system.rows[cand[i]])} failed ({status})", failures)
                    state[i] = 2
                    break
                if value <= cc[i] + tol:
                    state[i] = -1  # redundant even against the facets found so far
                    screened["lp_redundant"] += 1
                    break
                # Leave the region along x0 -> x*: the first row crossed is a facet.
                hit = _ray_hits(x0, (x_star[:d] - x0)[None], Ac, slack, box, tol, t_max=1.0)[0]
                if hit < 0 or state[hit] in (1, -1):
                    # Ties or a numerically flat crossing: decide row i by the plain LP over all
                    # rows not proven redundant.
                    state[i] = _plain_lp_decision(model, Ac, cc, state, i, tol, on_failure, failures,
                                                  system.rows[cand[i]])
                    n_lps += 1
                    if state[i] == 1:
                        screened["lp_facet"] += 1
                    break
                state[hit] = 1
                model.set_row_upper(hit, cc[hit])
                screened["lp_facet"] += 1
    groups = [system.groups[cand[i]] for i in np.flatnonzero(state == 1)]
    undecided = np.concatenate([system.groups[cand[i]] for i in np.flatnonzero(state == 2)]) \
        if np.any(state == 2) else np.zeros(0, np.int64)
    return ActiveSet(groups, x0, float(radius), False, undecided, failures, n_lps, screened)


def _plain_lp_decision(model, Ac, cc, state, i, tol, on_failure, failures, row) -> int:
    switched = np.flatnonzero((state == 0) | (state == 2))
    switched = switched[switched != i]
    for j in switched:
        model.set_row_upper(j, cc[j])
    model.set_objective(np.append(Ac[i], 0.0))
    model.set_row_upper(i, cc[i] + 1.0)
    ok, value, _, status = model.solve()
    model.set_row_upper(i, np.inf)
    for j in switched:
        model.set_row_upper(j, np.inf)
    if not ok:
        _fail(on_failure, f"redundancy LP of row {int(row)} failed ({status})", failures)
        return 2
    if value > cc[i] + tol:
        model.set_row_upper(i, cc[i])
        return 1
    return -1


# ---------------------------------------------------------------------------
# The cvxpy reference path: the plain definition, problems compiled once per shape
# ---------------------------------------------------------------------------
def _cvxpy_solver():
    import cvxpy as cp

    installed = cp.installed_solvers()
    for name in ("HIGHS", "CLARABEL"):
        if name in installed:
            return name
    raise RegionLPError(f"cvxpy has no LP solver installed (found {installed}); install highspy or clarabel")


@functools.lru_cache(maxsize=32)
def _redundancy_problem(m: int, d: int, with_box: bool):
    """``max a.x  s.t.  A x <= b  (lo <= x <= hi)`` with every number a parameter (DPP: compiled once)."""
    import cvxpy as cp

    x = cp.Variable(d)
    A = cp.Parameter((m, d))
    b = cp.Parameter(m)
    a = cp.Parameter(d)
    constraints = [A @ x <= b]
    params = {"A": A, "b": b, "a": a}
    if with_box:
        lo, hi = cp.Parameter(d), cp.Parameter(d)
        constraints += [x >= lo, x <= hi]
        params.update(lo=lo, hi=hi)
    return cp.Problem(cp.Maximize(a @ x), constraints), x, params


@functools.lru_cache(maxsize=32)
def _chebyshev_problem(m: int, d: int, with_box: bool):
    """Eq. 8 in cvxpy: ``max r  s.t.  a_i.x + r ||a_i|| <= c_i`` (rows given unit length)."""
    import cvxpy as cp

    x = cp.Variable(d)
    r = cp.Variable()
    A = cp.Parameter((m, d))
    b = cp.Parameter(m)
    constraints = [A @ x + r <= b]
    params = {"A": A, "b": b}
    if with_box:
        lo, hi = cp.Parameter(d), cp.Parameter(d)
        constraints += [x + r <= hi, lo + r <= x]
        params.update(lo=lo, hi=hi)
    return cp.Problem(cp.Maximize(r), constraints), x, r, params


def _solve_cvxpy(problem):
    import cvxpy as cp

    try:
        problem.solve(solver=_cvxpy_solver())
    except cp.error.SolverError as error:
        return "solver_error: " + str(error)
    return problem.status


def _active_set_cvxpy(A, c, box, tol, on_failure) -> ActiveSet:
    system = normalise_system(A, c, tol)
    screened = {"zero_or_parallel": int(len(system.dominated))}
    failures: list[str] = []
    if system.infeasible:
        return _empty_result(0, screened)
    centre, radius = _chebyshev_cvxpy(system.A, system.c, box)
    n_lps = 1
    if not np.isfinite(radius) and radius > 0:
        centre = None  # unbounded inradius: fine, the region is not empty
    elif radius <= tol:
        return _empty_result(n_lps, screened, x=centre, r=radius)
    m, d = system.A.shape
    problem, x, params = _redundancy_problem(m, d, box is not None)
    params["A"].value = system.A
    params["b"].value = system.c  # placeholder, replaced per row below
    if box is not None:
        params["lo"].value, params["hi"].value = box.lo, box.hi
    groups, undecided = [], []
    for i in range(m):
        b = system.c.copy()
        b[i] += 1.0  # drop row i from the constraints (its group is row i: duplicates were merged)
        params["b"].value = b
        params["a"].value = system.A[i]
        status = _solve_cvxpy(problem)
        n_lps += 1
        if status == "optimal":
            if problem.value > system.c[i] + tol:
                groups.append(system.groups[i])
        else:
            _fail(on_failure, f"redundancy LP of row {int(system.rows[i])} failed ({status})", failures)
            undecided.append(system.groups[i])
    undecided = np.concatenate(undecided) if undecided else np.zeros(0, np.int64)
    return ActiveSet(groups, centre, float(radius), False, undecided, failures, n_lps, screened)


def _chebyshev_cvxpy(An: np.ndarray, cn: np.ndarray, box: Box | None) -> tuple[np.ndarray, float]:
    m, d = An.shape
    problem, x, r, params = _chebyshev_problem(m, d, box is not None)
    params["A"].value = An
    params["b"].value = cn
    if box is not None:
        params["lo"].value, params["hi"].value = box.lo, box.hi
    status = _solve_cvxpy(problem)
    if status == "unbounded":
        return np.full(d, np.nan), float("inf")
    if status != "optimal":
        raise RegionLPError(f"Chebyshev LP failed ({status})")
    return np.asarray(x.value, dtype=np.float64), float(r.value)


# ---------------------------------------------------------------------------
# Public helpers
# ---------------------------------------------------------------------------
def chebyshev_centre(region, box=None, *, method: str = "cvxpy") -> tuple[np.ndarray, float]:
    """Centre and radius of the largest ball inside the region (Eq. 7-8), within ``box`` if given.

    The LP (Eq. 8) has ``r`` free, so it is always feasible: a radius ``<= 0`` means
    the region has no interior (empty, or flat), and the centre is then the point
    that violates the inequalities least. Without a box an unbounded region can
    have an infinite radius: the result is then ``(nan..., inf)``.

    ``method``: ``"cvxpy"`` (default, the paper's formulation through cvxpy with a
    problem compiled once per shape) or ``"highs"`` (HiGHS directly, faster).
    """
    A, c = _system(region)
    d = A.shape[1]
    box = as_box(box, d)
    norms = np.linalg.norm(A, axis=1)
    zero = norms <= 1e-13 * max(norms.max(initial=0.0), 1e-300)
    if np.any(c[zero] < 0):  # 0 <= c_i fails everywhere
        return np.full(d, np.nan), float("-inf")
    An = A[~zero] / norms[~zero, None]
    cn = c[~zero] / norms[~zero]
    if method == "cvxpy":
        return _chebyshev_cvxpy(An, cn, box)
    if method == "highs":
        ok, x, r, status, _ = _chebyshev_highs(An, cn, box, None)
        if not ok:
            if "unbounded" in status.lower():
                return np.full(d, np.nan), float("inf")
            raise RegionLPError(f"Chebyshev LP failed ({status})")
        return x, float(r)
    raise ValueError(f"chebyshev_centre: method must be 'cvxpy' or 'highs', got {method!r}")


def is_bounded(region, *, tol: float = DEFAULT_TOL) -> bool:
    """Whether a non-empty region is bounded: its recession cone ``{u : A u <= 0}`` is ``{0}``.

    Bounded iff ``A`` has rank ``d`` and ``max -1.(A u)  s.t.  A u <= 0, -1 <= u <= 1`` is
    ``<= tol`` (a non-zero direction of the cone would make some row strictly negative).
    """
    A, _ = _system(region)
    norms = np.linalg.norm(A, axis=1)
    keep = norms > 1e-13 * max(norms.max(initial=0.0), 1e-300)
    An = A[keep] / norms[keep, None]
    d = A.shape[1]
    if len(An) == 0 or np.linalg.matrix_rank(An) < d:
        return False
    model = _HighsModel(An, np.zeros(len(An)), np.full(d, -1.0), np.full(d, 1.0))
    model.set_objective(-An.sum(axis=0))
    ok, value, _, status = model.solve()
    if not ok:
        raise RegionLPError(f"boundedness LP failed ({status})")
    return value <= tol


def active_bits(region, box=None, *, tol: float = DEFAULT_TOL, method: str = "highs") -> np.ndarray:
    """Sorted indices of the active (non-redundant) bits of a region (Eq. 6); see :func:`active_set`."""
    return active_set(region, box, tol=tol, method=method).bits


def facet_groups(region, box=None, *, tol: float = DEFAULT_TOL) -> list[np.ndarray]:
    """The facets of a region as groups of hidden units (one unit each unless hyperplanes coincide)."""
    return active_set(region, box, tol=tol).groups


__all__: Sequence[str] = [
    "Box", "as_box", "ActiveSet", "RegionLPError", "DEFAULT_TOL", "active_set", "active_bits", "facet_groups",
    "chebyshev_centre", "is_bounded", "normalise_system",
]
