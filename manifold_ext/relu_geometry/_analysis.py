"""What a worker does with one batch of candidate patterns during :func:`enumerate_regions`.

For the batch: the systems (Eq. 5) and their scales in two calls of ``region_system``, the
zero rows decided row by row, then per region the facets (Eq. 6), an interior point and
radius (Eq. 7-8) and, without a box, boundedness: by the exact 2-D op for 2-D input
(``method="clip"``, regions where rounding defeats it go to HiGHS), else by the LP paths.
The result ships back only what the driver needs: for every non-empty region its point,
radius, facet count and boundedness, and the patterns across its facets (deduplicated
within the batch), so a batch of ``b`` regions costs about ``b * (8 (d + 2) + 8 w k)`` bytes
(``w`` words per pattern, ``k`` facets per region), never the regions' ``A`` and ``c``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from manifold_ext.relu_geometry.facets import exact_neighbour_patterns
from manifold_ext.relu_geometry.lp import Box, _active_set
from manifold_ext.relu_geometry.lp.definitions import RegionSystem, zero_rows
from manifold_ext.relu_geometry.lp.highs import is_bounded_highs


@dataclasses.dataclass
class BatchAnalysis:
    """One analysed batch: the non-empty regions' data and the patterns across their facets."""

    keep: np.ndarray  # [b] bool: the candidate is a region (has an interior)
    points: np.ndarray  # [r, d] Chebyshev centre of each kept region (within the box)
    radii: np.ndarray  # [r]
    num_facets: np.ndarray  # [r] int64
    bounded: np.ndarray | None  # [r] bool, without a box
    neighbours: np.ndarray  # [q, words] int64, first occurrences in order
    n_lps: int
    failures: list[str]
    fallbacks: int  # regions the 2-D op handed to the LP path


def analyse_batch(
    network, patterns: np.ndarray, box_array: np.ndarray | None, tol: float, check_bounded: bool, method: str
) -> BatchAnalysis:
    """Analyse the packed patterns ``[b, words]`` (runs in worker processes; arguments are plain data)."""
    box = None if box_array is None else Box(np.asarray(box_array[0]), np.asarray(box_array[1]))
    A, c, _, _ = network.systems(patterns)
    row_scale, offset_scale = network.system_scales(patterns)
    bits = np.unpackbits(np.ascontiguousarray(patterns).view(np.uint8), axis=1, bitorder="little")[
        :, : network.num_units
    ].astype(bool)
    zero, infeasible, zero_constant = zero_rows(A, c, row_scale, offset_scale, bits)
    b, H, d = A.shape
    facet_of = np.full((b, H), -1, dtype=np.int64)
    centre = np.zeros((b, d))
    radius = np.zeros(b)
    bounded = np.ones(b, dtype=bool)
    lp_regions = np.arange(b)
    failures: list[str] = []
    n_lps = 0
    fallbacks = 0
    if method == "clip":
        from manifold_ext.relu_geometry.lp.clip2d import clip_2d

        facet_of, centre, radius, bounded, ok = clip_2d(A, c, zero, box, tol)
        ok &= ~infeasible
        lp_regions = np.flatnonzero(~ok & ~infeasible)
        fallbacks = len(lp_regions)
        method = "highs"
    for i in lp_regions:
        act = _active_set(RegionSystem(A[i], c[i], zero[i], bool(infeasible[i])), box, tol, method, "report")
        n_lps += act.n_lps
        failures += [f"region {patterns[i].tolist()}: {message}" for message in act.failures]
        for group in act.groups:
            facet_of[i, group] = group.min()
        radius[i] = 0.0 if act.empty else act.radius  # NaN when the Chebyshev LP failed (reported)
        if act.interior_point is not None:
            centre[i] = act.interior_point
        if check_bounded and not act.empty:
            bounded[i] = _bounded(A[i], zero[i], act, tol, failures, patterns[i])
    keep = ~infeasible & (radius > tol)
    neighbours, _ = exact_neighbour_patterns(
        network, patterns[keep], facet_of[keep], A[keep], zero_constant[keep], row_scale[keep]
    )
    if len(neighbours):
        _, first = np.unique(neighbours, axis=0, return_index=True)
        neighbours = neighbours[np.sort(first)]
    return BatchAnalysis(
        keep=keep,
        points=centre[keep],
        radii=radius[keep],
        num_facets=_count_groups(facet_of[keep]),
        bounded=bounded[keep] if check_bounded else None,
        neighbours=neighbours,
        n_lps=n_lps,
        failures=failures,
        fallbacks=fallbacks,
    )


def _count_groups(facet_of: np.ndarray) -> np.ndarray:
    """Facets (groups) per region: the rows that represent their own group."""
    return (facet_of == np.arange(facet_of.shape[1])[None, :]).sum(axis=1).astype(np.int64)


def _bounded(A, zero, act, tol, failures, pattern) -> bool:
    """The recession cone only needs the facets (redundant rows do not change the region)."""
    rows = act.bits if len(act.bits) else np.flatnonzero(~zero)
    An = A[rows] / np.linalg.norm(A[rows], axis=1, keepdims=True)
    try:
        return is_bounded_highs(An, tol)
    except Exception as error:  # reported, never guessed
        failures.append(f"region {pattern.tolist()}: boundedness LP failed: {error}")
        return False
