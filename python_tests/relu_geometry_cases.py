"""Shared by the ReLU-geometry tests: small networks (degenerate ones too) and a brute-force enumeration.

The brute force is the definition taken literally: every one of the 2^H patterns is a region iff
its system (Eq. 5), zero rows decided as in :func:`manifold_ext.relu_geometry.lp.zero_rows`, has a
Chebyshev radius (Eq. 7-8, HiGHS, within the box) above ``tol``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import strategies as st

from manifold_ext.ops import pack_patterns
from manifold_ext.relu_geometry import ReLUNetwork, chebyshev_centre
from manifold_ext.relu_geometry.lp import DEFAULT_TOL


def all_patterns(num_units: int) -> torch.Tensor:
    bits = torch.tensor(list(itertools.product([False, True], repeat=num_units)), dtype=torch.bool)
    return pack_patterns(bits.reshape(-1, num_units))


def brute_force_regions(net: ReLUNetwork, box=None, tol: float = DEFAULT_TOL) -> set[bytes]:
    """Packed bytes of every pattern whose region has an interior (radius > tol), by trying all 2^H."""
    found = set()
    for region in net.regions(all_patterns(net.num_units)):
        _, radius = chebyshev_centre(region, box)
        if radius > tol:
            found.add(region.pattern.tobytes())
    return found


def spread_network(widths, d, seed, out=1) -> ReLUNetwork:
    """A random network with realistic region counts (:meth:`ReLUNetwork.random`)."""
    return ReLUNetwork.random(d, widths, seed=seed, outputs=out)


@st.composite
def degenerate_networks(draw, dims=(2, 3), max_units: int = 8):
    """Small networks with integer weights (so coincidences are exact) and, drawn at random,
    the degenerate cases of issue 13: bias-free, duplicated (or negated) units, zero rows, a dead
    layer, units rescaled by a large or small factor (same function)."""
    d = draw(st.sampled_from(dims))
    depth = draw(st.integers(1, 2))
    widths = [draw(st.integers(1, 4)) for _ in range(depth)]
    while sum(widths) > max_units:
        widths[-1] -= 1
    ints = st.integers(-2, 2)
    weights, biases, fan_in = [], [], d
    for width in widths:
        weights.append(
            np.array(
                draw(st.lists(st.lists(ints, min_size=fan_in, max_size=fan_in), min_size=width, max_size=width)),
                dtype=np.float64,
            )
        )
        biases.append(np.array(draw(st.lists(ints, min_size=width, max_size=width)), dtype=np.float64))
        fan_in = width
    weights.append(
        np.array(
            draw(st.lists(st.lists(ints, min_size=fan_in, max_size=fan_in), min_size=1, max_size=1)), dtype=np.float64
        )
    )
    biases.append(np.zeros(1))
    if draw(st.booleans()):  # bias-free: every hyperplane through the origin
        biases = [np.zeros_like(b) for b in biases]
    layer = draw(st.integers(0, depth - 1))
    if widths[layer] >= 2 and draw(st.booleans()):  # a duplicated (or negated) unit
        sign = draw(st.sampled_from([1.0, -1.0, 2.0]))
        weights[layer][1] = sign * weights[layer][0]
        biases[layer][1] = sign * biases[layer][0]
    if draw(st.booleans()):  # a zero row: a unit constant everywhere
        unit = draw(st.integers(0, widths[layer] - 1))
        weights[layer][unit] = 0.0
        biases[layer][unit] = draw(st.sampled_from([0.0, 1.0, -1.0]))
    if depth == 2 and draw(st.booleans()):  # a dead second layer: its inputs are >= 0, its weights <= 0
        weights[1] = -np.abs(weights[1])
        biases[1] = -np.abs(biases[1])
    if draw(st.booleans()):  # rescale one unit (same function)
        unit = draw(st.integers(0, widths[layer] - 1))
        factor = 10.0 ** draw(st.sampled_from([-6, 6, 14]))
        weights[layer][unit] *= factor
        biases[layer][unit] *= factor
        weights[layer + 1][:, unit] /= factor
    return ReLUNetwork.from_weights(weights, biases)
