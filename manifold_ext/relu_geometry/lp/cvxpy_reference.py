"""The reference path: the plain definition of Eq. 6-8, one cvxpy LP per facet group.

Problems are compiled once per shape with every number a parameter (cvxpy's DPP), so the
reference is readable and not needlessly slow; the HiGHS path (:mod:`.highs`) and the exact
2-D op must give the same answers, which the tests check.
"""

from __future__ import annotations

import functools

import numpy as np

from manifold_ext._optional import require
from manifold_ext.relu_geometry.lp.definitions import (
    ActiveSet,
    Box,
    RegionLPError,
    RegionSystem,
    empty_result,
    normalise_system,
    record_failure,
)


def _cvxpy():
    return require("cvxpy", feature="the cvxpy reference path of the region LPs")


def _cvxpy_solver():
    cp = _cvxpy()
    installed = cp.installed_solvers()
    for name in ("HIGHS", "CLARABEL"):
        if name in installed:
            return name
    raise RegionLPError(f"cvxpy has no LP solver installed (found {installed}); install highspy or clarabel")


@functools.lru_cache(maxsize=32)
def _redundancy_problem(m: int, d: int, with_box: bool):
    """``max a.x  s.t.  A x <= b  (lo <= x <= hi)`` with every number a parameter (DPP: compiled once)."""
    cp = _cvxpy()
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
    cp = _cvxpy()
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
    cp = _cvxpy()
    try:
        problem.solve(solver=_cvxpy_solver())
    except cp.error.SolverError as error:
        return "solver_error: " + str(error)
    return problem.status


def active_set_cvxpy(region: RegionSystem, box: Box | None, tol: float, on_failure: str) -> ActiveSet:
    """Facets of ``region`` by the plain definition (Eq. 6): one LP per facet group."""
    system = normalise_system(region)
    screened = {"zero_or_parallel": int(len(system.dominated))}
    failures: list[str] = []
    if system.infeasible:
        return empty_result(0, screened)
    if len(system.c) == 0:  # every unit constant: the region is the box (or all of R^d), no facets
        d = region.dim
        centre = np.zeros(d) if box is None else box.centre
        radius = float("inf") if box is None else float(box.half_width.min())
        return ActiveSet([], centre, radius, False, np.zeros(0, np.int64), [], 0, screened)
    centre, radius = chebyshev_centre_cvxpy(system.A, system.c, box)
    n_lps = 1
    if not np.isfinite(radius) and radius > 0:
        centre = None  # unbounded inradius: fine, the region is not empty
    elif radius <= tol:
        return empty_result(n_lps, screened, x=centre, r=radius)
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
            record_failure(on_failure, f"redundancy LP of row {int(system.rows[i])} failed ({status})", failures)
            undecided.append(system.groups[i])
    undecided = np.concatenate(undecided) if undecided else np.zeros(0, np.int64)
    return ActiveSet(groups, centre, float(radius), False, undecided, failures, n_lps, screened)


def chebyshev_centre_cvxpy(An: np.ndarray, cn: np.ndarray, box: Box | None) -> tuple[np.ndarray, float]:
    """Eq. 7-8 on unit rows: ``(centre, radius)``; ``(nan..., inf)`` when unbounded."""
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
