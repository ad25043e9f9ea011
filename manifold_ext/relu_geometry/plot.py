"""Drawing the polyhedral decomposition of a network with 2-D inputs (paper 001, Fig. 1)."""

from __future__ import annotations

import colorsys

import numpy as np

from manifold_ext.relu_geometry.lp import as_box, as_system, clip_polygon
from manifold_ext.relu_geometry.network import Region


def region_polygon(region: Region, box) -> np.ndarray:
    """Vertices ``[k, 2]`` (counter-clockwise) of ``region ∩ box`` for a 2-D input, by clipping the
    box polygon with each inequality (Sutherland-Hodgman). Empty ``[0, 2]`` if nothing is left."""
    if region.input_dim != 2:
        raise ValueError(f"region_polygon: needs a 2-D input space, got dimension {region.input_dim}")
    box = as_box(box, 2)
    system = as_system(region)  # zero rows decided as everywhere else (lp.zero_rows)
    if system.infeasible:
        return np.zeros((0, 2))
    return clip_polygon(box.lo, box.hi, system.A[~system.zero], system.c[~system.zero])


def affine_map_colour(W_hat: np.ndarray, b_hat: np.ndarray, scale: float) -> tuple[float, float, float]:
    """A colour for a scalar-output affine map: hue from the gradient's direction, brightness from
    its length (relative to ``scale``), so neighbouring regions with different maps stand apart."""
    g = np.asarray(W_hat, dtype=np.float64).reshape(-1)[:2]
    hue = (np.arctan2(g[1], g[0]) / (2 * np.pi)) % 1.0
    strength = float(np.clip(np.linalg.norm(g) / max(scale, 1e-12), 0.0, 1.0))
    return colorsys.hsv_to_rgb(hue, 0.25 + 0.75 * strength, 0.55 + 0.45 * strength)


def plot_regions(ax, regions: list[Region], box, *, edge_width: float = 0.3, title: str | None = None):
    """Fill each region's part of ``box`` with a colour from its affine map and outline it."""
    from matplotlib.collections import PolyCollection

    box = as_box(box, 2)
    scale = max((np.linalg.norm(r.W_hat[0]) for r in regions), default=1.0)
    polygons, colours = [], []
    for region in regions:
        poly = region_polygon(region, box)
        if len(poly) >= 3:
            polygons.append(poly)
            colours.append(affine_map_colour(region.W_hat[0], region.b_hat[0], scale))
    ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="k", linewidths=edge_width))
    ax.set_xlim(box.lo[0], box.hi[0])
    ax.set_ylim(box.lo[1], box.hi[1])
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return len(polygons)
