"""Analyses of learned densities and manifolds.

* :mod:`~manifold_ext.analysis.geodesic`: probability-weighted geodesics (slides ``002_…``).
* :mod:`~manifold_ext.analysis.attributes`: KL attribute analysis of a recognition manifold (000 §4.3).
* :mod:`~manifold_ext.analysis.lmd`: Lift, Map, Detect OOD detection with a diffusion model (``001_…``).
"""

from manifold_ext.analysis.attributes import (
    AttributeKL,
    AttributeKLReport,
    EmbeddingNet,
    attribute_kl,
    nearest_neighbours,
    supervised_contrastive_loss,
    train_embedding,
)
from manifold_ext.analysis.geodesic import (
    GeodesicResult,
    diffusion_score_fn,
    gaussian_mixture_log_prob,
    graph_path,
    path_lengths,
    resample_path,
    score_from_log_prob,
    straight_line,
    weighted_geodesic,
)
from manifold_ext.analysis.lmd import checkerboard_mask, inpaint, lmd_scores, mse_distance

__all__ = [
    "checkerboard_mask",
    "inpaint",
    "lmd_scores",
    "mse_distance",
    "attribute_kl",
    "AttributeKL",
    "AttributeKLReport",
    "nearest_neighbours",
    "EmbeddingNet",
    "train_embedding",
    "supervised_contrastive_loss",
    "GeodesicResult",
    "weighted_geodesic",
    "path_lengths",
    "graph_path",
    "straight_line",
    "resample_path",
    "gaussian_mixture_log_prob",
    "diffusion_score_fn",
    "score_from_log_prob",
]
