"""What every solver path must compute: boxes, tolerances, zero rows, facet groups, results.

These definitions are shared by the HiGHS fast path (:mod:`.highs`), the cvxpy reference
(:mod:`.cvxpy_reference`) and the exact 2-D op (:func:`manifold_ext.ops.region_clip.region_clip_2d`);
see :mod:`manifold_ext.relu_geometry.lp` for the rules in words.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from manifold_ext.relu_geometry._checks import as_float

DEFAULT_TOL = 1e-7
# Rows whose normalised hyperplanes differ by less than this are the same hyperplane.
SAME_HYPERPLANE_TOL = 1e-9
# Chebyshev radius cap used only to find an interior point of an unbounded region.
INTERIOR_RADIUS_CAP = 1.0
# A row is a zero row (its unit is constant on the region) when its norm is at most this times
# the norm of the same row computed from |W| and |b| (the size of the terms whose cancellation
# produced it, so the rounding noise of that cancellation); likewise for the constant's sign.
ZERO_ROW_RTOL = 1e-11
# The tolerance must be this many times smaller than the box width (and than the radius cap):
# a larger one drops real regions as "thinner than tol".
TOL_FRACTION = 1e-2


class RegionLPError(RuntimeError):
    """A linear program on a region failed (infeasible where it cannot be, or numerically)."""


# ---------------------------------------------------------------------------
# Boxes and tolerances
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Box:
    """Axis-aligned box ``lo <= x <= hi`` (``lo``, ``hi``: float64 ``[d]``)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.lo)

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

    def as_array(self) -> np.ndarray:
        """``[2, d]``: the rows ``lo`` and ``hi``."""
        return np.stack([self.lo, self.hi])


_BOX_CONVENTION = (
    "a box is (lo, hi): lo and hi are scalars or sequences of length d (one bound per input "
    "dimension), e.g. (-1.0, 1.0) or ([-1, -2], [1, 2]); an array of shape [2, d] is read the same "
    "way (row 0 = lo, row 1 = hi)"
)


def as_box(box, dim: int) -> Box | None:
    """``None`` (no box: all of R^d), a :class:`Box`, or ``(lo, hi)``.

    The one convention: ``box`` is a pair ``(lo, hi)`` whose entries are scalars (the same bound
    in every dimension) or sequences of length ``dim``; a NumPy array or tensor of shape
    ``[2, dim]`` (or ``[2]``) is read the same way, row 0 = ``lo``, row 1 = ``hi``. Anything
    else raises: a bare scalar (``box=1.0``: is it ``[-1, 1]`` or ``[0, 1]``?), an array
    ``[dim, 2]`` of per-dimension ``(lo, hi)`` pairs (pass ``(arr[:, 0], arr[:, 1])``), bounds
    of the wrong length, non-finite bounds or ``lo >= hi``.
    """
    if box is None:
        return None
    if isinstance(box, Box):
        lo, hi = box.lo, box.hi
    elif isinstance(box, (tuple, list)):
        if len(box) != 2:
            raise ValueError(
                f"box must be a pair (lo, hi), got a {type(box).__name__} of length {len(box)}: {_BOX_CONVENTION}"
            )
        lo, hi = box
    elif np.ndim(box) == 0:
        raise ValueError(f"box={box!r} is ambiguous (is it [-{box}, {box}] or [0, {box}]?): {_BOX_CONVENTION}")
    else:
        arr = np.asarray(box, dtype=np.float64)
        if arr.ndim > 2 or arr.shape[0] != 2:
            hint = (
                " (per-dimension (lo, hi) pairs? pass (arr[:, 0], arr[:, 1]))"
                if arr.ndim == 2 and arr.shape[1] == 2
                else ""
            )
            raise ValueError(
                f"box array must have shape [2, {dim}] (rows lo, hi), got {arr.shape}{hint}: {_BOX_CONVENTION}"
            )
        lo, hi = arr[0], arr[1]
    lo = _bound(lo, "lo", dim)
    hi = _bound(hi, "hi", dim)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ValueError(f"box needs finite bounds with lo < hi in every dimension, got lo={lo}, hi={hi}")
    return Box(lo, hi)


def _bound(value, name: str, dim: int) -> np.ndarray:
    arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(dim, float(arr))
    if arr.shape != (dim,):
        raise ValueError(
            f"box {name} must be a scalar or have {dim} values (one per input dimension), got shape "
            f"{arr.shape}: {_BOX_CONVENTION}"
        )
    return arr.copy()


def check_tol(tol, box: Box | None, where: str) -> float:
    """``tol`` as a float in ``(0, TOL_FRACTION * min(box width, INTERIOR_RADIUS_CAP)]``, or a clear error."""
    tol = as_float(tol, f"{where}: tol")
    if not tol > 0:
        raise ValueError(f"{where}: tol must be > 0 (a distance), got {tol}")
    limit = TOL_FRACTION * INTERIOR_RADIUS_CAP
    if tol > limit:
        raise ValueError(
            f"{where}: tol = {tol} is a distance below which regions count as empty; it must be <= "
            f"{limit:g} (1/{1 / TOL_FRACTION:g} of the Chebyshev radius cap {INTERIOR_RADIUS_CAP}), "
            f"default {DEFAULT_TOL}"
        )
    if box is not None:
        width = 2 * box.half_width
        k = int(np.argmin(width))
        if tol > TOL_FRACTION * width[k]:
            raise ValueError(
                f"{where}: the box is {width[k]:.3g} wide in dimension {k}, narrower than "
                f"{1 / TOL_FRACTION:g} x tol = {tol / TOL_FRACTION:.3g}; regions would be dropped as "
                f"thinner than tol: pass tol <= {TOL_FRACTION * width[k]:.3g} or a wider box"
            )
    return tol


# ---------------------------------------------------------------------------
# A region's system, with its zero rows decided row by row
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class RegionSystem:
    """``A x <= c`` of one region with its zero rows decided (see :func:`zero_rows`)."""

    A: np.ndarray  # [H, d]
    c: np.ndarray  # [H]
    zero: np.ndarray  # [H] bool: the unit is constant on the region (row left out of the geometry)
    infeasible: bool  # a zero row's constant contradicts its bit: the region is empty

    @property
    def dim(self) -> int:
        return self.A.shape[1]


def zero_rows(A: np.ndarray, c: np.ndarray, row_scale=None, offset_scale=None, bits=None):
    """Zero rows of systems ``A [..., H, d]``, ``c [..., H]``, decided row by row.

    Row ``i`` is a zero row when ``|a_i| <= ZERO_ROW_RTOL * row_scale_i``: ``row_scale`` is the
    norm of the row computed from ``|W|`` (the size of the terms that cancelled), so rescaling a
    unit, or all of them, never changes the decision; without it (a bare ``(A, c)``) only exact
    zeros are zero rows. The unit is then constant on the region, equal to ``-c_i`` (inactive
    bit) or ``c_i`` (active bit), and the region is empty unless that constant has the bit's
    sign (Eq. 3: active iff ``> 0``); a constant within ``ZERO_ROW_RTOL * offset_scale_i`` of 0
    counts as 0. Without ``bits`` every row reads as inactive (the closed system ``0 <= c_i``).

    Returns ``(zero [..., H] bool, infeasible [...] bool, zero_constant [..., H] bool)``; zero
    rows with a zero constant are the units that may switch on across a facet (see
    :func:`manifold_ext.relu_geometry.enumerate.exact_neighbour_patterns`).
    """
    norms = np.linalg.norm(A, axis=-1)
    scale = norms if row_scale is None else np.asarray(row_scale, dtype=np.float64)
    zero = norms <= ZERO_ROW_RTOL * scale
    band = 0.0 if offset_scale is None else ZERO_ROW_RTOL * np.asarray(offset_scale, dtype=np.float64)
    constant_zero = np.abs(c) <= band
    if bits is None:
        consistent = c >= -band
    else:
        bits = np.asarray(bits, dtype=bool)
        consistent = np.where(bits, (c > 0) & ~constant_zero, c >= -band)
    infeasible = np.any(zero & ~consistent, axis=-1)
    return zero, infeasible, zero & constant_zero


def as_system(region) -> RegionSystem:
    """The :class:`RegionSystem` of a :class:`~manifold_ext.relu_geometry.network.Region` (zero rows
    decided with its row scales and bits) or of an ``(A, c)`` pair (exact zeros only)."""
    if hasattr(region, "A") and hasattr(region, "c"):
        A, c = region.A, region.c
        row_scale = getattr(region, "row_scale", None)
        offset_scale = getattr(region, "offset_scale", None)
        bits = region.bits if hasattr(region, "pattern") else None
    elif isinstance(region, (tuple, list)) and len(region) == 2:
        (A, c), row_scale, offset_scale, bits = region, None, None, None
    else:
        raise TypeError(f"a region must be a Region or an (A, c) pair, got {type(region).__name__}")
    A = np.asarray(A, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    if A.ndim != 2 or c.shape != (A.shape[0],):
        raise ValueError(f"a region needs A [H, d] and c [H], got {A.shape} and {c.shape}")
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(c))):
        raise ValueError("the region's system A x <= c contains NaN or infinity")
    zero, infeasible, _ = zero_rows(A, c, row_scale, offset_scale, bits)
    return RegionSystem(A, c, zero, bool(infeasible))


# ---------------------------------------------------------------------------
# Normalisation and duplicate hyperplanes (shared by every path: it is part of the definition)
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class NormalisedSystem:
    A: np.ndarray  # [m, d] unit rows: one representative per facet group
    c: np.ndarray  # [m]
    rows: np.ndarray  # [m] original row index of each representative
    groups: list[np.ndarray]  # [m] original rows sharing each representative's hyperplane
    dominated: np.ndarray  # original rows proven redundant: zero rows, and rows with a tighter parallel row
    infeasible: bool  # a zero row contradicts its bit


def normalise_system(system: RegionSystem) -> NormalisedSystem:
    """Unit rows; rows with the same normal (within ``SAME_HYPERPLANE_TOL``) are grouped, the tightest
    (same offset) form one facet group and looser parallel rows are redundant; zero rows left out."""
    A, c, zero = system.A, system.c, system.zero
    d = A.shape[1]
    nonzero = np.flatnonzero(~zero)
    norms = np.linalg.norm(A[nonzero], axis=1)
    An = A[nonzero] / norms[:, None]
    cn = c[nonzero] / norms
    # Same direction => same projection on a fixed generic vector; sort, then compare neighbours.
    probe = np.random.default_rng(12345).standard_normal(d)
    probe /= max(np.linalg.norm(probe), 1e-300)
    key = An @ probe
    order = np.argsort(key, kind="stable")
    window = SAME_HYPERPLANE_TOL * (np.sqrt(d) + 1)
    close = np.diff(key[order]) <= window
    if not close.any():  # the usual case: no two rows share a direction
        return NormalisedSystem(
            A=An,
            c=cn,
            rows=nonzero,
            groups=[nonzero[i : i + 1] for i in range(len(nonzero))],
            dominated=np.flatnonzero(zero).astype(np.int64),
            infeasible=system.infeasible,
        )
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
        for a_pos in range(len(run)):  # rare: compare directions pairwise inside the run
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
        A=An[reps].reshape(len(reps), d),
        c=cn[reps],
        rows=nonzero[reps],
        groups=[g for _, g in representatives],
        dominated=np.sort(np.concatenate(dominated)).astype(np.int64),
        infeasible=system.infeasible,
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


def empty_result(n_lps: int, screened: dict, failures=(), x=None, r=float("nan")) -> ActiveSet:
    return ActiveSet([], x, r, True, np.zeros(0, np.int64), list(failures), n_lps, screened)


def record_failure(on_failure: str, message: str, failures: list[str]) -> None:
    """Raise :class:`RegionLPError` (``on_failure="raise"``) or append ``message`` to ``failures``."""
    if on_failure == "raise":
        raise RegionLPError(message)
    failures.append(message)
