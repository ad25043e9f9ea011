"""2-D point sets for the diffusion demos (paper 000 Fig. 5), from scikit-learn or generated.

Normalisation: every set is centred on its mean and scaled by one isotropic
factor so that its overall standard deviation, sqrt((var_x + var_y) / 2), is 1.
All sets then occupy the same region at the same scale, and a difference in
log p reflects the shape, not the position or size.
"""

from __future__ import annotations

import numpy as np
import torch

from manifold_ext._optional import require

POINT_SETS = ("swiss_roll", "circle", "moons", "s_curve")


def normalise(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(0)
    return centred / np.sqrt(centred.var(0).mean())


def raw_point_set(kind: str, n: int, seed: int, noise: float = 0.05) -> np.ndarray:
    """``n`` 2-D points of ``kind`` before normalisation; ``noise`` is relative to the set's size."""
    rng = np.random.default_rng(seed)
    if kind not in POINT_SETS:
        raise ValueError(f"unknown point set '{kind}'; expected one of {', '.join(POINT_SETS)}")
    datasets = require("sklearn.datasets", feature="the toy point sets") if kind != "circle" else None
    if kind == "swiss_roll":  # x = t cos t, z = t sin t, t in [1.5 pi, 4.5 pi]; std ~ 7
        points, _ = datasets.make_swiss_roll(n, noise=0.0, random_state=seed)
        points = points[:, [0, 2]]
        return points + rng.normal(scale=noise * 7.0, size=points.shape)
    if kind == "circle":
        angle = rng.uniform(0, 2 * np.pi, n)
        points = np.stack([np.cos(angle), np.sin(angle)], 1)
        return points + rng.normal(scale=noise * 0.7, size=points.shape)
    if kind == "moons":
        points, _ = datasets.make_moons(n, noise=0.0, random_state=seed)
        return points + rng.normal(scale=noise * 0.7, size=points.shape)
    if kind == "s_curve":
        points, _ = datasets.make_s_curve(n, noise=0.0, random_state=seed)
        points = points[:, [0, 2]]
        return points + rng.normal(scale=noise * 1.2, size=points.shape)


def point_set(kind: str, n: int, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """``[n, 2]`` float32 points of ``kind``, normalised (see the module docstring)."""
    return torch.tensor(normalise(raw_point_set(kind, n, seed, noise)), dtype=torch.float32)


def swiss_roll_curve(n: int = 20_000) -> torch.Tensor:
    """The noiseless Swiss-roll curve, normalised like ``point_set('swiss_roll')`` is on average:
    the data manifold for sample-quality distances."""
    t = np.linspace(1.5 * np.pi, 4.5 * np.pi, n)
    curve = np.stack([t * np.cos(t), t * np.sin(t)], 1)
    # Same affine map as a large normalised sample (mean and scale of the set with noise).
    reference = raw_point_set("swiss_roll", 200_000, seed=12345)
    centre, scale = reference.mean(0), np.sqrt((reference - reference.mean(0)).var(0).mean())
    return torch.tensor((curve - centre) / scale, dtype=torch.float32)
