"""Linear programs on one region ``A x <= c``: active (non-redundant) bits (Eq. 6),
Chebyshev centre and radius (Eq. 7-8), boundedness.

Definitions (the answers every path here must give; :mod:`.definitions` holds them in code):

* Rows are compared after normalisation to unit length, so every tolerance is
  a Euclidean distance. ``tol`` (default ``1e-7``) is that distance; it must be at
  most 1/100 of the box's narrowest width and of the radius cap (1), else it raises.
* **Zero rows**, units constant on the region, are decided row by row: row ``i`` is
  zero when ``|a_i| <= 1e-11 * s_i`` with ``s_i`` the norm of the same row built
  from ``|W|`` (:attr:`Region.row_scale <manifold_ext.relu_geometry.Region>`), so
  rescaling one unit by 1e14 changes nothing; for a bare ``(A, c)`` pair only exact
  zeros are. A zero row is left out, and the region is empty when the unit's
  constant contradicts its bit (active iff the constant is ``> 0``, Eq. 3).
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
* A region is **empty** when its Chebyshev radius (within the box; capped at 1
  without one) is ``<= tol``: it has no interior, so it is not a region of the
  decomposition.

Three paths give these answers (``method=``): ``"highs"`` (default; screening and one
reused HiGHS model per region, :mod:`.highs`), ``"cvxpy"`` (the plain definition, one
LP per facet group, :mod:`.cvxpy_reference`) and, for 2-D input, ``"clip"`` (exact
polygon clipping in C++, no LP, :mod:`.clip2d`). A failed or infeasible LP is never
counted either way: it raises :class:`RegionLPError`, or with ``on_failure="report"``
leaves the row in ``ActiveSet.undecided`` with a message in ``ActiveSet.failures``.
"""

from __future__ import annotations

import numpy as np

from manifold_ext.relu_geometry.lp.definitions import (
    DEFAULT_TOL,
    INTERIOR_RADIUS_CAP,
    SAME_HYPERPLANE_TOL,
    TOL_FRACTION,
    ZERO_ROW_RTOL,
    ActiveSet,
    Box,
    NormalisedSystem,
    RegionLPError,
    RegionSystem,
    as_box,
    as_system,
    check_tol,
    normalise_system,
    zero_rows,
)
from manifold_ext.relu_geometry.lp.polygon import clip_polygon

METHODS = ("highs", "cvxpy", "clip")


def _check_method(method: str, where: str, dim: int) -> None:
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {METHODS}, got {method!r}")
    if method == "clip" and dim != 2:
        raise ValueError(
            f"{where}: method='clip' (exact polygon clipping) needs a 2-D input space, got dimension {dim}"
        )


def active_set(
    region,
    box=None,
    *,
    tol: float = DEFAULT_TOL,
    method: str = "highs",
    on_failure: str = "raise",
    rng: np.random.Generator | None = None,
) -> ActiveSet:
    """Active (non-redundant) bits of a region (Eq. 6), with facet groups, an interior point and counts.

    Args:
        region: a :class:`~manifold_ext.relu_geometry.network.Region` or an ``(A, c)`` pair.
        box: restrict to ``region ∩ box`` (``(lo, hi)``, see :func:`as_box`); facets are those of the
            intersection, box faces excluded.
        tol: distance tolerance (see the module docstring).
        method: ``"highs"`` (default: screening + one reused HiGHS model), ``"cvxpy"`` (the plain
            definition, one parametrised cvxpy LP per facet group) or ``"clip"`` (2-D input only: exact
            polygon clipping in C++, no LP; falls back to HiGHS where rounding defeats it).
        on_failure: ``"raise"`` (default) or ``"report"`` (undecided rows and messages in the result).
        rng: random directions of the HiGHS path's ray screen (default: a fixed seed).
    """
    if on_failure not in ("raise", "report"):
        raise ValueError(f"active_set: on_failure must be 'raise' or 'report', got {on_failure!r}")
    system = as_system(region)
    _check_method(method, "active_set", system.dim)
    box = as_box(box, system.dim)
    tol = check_tol(tol, box, "active_set")
    return _active_set(system, box, tol, method, on_failure, rng)


def _active_set(
    system: RegionSystem,
    box: Box | None,
    tol: float,
    method: str,
    on_failure: str,
    rng: np.random.Generator | None = None,
) -> ActiveSet:
    """:func:`active_set` on an already checked system (the enumeration's workers call this)."""
    if method == "clip":
        from manifold_ext.relu_geometry.lp.clip2d import active_set_clip

        result = active_set_clip(system, box, tol)
        if result is not None:
            return result
        method = "highs"  # rounding defeated the polygon: the LP path decides this region
    if method == "cvxpy":
        from manifold_ext.relu_geometry.lp.cvxpy_reference import active_set_cvxpy

        return active_set_cvxpy(system, box, tol, on_failure)
    from manifold_ext.relu_geometry.lp.highs import active_set_highs

    return active_set_highs(system, box, tol, on_failure, rng or np.random.default_rng(0))


def active_bits(region, box=None, *, tol: float = DEFAULT_TOL, method: str = "highs") -> np.ndarray:
    """Sorted indices of the active (non-redundant) bits of a region (Eq. 6); see :func:`active_set`."""
    return active_set(region, box, tol=tol, method=method).bits


def facet_groups(region, box=None, *, tol: float = DEFAULT_TOL, method: str = "highs") -> list[np.ndarray]:
    """The facets of a region as groups of hidden units (one unit each unless hyperplanes coincide)."""
    return active_set(region, box, tol=tol, method=method).groups


def chebyshev_centre(region, box=None, *, method: str = "highs") -> tuple[np.ndarray, float]:
    """Centre and radius of the largest ball inside the region (Eq. 7-8), within ``box`` if given.

    The LP (Eq. 8) has ``r`` free, so it is always feasible: a radius ``<= 0`` means the region
    has no interior (empty, or flat), and the centre is then the point that violates the
    inequalities least. Without a box an unbounded region can have an infinite radius: the
    result is then ``(nan..., inf)``. A zero row that contradicts its bit (see the module
    docstring) gives ``(nan..., -inf)``.

    ``method``: ``"highs"`` (default, as :func:`active_set`), ``"cvxpy"`` (the paper's formulation
    through cvxpy, a problem compiled once per shape) or ``"clip"`` (2-D only, exact, no LP; the
    radius is capped at 1 without a box, as in :func:`active_set`).
    """
    system = as_system(region)
    d = system.dim
    _check_method(method, "chebyshev_centre", d)
    box = as_box(box, d)
    if system.infeasible:
        return np.full(d, np.nan), float("-inf")
    if method == "clip":
        from manifold_ext.relu_geometry.lp.clip2d import clip_2d

        _, centre, radius, _, ok = clip_2d(system.A[None], system.c[None], system.zero[None], box, DEFAULT_TOL)
        if ok[0]:
            return centre[0], float(radius[0])
        method = "highs"
    keep = ~system.zero
    norms = np.linalg.norm(system.A[keep], axis=1)
    An = system.A[keep] / norms[:, None]
    cn = system.c[keep] / norms
    if method == "cvxpy":
        from manifold_ext.relu_geometry.lp.cvxpy_reference import chebyshev_centre_cvxpy

        return chebyshev_centre_cvxpy(An, cn, box)
    from manifold_ext.relu_geometry.lp.highs import chebyshev_centre_highs

    return chebyshev_centre_highs(An, cn, box)


def is_bounded(region, *, tol: float = DEFAULT_TOL) -> bool:
    """Whether a non-empty region is bounded: its recession cone ``{u : A u <= 0}`` (zero rows left
    out) is ``{0}``; decided by one HiGHS LP (see :func:`.highs.is_bounded_highs`)."""
    from manifold_ext.relu_geometry.lp.highs import is_bounded_highs

    system = as_system(region)
    tol = check_tol(tol, None, "is_bounded")
    keep = ~system.zero
    An = system.A[keep] / np.linalg.norm(system.A[keep], axis=1, keepdims=True)
    return is_bounded_highs(An, tol)


__all__ = [
    "Box",
    "as_box",
    "ActiveSet",
    "RegionLPError",
    "DEFAULT_TOL",
    "SAME_HYPERPLANE_TOL",
    "INTERIOR_RADIUS_CAP",
    "ZERO_ROW_RTOL",
    "TOL_FRACTION",
    "RegionSystem",
    "NormalisedSystem",
    "as_system",
    "zero_rows",
    "check_tol",
    "normalise_system",
    "active_set",
    "active_bits",
    "facet_groups",
    "chebyshev_centre",
    "is_bounded",
    "clip_polygon",
    "METHODS",
]
