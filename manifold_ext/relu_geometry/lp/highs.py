"""The fast path: screening, then one reused HiGHS model per region (Eq. 6-8).

1. zero rows, duplicate/parallel rows (:func:`.definitions.normalise_system`);
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
"""
from __future__ import annotations

import os
import sys

import numpy as np

from manifold_ext._optional import require
from manifold_ext.relu_geometry.lp.definitions import (
    INTERIOR_RADIUS_CAP,
    ActiveSet,
    Box,
    RegionLPError,
    RegionSystem,
    empty_result,
    normalise_system,
    record_failure,
)
from manifold_ext.relu_geometry.lp.polygon import clip_polygon

_BANNER_SILENCED = False


def _highs():
    return require("highspy", feature="region linear programs (the HiGHS path)")


def _new_highs():
    """A HiGHS instance. The first one of a process prints a banner on stdout from C++;
    it is sent to /dev/null (file-descriptor level) so library users do not see it."""
    global _BANNER_SILENCED
    hs = _highs()
    if _BANNER_SILENCED:
        return hs.Highs()
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


def active_set_highs(region: RegionSystem, box: Box | None, tol: float, on_failure: str,
                     rng: np.random.Generator) -> ActiveSet:
    """Facets of ``region`` (within ``box``) by screening and one reused HiGHS model (see the module docstring)."""
    d = region.dim
    system = normalise_system(region)
    screened = {"zero_or_parallel": int(len(system.dominated)), "box": 0, "ray": 0, "vertices": 0,
                "lp_redundant": 0, "lp_facet": 0}
    failures: list[str] = []
    if system.infeasible:
        return empty_result(0, screened)
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
        record_failure(on_failure, f"Chebyshev LP failed ({status})", failures)
        return ActiveSet([], None, float("nan"), False, system.rows[cand], failures, n_lps, screened)
    if radius <= tol:
        return empty_result(n_lps, screened, x=x0, r=radius)
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
                    record_failure(on_failure, f"redundancy LP of row {int(system.rows[cand[i]])} failed ({status})", failures)
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
        record_failure(on_failure, f"redundancy LP of row {int(row)} failed ({status})", failures)
        return 2
    if value > cc[i] + tol:
        model.set_row_upper(i, cc[i])
        return 1
    return -1


def chebyshev_centre_highs(An: np.ndarray, cn: np.ndarray, box: Box | None) -> tuple[np.ndarray, float]:
    """Eq. 7-8 on unit rows with HiGHS: ``(centre, radius)``; ``(nan..., inf)`` when unbounded."""
    d = An.shape[1]
    ok, x, r, status, _ = _chebyshev_highs(An, cn, box, None)
    if not ok:
        if "unbounded" in status.lower():
            return np.full(d, np.nan), float("inf")
        raise RegionLPError(f"Chebyshev LP failed ({status})")
    return x, float(r)


def is_bounded_highs(An: np.ndarray, tol: float) -> bool:
    """Whether ``{x : An x <= c}`` (unit rows, non-empty) is bounded: its recession cone ``{u : An u <= 0}``
    is ``{0}``. Bounded iff ``An`` has rank ``d`` and ``max -1.(An u)  s.t.  An u <= 0, -1 <= u <= 1`` is
    ``<= tol`` (a non-zero direction of the cone would make some row strictly negative)."""
    d = An.shape[1]
    if len(An) == 0 or np.linalg.matrix_rank(An) < d:
        return False
    model = _HighsModel(An, np.zeros(len(An)), np.full(d, -1.0), np.full(d, 1.0))
    model.set_objective(-An.sum(axis=0))
    ok, value, _, status = model.solve()
    if not ok:
        raise RegionLPError(f"boundedness LP failed ({status})")
    return value <= tol
