"""Analyses of learned densities and manifolds.

* :mod:`~manifold_ext.analysis.geodesic`: probability-weighted geodesics (slides ``002_…``).
"""
from manifold_ext.analysis.geodesic import (
    GeodesicResult,
    diffusion_score_fn,
    gaussian_mixture_log_prob,
    path_lengths,
    resample_path,
    score_from_log_prob,
    straight_line,
    weighted_geodesic,
)

__all__ = [
    "GeodesicResult",
    "weighted_geodesic",
    "path_lengths",
    "straight_line",
    "resample_path",
    "gaussian_mixture_log_prob",
    "diffusion_score_fn",
    "score_from_log_prob",
]
