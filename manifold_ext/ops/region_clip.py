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

from manifold_ext.ops._dispatch import call_op


def region_clip_2d(
    A: torch.Tensor, c: torch.Tensor, ignore: torch.Tensor, box: torch.Tensor | None, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Facets, Chebyshev centre/radius and boundedness of a batch of 2-D regions ``A x <= c``.

    Each region is the polygon of its rows (Eq. 5) cut to ``box``; the facets (Eq. 6: ``max a_i.x``
    over the other rows and the box exceeds ``c_i + tol``, or is unbounded), the Chebyshev centre
    and radius (Eq. 7-8) and boundedness are read off polygons built by clipping, the same answers
    as the linear programs of :mod:`manifold_ext.relu_geometry.lp` (rows normalised to unit length,
    rows with the same hyperplane grouped into one facet).

    Args:
        A: the regions' rows, e.g. from :func:`manifold_ext.ops.region_system`.
        c: their right-hand sides.
        ignore: rows to leave out (zero rows: their unit is constant on the region; the caller
            decides whether that makes the region empty).
        box: rows ``lo`` and ``hi`` of the box, or ``None`` for all of R^2.
        tol: the distance tolerance.

    Returns:
        ``(facet_of, centre, radius, bounded, ok)``: ``facet_of`` is -1 for a redundant or ignored
        row and, for a facet row, the index of the row representing its facet group (the first
        of the rows with that hyperplane); ``centre`` and ``radius`` are a Chebyshev centre and the
        radius within the box (capped at 1 without one; ``<= tol`` means no interior, and then
        ``facet_of`` is all -1); ``bounded`` tells whether the region is bounded (without a box);
        ``ok`` is false where rounding made a polygon inconsistent: use the LP path for that region.

    Shapes:
        ``A [P, H, 2]``, ``c [P, H]``, ``ignore [P, H]``, ``box [2, 2]``; outputs ``facet_of [P, H]``,
        ``centre [P, 2]``, ``radius [P]``, ``bounded [P]``, ``ok [P]``. ``P = 0`` and ``H = 0`` work.

    Dtypes and devices:
        ``A``, ``c``, ``box`` float64; ``ignore`` bool; outputs int64, float64, float64, bool, bool.
        CPU only, by design (a region is a few hundred branchy flops; see
        ``csrc/region_clip/region_clip_cpu.cpp``); meta tensors give the output shapes. Any
        strides. Not differentiable (the outputs are combinatorial or a maximiser).

    Numerics:
        Every polygon vertex is the exact intersection of its two lines (its error does not grow
        with the clipping); rows whose normals agree within 1e-9 are parallel. NaN or infinity
        in ``A``, ``c`` or ``box`` raises (the NaN rule: a clear error, no result). The result
        does not depend on the number of threads.

    Raises:
        ValueError: a shape, dtype or device other than the above, non-finite values, a box with
            ``lo >= hi``, or ``tol`` not a finite number ``> 0``.
    """
    return call_op(torch.ops.manifold_ext.region_clip_2d.default, A, c, ignore, box, float(tol))


@torch.library.register_fake("manifold_ext::region_clip_2d")
def _region_clip_2d_fake(A, c, ignore, box, tol):
    torch._check(
        A.dim() == 3 and A.shape[2] == 2,
        lambda: f"region_clip_2d: A must have shape [P, H, 2] (2-D input), got {tuple(A.shape)}",
    )
    torch._check(
        A.dtype == torch.float64 and c.dtype == torch.float64,
        lambda: f"region_clip_2d: A and c must be float64, got {A.dtype} and {c.dtype}",
    )
    torch._check(
        tuple(c.shape) == tuple(A.shape[:2]),
        lambda: f"region_clip_2d: c must have shape {tuple(A.shape[:2])}, got {tuple(c.shape)}",
    )
    torch._check(
        ignore.dtype == torch.bool and tuple(ignore.shape) == tuple(c.shape),
        lambda: f"region_clip_2d: ignore must be bool {tuple(c.shape)}, got {ignore.dtype} {tuple(ignore.shape)}",
    )
    tensors = [A, c, ignore] + ([box] if box is not None else [])
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"region_clip_2d: all tensors must be on one device, got {sorted(map(str, devices))}")
    torch._check(
        A.device.type in ("cpu", "meta"),
        lambda: f"region_clip_2d: expected tensors on the CPU device (the op is CPU only), got {A.device}",
    )
    P, H = c.shape
    return (
        A.new_empty((P, H), dtype=torch.int64),
        A.new_empty((P, 2)),
        A.new_empty((P,)),
        A.new_empty((P,), dtype=torch.bool),
        A.new_empty((P,), dtype=torch.bool),
    )
