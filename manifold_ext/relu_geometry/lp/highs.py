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

import functools
import itertools
import math
import os
import sys
import threading

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


_PER_THREAD = threading.local()


def _thread_highs():
    """This thread's HiGHS instance, created and configured once (building one costs more than
    solving a region's LPs); each new :class:`_HighsModel` passes its own model into it."""
    h = getattr(_PER_THREAD, "highs", None)
    if h is None:
        h = _new_highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("presolve", "off")  # tiny LPs, re-solved many times from a warm basis
        h.setOptionValue("primal_feasibility_tolerance", 1e-10)
        h.setOptionValue("dual_feasibility_tolerance", 1e-10)
        _PER_THREAD.highs = h
        _PER_THREAD.owner = None
    return h


class _HighsModel:
    """A dense LP ``max cost.x  s.t.  row_lo <= M x <= row_hi,  col_lo <= x <= col_hi`` kept in this
    thread's HiGHS instance; callers change the objective and row bounds and re-solve (warm-started).
    One model per thread is live at a time: building a new one retires the previous one."""

    def __init__(self, M: np.ndarray, row_hi: np.ndarray, col_lo: np.ndarray, col_hi: np.ndarray):
        hs = _highs()
        self.inf = hs.kHighsInf
        self.h = _thread_highs()
        _PER_THREAD.owner = self
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
        if _PER_THREAD.owner is not self:
            raise RuntimeError(
                "internal error: a retired _HighsModel was solved (another model was built in this thread since)"
            )
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


def _ray_hits(
    x0: np.ndarray, U: np.ndarray, An: np.ndarray, slack: np.ndarray, box: Box | None, tol: float, t_max: float = np.inf
) -> np.ndarray:
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


# Vertex bases tried by the vertex screen (combinations of d planes out of the facets found and the
# box's faces): beyond this the screen is skipped and the LPs decide.
VERTEX_SCREEN_MAX_BASES = 4096
# Margin below c_i + tol that a vertex bound must keep to prove redundancy (its rounding error).
VERTEX_SCREEN_MARGIN = 1e-9


@functools.lru_cache(maxsize=256)
def _bases(n: int, d: int) -> np.ndarray:
    """Every choice of d planes out of n, ``int64 [comb(n, d), d]`` (cached: regions repeat sizes)."""
    return np.array(list(itertools.combinations(range(n), d)), dtype=np.int64).reshape(-1, d)


def _vertex_screen(Ac, cc, state, box, tol) -> int:
    """Rows proven redundant without an LP by the facets found so far (and the box).

    For any d planes ``B x <= g_B`` among them and a row with ``a_i = B^T lam``, ``lam >= 0``,
    every x of the region satisfies ``a_i . x = lam . B x <= lam . g_B = a_i . v`` with
    ``v = B^{-1} g_B`` (LP duality); if that is ``<= c_i + tol`` the row is redundant, the same
    proof a Clarkson LP gives. Only bases that are vertices of the polyhedron the planes define
    are tried (they give the tightest bounds; with a box every direction lies in one of their
    normal cones). Marks the rows in ``state``; returns how many."""
    facets = np.flatnonzero(state == 1)
    todo = np.flatnonzero(state == 0)
    d = Ac.shape[1]
    F, g = Ac[facets], cc[facets]
    if box is not None:
        eye = np.eye(d)
        F, g = np.vstack([F, eye, -eye]), np.concatenate([g, box.hi, -box.lo])
    n = len(F)
    if len(todo) == 0 or n < d or math.comb(n, d) > VERTEX_SCREEN_MAX_BASES:
        return 0
    bases = _bases(n, d)
    B = F[bases]  # [K, d, d]
    regular = np.abs(np.linalg.det(B)) > 1e-12
    bases, B = bases[regular], B[regular]
    if not len(B):
        return 0
    B_inv = np.linalg.inv(B)
    V = np.einsum("kij,kj->ki", B_inv, g[bases])  # [K, d] candidate vertices
    vertex = np.all(V @ F.T <= g + 1e-9 * (1.0 + np.abs(g)), axis=1)
    B_inv, V = B_inv[vertex], V[vertex]
    if not len(V):
        return 0
    lam = np.einsum("kji,tj->kti", B_inv, Ac[todo])  # a_i = B^T lam: lam = B^{-T} a_i, [K, T, d]
    in_cone = np.all(lam >= -1e-12, axis=2)
    bound = V @ Ac[todo].T  # [K, T]
    limit = cc[todo] + tol - VERTEX_SCREEN_MARGIN * (1.0 + np.abs(cc[todo]) + np.abs(V).max(axis=1, keepdims=True))
    proven = np.any(in_cone & (bound <= limit), axis=0)
    state[todo[proven]] = -1
    return int(proven.sum())


def active_set_highs(
    region: RegionSystem, box: Box | None, tol: float, on_failure: str, rng: np.random.Generator
) -> ActiveSet:
    """Facets of ``region`` (within ``box``) by screening and one reused HiGHS model (see the module docstring)."""
    d = region.dim
    system = normalise_system(region)
    screened = {
        "zero_or_parallel": int(len(system.dominated)),
        "box": 0,
        "ray": 0,
        "vertices": 0,
        "lp_redundant": 0,
        "lp_facet": 0,
    }
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
    ok, x0, radius, status, model = _chebyshev_highs(
        An[cand], cn[cand], box, None if box is not None else INTERIOR_RADIUS_CAP
    )
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
    screened["vertices"] += _vertex_screen(Ac, cc, state, box, tol)
    # 4) Clarkson-style LPs over the facets found so far, in the Chebyshev model with r fixed
    #    to 0 (its box rows become the box) and the rows not proven facets switched off.
    if np.any(state == 0):
        model.set_col_bounds(d, 0.0, 0.0)
        for i in np.flatnonzero(state != 1):
            model.set_row_upper(i, np.inf)
        facets_when_screened = int((state == 1).sum())
        for i in np.flatnonzero(state == 0):
            if state[i] == 0 and (state == 1).sum() > facets_when_screened:
                screened["vertices"] += _vertex_screen(Ac, cc, state, box, tol)  # new facets: re-screen
                facets_when_screened = int((state == 1).sum())
            while state[i] == 0:
                model.set_objective(np.append(Ac[i], 0.0))
                model.set_row_upper(i, cc[i] + 1.0)  # the probe: bounded, and still > c_i + tol if i cuts
                ok, value, x_star, status = model.solve()
                n_lps += 1
                model.set_row_upper(i, np.inf)
                if not ok:
                    record_failure(
                        on_failure, f"redundancy LP of row {int(system.rows[cand[i]])} failed ({status})", failures
                    )
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
                    state[i] = _plain_lp_decision(
                        model, Ac, cc, state, i, tol, on_failure, failures, system.rows[cand[i]]
                    )
                    n_lps += 1
                    if state[i] == 1:
                        screened["lp_facet"] += 1
                    break
                state[hit] = 1
                model.set_row_upper(hit, cc[hit])
                screened["lp_facet"] += 1
    groups = [system.groups[cand[i]] for i in np.flatnonzero(state == 1)]
    undecided = (
        np.concatenate([system.groups[cand[i]] for i in np.flatnonzero(state == 2)])
        if np.any(state == 2)
        else np.zeros(0, np.int64)
    )
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
