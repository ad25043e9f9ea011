"""Crossing a facet: the neighbouring region's pattern (exact, also for degenerate networks) and a
point inside it (found with the exact bisection of Algorithm 2).

Across facet F of region P (a generic point z of F, the outward normal n) the units that can
change their bit are those whose pre-activation vanishes on F: the facet group's units (their
hyperplane is F's) and the units constant at 0 on P (zero rows with a zero constant: in a
bias-free network, for instance, every unit of layer 2 is 0 on the region where layer 1 is
off). Any other unit keeps its sign near z. Each vanishing unit is linear on the far side with
value 0 on F, so its new bit is the sign of its gradient there along n, and that gradient
depends only on the bits of earlier layers: the bits are settled layer by layer (Eq. 3-5).
When every vanishing unit is in the facet group's first layer (the usual case) this is just
"flip the group's bits" and needs no new system; otherwise the systems of the partly updated
pattern give the gradients of the next layer.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from manifold_ext.relu_geometry._checks import as_int
from manifold_ext.relu_geometry.lp import DEFAULT_TOL, RegionLPError, active_set, as_box, as_system
from manifold_ext.relu_geometry.lp.definitions import ZERO_ROW_RTOL, normalise_system, zero_rows


def flip_units(pattern: np.ndarray, units: Iterable[int]) -> np.ndarray:
    """A copy of a packed pattern ``[words]`` with the bits of ``units`` flipped."""
    flipped = np.array(pattern, dtype=np.int64, copy=True).view(np.uint64)
    for unit in units:
        flipped[int(unit) // 64] ^= np.uint64(1) << np.uint64(int(unit) % 64)
    return flipped.view(np.int64)


def unit_layers(network) -> np.ndarray:
    """The hidden layer (0-based) of every hidden unit, ``int64 [H]``."""
    return np.repeat(np.arange(len(network.hidden_sizes)), network.hidden_sizes)


def exact_neighbour_patterns(
    network, patterns: np.ndarray, facet_of: np.ndarray, A: np.ndarray, zero_constant: np.ndarray, row_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pattern across every facet of every region (see the module docstring).

    Args:
        network: the :class:`~manifold_ext.relu_geometry.network.ReLUNetwork`.
        patterns: ``int64 [r, words]`` non-empty regions.
        facet_of: ``int64 [r, H]``: -1, or the row representing the row's facet group.
        A: ``[r, H, d]`` the regions' rows (the facet normal is its representative's row).
        zero_constant: ``bool [r, H]``: units constant at 0 on the region.
        row_scale: ``[r, H]``: the rows' scales (:meth:`~manifold_ext.relu_geometry.ReLUNetwork.system_scales`),
            below which a gradient counts as zero.

    Returns:
        ``(neighbours int64 [q, words], owner int64 [q])``: one pattern per facet, regions in order
        and each region's facets by representative row.
    """
    r, H = facet_of.shape
    region, unit = np.nonzero(facet_of >= 0)
    if len(region) == 0:
        return np.zeros((0, patterns.shape[1]), dtype=np.int64), np.zeros(0, dtype=np.int64)
    rep = facet_of[region, unit]
    pair_keys, pair_of_row = np.unique(region * H + rep, return_inverse=True)
    owner = pair_keys // H
    out = patterns[owner].copy().view(np.uint64)
    np.bitwise_xor.at(out, (pair_of_row, unit // 64), np.left_shift(np.uint64(1), (unit % 64).astype(np.uint64)))
    if len(pair_keys) == len(unit) and not zero_constant.any():
        return out.view(np.int64), owner  # the usual case: one unit per facet, none constant at 0
    # Units that vanish on a facet in a layer after the group's first: settle them layer by layer.
    layers = unit_layers(network)
    group_first = np.full(len(pair_keys), len(network.hidden_sizes), dtype=np.int64)
    group_last = np.full(len(pair_keys), -1, dtype=np.int64)
    np.minimum.at(group_first, pair_of_row, layers[unit])
    np.maximum.at(group_last, pair_of_row, layers[unit])
    zero_last = np.where(zero_constant, layers[None, :], -1).max(axis=1)
    settle = np.flatnonzero((group_last > group_first) | (zero_last[owner] > group_first))
    for q in settle:
        i, rep_row = int(owner[q]), int(pair_keys[q] % H)
        group = np.flatnonzero(facet_of[i] == rep_row)
        normal = A[i, rep_row] / np.linalg.norm(A[i, rep_row])
        out[q] = _settle_layer_by_layer(
            network, patterns[i], group, np.flatnonzero(zero_constant[i]), normal, A[i], row_scale[i], layers
        ).view(np.uint64)
    return out.view(np.int64), owner


def _settle_layer_by_layer(network, pattern, group, zero_units, normal, A, row_scale, layers) -> np.ndarray:
    """The pattern across the facet with outward ``normal`` whose group is ``group`` (see the module docstring)."""
    H = network.num_units
    bits = network_bits(pattern, H)
    vanishing = np.union1d(group, zero_units)
    rows, scales = A, row_scale  # the gradients' rows: the region's own until an earlier layer changes
    changed = False
    for layer in np.unique(layers[vanishing]):
        units = vanishing[layers[vanishing] == layer]
        if changed:
            packed = pack_bits(bits)
            rows = network.systems(packed[None])[0][0]
            scales = network.system_scales(packed[None])[0][0]
        sign = np.where(bits[units], -1.0, 1.0)  # A_k = s'_k W_hat_k: +1 for inactive, -1 for active units
        gradient = sign[:, None] * rows[units]  # W_hat_k on the far side (depends on earlier layers only)
        slope = gradient @ normal
        floor = ZERO_ROW_RTOL * scales[units]
        new = slope > floor  # a unit constant at 0 on the far side stays off (Eq. 3: active iff > 0)
        changed |= bool(np.any(new != bits[units]))
        bits[units] = new
    return pack_bits(bits)


def network_bits(pattern: np.ndarray, num_units: int) -> np.ndarray:
    """A packed pattern ``[words]`` unpacked to ``bool [num_units]``."""
    as_bytes = np.ascontiguousarray(pattern, dtype=np.int64).view(np.uint8)
    return np.unpackbits(as_bytes, bitorder="little")[:num_units].astype(bool)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """``bool [H]`` packed into ``int64 [ceil(H / 64)]`` (LSB first, as activation_patterns)."""
    words = (len(bits) + 63) // 64
    padded = np.zeros(words * 64, dtype=bool)
    padded[: len(bits)] = bits
    return np.packbits(padded, bitorder="little").view(np.int64).copy()


def neighbours(
    region, box=None, *, tol: float = DEFAULT_TOL, method: str = "highs", network=None, return_points: bool = False
):
    """Packed patterns ``[q, words]`` of the regions across each facet of ``region`` (within ``box``).

    Args:
        region: a :class:`~manifold_ext.relu_geometry.network.Region`.
        box, tol, method: as :func:`~manifold_ext.relu_geometry.active_set`.
        network: the region's network. With it the patterns are exact for every network (units
            whose pre-activation vanishes on the facet in several layers are settled layer by
            layer, see the module docstring); without it each facet's group of bits is flipped,
            which is exact unless such units exist (degenerate networks, e.g. bias-free ones).
        return_points: also return a point inside each neighbour, ``[q, d]`` (needs ``network``;
            see :func:`point_across_facet`).

    Returns:
        ``patterns`` or, with ``return_points``, ``(patterns, points)``; facets in the order of
        ``active_set(region, box).groups``.
    """
    if return_points and network is None:
        raise ValueError(
            "neighbours: return_points=True needs network= (the points are found by bisection through the network)"
        )
    act = active_set(region, box, tol=tol, method=method)
    words = len(region.pattern)
    if not act.groups:
        patterns = np.zeros((0, words), dtype=np.int64)
        return (patterns, np.zeros((0, region.input_dim))) if return_points else patterns
    if network is None:
        patterns = np.stack([flip_units(region.pattern, g) for g in act.groups])
    else:
        facet_of = np.full((1, region.num_units), -1, dtype=np.int64)
        for group in act.groups:
            facet_of[0, group] = group.min()
        row_scale = region.row_scale if region.row_scale is not None else np.linalg.norm(region.A, axis=1)
        _, _, zero_constant = zero_rows(region.A, region.c, region.row_scale, region.offset_scale, region.bits)
        patterns, _ = exact_neighbour_patterns(
            network, region.pattern[None], facet_of, region.A[None], zero_constant[None], row_scale[None]
        )
    if not return_points:
        return patterns
    points = np.stack(
        [
            point_across_facet(network, region, k, box, tol=tol, method=method, active=act)[0]
            for k in range(len(act.groups))
        ]
    )
    return patterns, points


def point_across_facet(
    network, region, facet: int, box=None, *, tol: float = DEFAULT_TOL, method: str = "highs", active=None
) -> tuple[np.ndarray, np.ndarray]:
    """A point inside the region across facet ``facet`` of ``region``, and that region's pattern.

    Facet ``k`` is ``active_set(region, box).groups[k]``. The segment from the region's Chebyshev
    centre to a point just beyond the facet that satisfies every other inequality (one HiGHS LP)
    crosses the facet's hyperplane and no other of the region's; the exact bisection
    (:func:`~manifold_ext.relu_geometry.bisect_to_neighbour`, every crossing checked against both
    regions' systems) finds where, and the point returned is the middle of the segment's stretch
    in the next region.

    Returns:
        ``(point [d], pattern int64 [words])``.
    """
    from manifold_ext.relu_geometry.bisection import bisect_to_neighbour
    from manifold_ext.relu_geometry.lp.highs import _HighsModel

    act = active if active is not None else active_set(region, box, tol=tol, method=method)
    facet = as_int(facet, "point_across_facet: facet", minimum=0)
    if facet >= len(act.groups):
        raise ValueError(
            f"point_across_facet: facet must be < {len(act.groups)} (the region's facets within the box), got {facet}"
        )
    box = as_box(box, region.input_dim)
    system = normalise_system(as_system(region))
    group = act.groups[facet]
    k = int(np.flatnonzero(np.isin(system.rows, group))[0])
    x0, radius = act.interior_point, act.radius
    # max u_k.x over the other rows (and the box), with u_k.x <= e_k + radius: a point beyond the facet.
    M = system.A
    hi = system.c.copy()
    hi[k] += min(radius, 1.0)
    d = region.input_dim
    lo_col = np.full(d, -np.inf) if box is None else box.lo
    hi_col = np.full(d, np.inf) if box is None else box.hi
    model = _HighsModel(M, hi, lo_col, hi_col)
    model.set_objective(system.A[k])
    ok, value, beyond, status = model.solve()
    if not ok or value <= system.c[k]:
        raise RegionLPError(f"point_across_facet: the LP for a point beyond facet {facet} failed ({status})")
    path = bisect_to_neighbour(network, x0, beyond)
    if path.num_regions < 2:
        raise RegionLPError(f"point_across_facet: the bisection from the centre across facet {facet} found no crossing")
    end = path.crossings[1] if len(path.crossings) > 1 else 1.0
    t = 0.5 * (path.crossings[0] + end)
    point = x0 + t * (beyond - x0)
    pattern = network.patterns(point[None]).numpy()[0]
    if not np.array_equal(pattern, path.patterns[1]):  # the middle fell on a boundary: use the bisection's point
        point, pattern = path.points[1], path.patterns[1]
    return point, pattern
