"""Polyhedral geometry of ReLU networks (paper 001, Liu, Caglar, Peterson and Kirby,
"Integrating geometries of ReLU feedforward neural networks").

A ReLU MLP cuts its input space into convex polyhedra, one per activation
pattern (Eq. 3-4), on each of which it is affine. This package computes, on
top of the compiled pattern ops (``manifold_ext.ops.activation_patterns``,
``region_system``, ``hamming_topk``):

* :class:`ReLUNetwork` (``from_module`` / ``from_weights``) and :class:`Region`
  (``A x <= c`` of Eq. 5 and the affine map);
* :func:`active_bits` / :func:`active_set`: the non-redundant inequalities
  (Eq. 6), fast (screening + one reused HiGHS model), by the plain cvxpy
  definition, or for 2-D input exactly by polygon clipping in C++
  (``manifold_ext.ops.region_clip``); :func:`neighbours` (patterns, and points)
  and :func:`point_across_facet`;
* :func:`enumerate_regions`: every region in a box or in R^d (Algorithm 1), with
  bounded/unbounded counts, through any ``concurrent.futures.Executor`` (Dask's
  included), in memory or streamed to disk (:func:`load_regions`);
* :func:`bisect_to_neighbour`: points along a segment one bit apart (Algorithm 2),
  with an exact crossing check;
* :func:`chebyshev_centre` (Eq. 7-8) and :func:`is_bounded`;
* :class:`HammingNearestNeighbour`: k-NN on patterns (Table 3).
"""

from manifold_ext.relu_geometry.bisection import BisectionPath, bisect_to_neighbour
from manifold_ext.relu_geometry.classify import HammingNearestNeighbour
from manifold_ext.relu_geometry.enumerate import enumerate_regions, sample_patterns
from manifold_ext.relu_geometry.facets import flip_units, neighbours, point_across_facet
from manifold_ext.relu_geometry.lp import (
    DEFAULT_TOL,
    ActiveSet,
    Box,
    RegionLPError,
    active_bits,
    active_set,
    as_box,
    chebyshev_centre,
    facet_groups,
    is_bounded,
)
from manifold_ext.relu_geometry.network import Region, ReLUNetwork
from manifold_ext.relu_geometry.results import EnumerationResult, EnumerationShards, load_regions

__all__ = [
    "ReLUNetwork",
    "Region",
    "Box",
    "as_box",
    "ActiveSet",
    "RegionLPError",
    "DEFAULT_TOL",
    "active_set",
    "active_bits",
    "facet_groups",
    "neighbours",
    "flip_units",
    "point_across_facet",
    "enumerate_regions",
    "EnumerationResult",
    "EnumerationShards",
    "load_regions",
    "sample_patterns",
    "bisect_to_neighbour",
    "BisectionPath",
    "chebyshev_centre",
    "is_bounded",
    "HammingNearestNeighbour",
]
