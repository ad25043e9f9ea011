"""Property-based tests of the ReLU geometry layer (issue 13): random small networks, degenerate
ones included, against brute-force enumeration over all 2^H patterns.

The default run is fixed and bounded (derandomised, a few dozen examples) so the suite stays fast
and deterministic; under a deeper hypothesis profile (``--hypothesis-profile=thorough``, any profile
with more than 100 examples) these tests take that profile's example count and search at random.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relu_geometry_cases import brute_force_regions, degenerate_networks

from manifold_ext.relu_geometry import enumerate_regions, sample_patterns

pytestmark = pytest.mark.usefixtures("one_thread")

DEEP = settings.default.max_examples > 100  # a thorough profile was loaded
BOUNDED = settings(
    max_examples=settings.default.max_examples if DEEP else 30,
    derandomize=not DEEP,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _enumerated(net, box, method):
    result = enumerate_regions(net, box=box, method=method, executor=None, progress=False)
    assert not result.failures, result.failures
    keys = [p.tobytes() for p in result.patterns]
    assert len(keys) == len(set(keys)), "a region was reported twice"
    return result, set(keys)


@BOUNDED
@given(net=degenerate_networks(dims=(2,)), in_box=st.booleans())
def test_2d_enumeration_equals_brute_force(net, in_box):
    box = (-1.0, 1.0) if in_box else None
    want = brute_force_regions(net, box)
    for method in ("clip", "highs"):
        result, got = _enumerated(net, box, method)
        assert got == want, (method, len(got), len(want))
        # Every interior point lies in its region (the patterns there are the regions').
        assert np.array_equal(net.patterns(result.interior_points).numpy(), result.patterns) or len(result) == 0


@BOUNDED
@given(net=degenerate_networks(dims=(3,), max_units=7), in_box=st.booleans())
def test_3d_enumeration_equals_brute_force(net, in_box):
    box = (-1.0, 1.0) if in_box else None
    _, got = _enumerated(net, box, "highs")
    assert got == brute_force_regions(net, box)


@BOUNDED
@given(net=degenerate_networks(dims=(2, 3)))
def test_sampled_patterns_are_enumerated(net):
    box = (-1.0, 1.0)
    _, got = _enumerated(net, box, "auto")
    sampled = sample_patterns(net, box, 4000, seed=1)
    assert {p.tobytes() for p in sampled} <= got


@settings(BOUNDED, max_examples=settings.default.max_examples if DEEP else 15)
@given(net=degenerate_networks(dims=(2,)), in_box=st.booleans())
def test_2d_op_and_lp_paths_agree_region_by_region(net, in_box):
    """Facets, radii and boundedness of every region from the exact op equal the LP paths'."""
    from manifold_ext.relu_geometry import active_set, is_bounded

    box = (-1.0, 1.0) if in_box else None
    result, _ = _enumerated(net, box, "clip")
    for region, radius in zip(result.regions(net), result.radii):
        clip = active_set(region, box, method="clip")
        lp = active_set(region, box, method="highs")
        reference = active_set(region, box, method="cvxpy")
        assert np.array_equal(clip.bits, lp.bits) and np.array_equal(clip.bits, reference.bits)
        assert [g.tolist() for g in clip.groups] == [g.tolist() for g in lp.groups]
        assert abs(min(clip.radius, 1.0) - min(lp.radius, 1.0)) < 1e-7 and abs(clip.radius - radius) < 1e-12
    if box is None and len(result):
        assert [is_bounded(r) for r in result.regions(net)] == result.bounded.tolist()
