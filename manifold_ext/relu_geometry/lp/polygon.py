"""Polygon clipping in Python for 2-D regions (drawing, and the 2-D screen of the HiGHS path).

The enumeration uses the exact C++ op :func:`manifold_ext.ops.region_clip.region_clip_2d` instead.
"""

from __future__ import annotations

import numpy as np


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
