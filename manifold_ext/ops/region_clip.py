"""Exact 2-D region geometry (op family 6; paper 001, Liu et al., Eq. 5-8 for input dimension 2).

For a network with 2-D input every region is a polygon, so what the linear programs of
:mod:`manifold_ext.relu_geometry.lp` compute (facets by Eq. 6, Chebyshev centre and radius
by Eq. 7-8, boundedness) follows from clipping a box with half-planes, in C++, with no LP.
The answers are those of the LP definition (same tolerance, same facet groups); the
geometry layer (:func:`manifold_ext.relu_geometry.enumerate_regions`) uses this op for
``d = 2`` and checks it against the LP path in its tests.

CPU only, by design (see ``csrc/region_clip/region_clip_cpu.cpp``): the op is not
differentiable and works in float64.
"""
from __future__ import annotations

import torch


def region_clip_2d(A: torch.Tensor, c: torch.Tensor, ignore: torch.Tensor, box: torch.Tensor | None,
                   tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Facets, Chebyshev centre/radius and boundedness of a batch of 2-D regions ``A x <= c``.

    Args:
        A: ``float64 [P, H, 2]`` and c: ``float64 [P, H]``, e.g. from
            :func:`manifold_ext.ops.region_system`.
        ignore: ``bool [P, H]``: rows to leave out (zero rows, whose unit is constant on the
            region; the caller decides whether they make the region empty).
        box: ``float64 [2, 2]`` (rows ``lo``, ``hi``), or ``None`` for all of R^2.
        tol: the distance tolerance (rows are compared after normalisation to unit length).

    Returns:
        ``(facet_of, centre, radius, bounded, ok)``: ``facet_of int64 [P, H]`` is -1 for a
        redundant (or ignored) row and, for a facet row (Eq. 6: ``max a_i.x`` over the other
        rows and the box exceeds ``c_i + tol``, or is unbounded), the index of the row that
        represents its facet group (rows with the same hyperplane); ``centre [P, 2]`` and
        ``radius [P]`` are the Chebyshev centre and radius (Eq. 7-8) within the box, capped at
        1 without one; a radius ``<= tol`` means the region has no interior (then
        ``facet_of`` is all -1); ``bounded bool [P]`` (without a box); ``ok bool [P]`` is
        false where rounding made a polygon inconsistent: use the LP path for that region.
    """
    return torch.ops.manifold_ext.region_clip_2d.default(A, c, ignore, box, float(tol))


@torch.library.register_fake("manifold_ext::region_clip_2d")
def _region_clip_2d_fake(A, c, ignore, box, tol):
    torch._check(A.dim() == 3 and A.shape[2] == 2,
                 lambda: f"region_clip_2d: A must have shape [P, H, 2] (2-D input), got {tuple(A.shape)}")
    torch._check(A.dtype == torch.float64 and c.dtype == torch.float64,
                 lambda: f"region_clip_2d: A and c must be float64, got {A.dtype} and {c.dtype}")
    torch._check(tuple(c.shape) == tuple(A.shape[:2]),
                 lambda: f"region_clip_2d: c must have shape {tuple(A.shape[:2])}, got {tuple(c.shape)}")
    torch._check(ignore.dtype == torch.bool and tuple(ignore.shape) == tuple(c.shape),
                 lambda: f"region_clip_2d: ignore must be bool {tuple(c.shape)}, got {ignore.dtype} "
                         f"{tuple(ignore.shape)}")
    tensors = [A, c, ignore] + ([box] if box is not None else [])
    devices = {t.device for t in tensors}
    torch._check(len(devices) == 1, lambda: f"region_clip_2d: all tensors must be on one device, got {devices}")
    torch._check(A.device.type in ("cpu", "meta"),
                 lambda: f"region_clip_2d: expected CPU tensors (the op is CPU only), got {A.device}")
    P, H = c.shape
    return (A.new_empty((P, H), dtype=torch.int64), A.new_empty((P, 2)), A.new_empty((P,)),
            A.new_empty((P,), dtype=torch.bool), A.new_empty((P,), dtype=torch.bool))
