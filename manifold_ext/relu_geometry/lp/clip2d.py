"""The exact 2-D path: the region_clip_2d op (no LP) behind the same definitions as the LP paths."""

from __future__ import annotations

import numpy as np
import torch

from manifold_ext.ops.region_clip import region_clip_2d
from manifold_ext.relu_geometry.lp.definitions import ActiveSet, Box, RegionSystem, empty_result


def clip_2d(A: np.ndarray, c: np.ndarray, zero: np.ndarray, box: Box | None, tol: float):
    """:func:`~manifold_ext.ops.region_clip.region_clip_2d` on NumPy arrays ``A [P, H, 2]``, ``c [P, H]``,
    ``zero [P, H]``: ``(facet_of, centre, radius, bounded, ok)`` as NumPy arrays."""
    box_t = None if box is None else torch.from_numpy(box.as_array())
    out = region_clip_2d(
        torch.from_numpy(np.ascontiguousarray(A, dtype=np.float64)),
        torch.from_numpy(np.ascontiguousarray(c, dtype=np.float64)),
        torch.from_numpy(np.ascontiguousarray(zero, dtype=bool)),
        box_t,
        tol,
    )
    return tuple(t.numpy() for t in out)


def groups_from_facet_of(facet_of: np.ndarray) -> list[np.ndarray]:
    """Facet groups (hidden units) from one region's ``facet_of [H]``, ordered by representative row."""
    rows = np.flatnonzero(facet_of >= 0)
    if len(rows) == 0:
        return []
    reps = facet_of[rows]
    return [rows[reps == r] for r in np.unique(reps)]


def active_set_clip(region: RegionSystem, box: Box | None, tol: float) -> ActiveSet | None:
    """Facets of a 2-D region by polygon clipping; ``None`` where rounding made the polygon
    inconsistent (the caller then uses an LP path)."""
    if region.infeasible:
        return empty_result(0, {"clip": 0})
    facet_of, centre, radius, _, ok = clip_2d(region.A[None], region.c[None], region.zero[None], box, tol)
    if not ok[0]:
        return None
    if not radius[0] > tol:
        return empty_result(0, {"clip": 1}, x=centre[0], r=float(radius[0]))
    return ActiveSet(
        groups_from_facet_of(facet_of[0]), centre[0], float(radius[0]), False, np.zeros(0, np.int64), [], 0, {"clip": 1}
    )
