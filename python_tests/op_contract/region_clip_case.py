"""The :class:`OpCase` of op family 6, ``region_clip_2d`` (exact 2-D region geometry), for the op-contract suite.

Its reference is the linear-programming definition the op replaces (HiGHS through
:mod:`manifold_ext.relu_geometry.lp`): the same facets, radii and boundedness. The Chebyshev
*centre* is any maximiser of Eq. 8, so the comparison checks that the op's centre lies in its
region with the reference's radius, instead of comparing the two centres.

Registered in ``cases.py``: ``from op_contract.region_clip_case import REGION_CLIP_2D`` at the end
of the cases, and ``REGION_CLIP_2D`` in ``CASES``.
"""

from __future__ import annotations

import numpy as np
import torch

from manifold_ext.ops.region_clip import region_clip_2d
from manifold_ext.reference._spec import reference_of
from op_contract.cases import F64, Maker, OpCase, Sample

TOL = 1e-7


@reference_of(region_clip_2d)
def region_clip_2d_reference(A, c, ignore, box, tol):
    """Eq. 6-8 by linear programs, one region at a time (HiGHS; rows normalised and grouped as the op does)."""
    from manifold_ext.relu_geometry.lp import INTERIOR_RADIUS_CAP, Box, RegionSystem
    from manifold_ext.relu_geometry.lp import _active_set as active_set
    from manifold_ext.relu_geometry.lp.highs import _chebyshev_highs, is_bounded_highs

    P, H = c.shape
    box_ = None if box is None else Box(box[0].double().numpy(), box[1].double().numpy())
    facet_of = torch.full((P, H), -1, dtype=torch.int64)
    centre, radius = torch.zeros(P, 2, dtype=F64), torch.zeros(P, dtype=F64)
    bounded, ok = torch.ones(P, dtype=torch.bool), torch.ones(P, dtype=torch.bool)
    for i in range(P):
        a, b, zero = A[i].numpy(), c[i].numpy(), ignore[i].numpy()
        keep = ~zero & (np.linalg.norm(a, axis=1) > 0)
        infeasible = bool(np.any(b[~zero & ~keep] < 0))
        if infeasible:
            radius[i] = -float("inf")
            continue
        norms = np.linalg.norm(a[keep], axis=1)
        okay, x, r, _, _ = _chebyshev_highs(
            a[keep] / norms[:, None], b[keep] / norms, box_, None if box_ is not None else INTERIOR_RADIUS_CAP
        )
        radius[i], centre[i] = r, torch.from_numpy(x)
        if not r > tol:
            continue
        act = active_set(RegionSystem(a, b, ~keep, False), box_, tol, "highs", "raise")
        for group in act.groups:
            facet_of[i, torch.from_numpy(group)] = int(group.min())
        if box_ is None:
            rows = act.bits if len(act.bits) else np.flatnonzero(keep)
            bounded[i] = is_bounded_highs(a[rows] / np.linalg.norm(a[rows], axis=1, keepdims=True), tol)
    return facet_of, centre, radius, bounded, ok


def _regions(p, m: Maker) -> Sample:
    """Systems of ``P`` regions of a random 2-D network (rows one per hidden unit), a few rows ignored."""
    from manifold_ext.relu_geometry import ReLUNetwork

    P, widths = p["regions"], p["widths"]
    net = ReLUNetwork.random(2, widths, seed=int(m.rand01(()).item() * 1e6))
    points = (m.rand01((P, 2)) * 2 - 1) * p.get("spread", 1.0)
    A, c, _, _ = net.systems(net.patterns(points))
    A = m._finish(torch.from_numpy(A).to(m.dtype), grad=False)
    c = m._finish(torch.from_numpy(c).to(m.dtype), grad=False)
    ignore = m.bools(c.shape, p=p.get("ignored", 0.0))
    box = None if not p["box"] else torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=F64).to(m.device)
    return Sample((A, c, ignore, box, TOL), {}, f"P{P}-{widths}-{'box' if p['box'] else 'R2'}")


def _check(case, sample, outputs, dtype) -> None:
    """Facets, radii, boundedness and ok equal the LP definition's; each centre lies in its region, as deep as the
    radius (any maximiser of Eq. 8 is a Chebyshev centre)."""
    A, c, ignore, box, tol = sample.args
    facet_of, centre, radius, bounded, ok = outputs
    want = region_clip_2d_reference(A.cpu(), c.cpu(), ignore.cpu(), None if box is None else box.cpu(), tol)
    assert torch.equal(ok, want[4]), "region_clip_2d: ok differs from the LP path"
    nonempty = want[2] > tol
    assert torch.equal(facet_of[nonempty], want[0][nonempty]), "region_clip_2d: facets differ from the LP path"
    assert torch.equal(radius > tol, nonempty), "region_clip_2d: empty regions differ from the LP path"
    capped = torch.clamp(want[2][nonempty], max=1.0)
    torch.testing.assert_close(radius[nonempty], capped, rtol=0, atol=1e-8)
    if box is None:
        assert torch.equal(bounded[nonempty], want[3][nonempty]), "region_clip_2d: boundedness differs"
    for i in nonempty.nonzero().flatten().tolist():
        rows = ~ignore[i]
        a, b = A[i][rows], c[i][rows]
        depth = (b - a @ centre[i]) / torch.linalg.vector_norm(a, dim=1)
        if box is not None:
            depth = torch.cat([depth, centre[i] - box[0], box[1] - centre[i]])
        assert depth.min() >= radius[i] - 1e-8, "region_clip_2d: the centre is not as deep as the radius"


def _strategy():
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        dict(
            regions=st.integers(0, 6),
            widths=st.sampled_from([(4,), (6, 5), (5, 5, 5)]),
            box=st.booleans(),
            ignored=st.sampled_from([0.0, 0.2]),
        )
    )


REGION_CLIP_2D = OpCase(
    name="region_clip_2d",
    op=region_clip_2d,
    reference=region_clip_2d_reference,
    build=_regions,
    differentiable=False,
    dtypes=(F64,),
    params=[
        dict(regions=9, widths=(6, 5), box=True),
        dict(regions=9, widths=(6, 5), box=False),
        dict(regions=5, widths=(10, 10, 10), box=False, spread=3.0),
        dict(regions=7, widths=(8,), box=True, ignored=0.2),
        dict(regions=0, widths=(4,), box=True),
    ],
    big_params=[dict(regions=600, widths=(12, 12), box=False, spread=2.0)],
    check=_check,
    nan_rule="raises",
    nan_error="finite",
    strategy=_strategy,
)
