"""Op family 6, region_clip_2d: exact 2-D region geometry without an LP, against the LP definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from relu_geometry_cases import spread_network

from manifold_ext.ops.region_clip import region_clip_2d
from manifold_ext.relu_geometry import active_set, is_bounded, sample_patterns
from manifold_ext.relu_geometry.lp import zero_rows

pytestmark = pytest.mark.usefixtures("one_thread")
BOX = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)


def regions_of(net, box, count=None):
    """Systems of regions found by sampling (a wider box for all of R^2), with their zero rows."""
    patterns = sample_patterns(net, (-1.0, 1.0) if box is not None else (-3.0, 3.0), 20_000, seed=0)[:count]
    A, c, _, _ = net.systems(patterns)
    row_scale, offset_scale = net.system_scales(patterns)
    bits = np.unpackbits(patterns.view(np.uint8), axis=1, bitorder="little")[:, : net.num_units].astype(bool)
    zero, _, _ = zero_rows(A, c, row_scale, offset_scale, bits)
    return net.regions(patterns), torch.from_numpy(A), torch.from_numpy(c), torch.from_numpy(zero)


@pytest.mark.parametrize("box", [BOX, None], ids=["box", "R2"])
@pytest.mark.parametrize("widths,seed", [((10, 10), 0), ((5, 5, 5), 1), ((25, 25, 25), 2)], ids=str)
def test_matches_the_lp_definition_region_by_region(widths, seed, box):
    net = spread_network(list(widths), 2, seed)
    box_arg = None if box is None else (-1.0, 1.0)
    regions, A, c, zero = regions_of(net, box_arg, count=40)
    facet_of, centre, radius, bounded, ok = region_clip_2d(A, c, zero, box, 1e-7)
    assert ok.all()
    for i, region in enumerate(regions):
        lp = active_set(region, box_arg)
        got = np.flatnonzero(facet_of[i].numpy() >= 0)
        assert np.array_equal(got, lp.bits), (i, got, lp.bits)
        assert abs(min(radius[i].item(), 1.0) - min(lp.radius, 1.0)) < 1e-8
        assert region.contains(centre[i].numpy(), tol=1e-9)
        if box is None:
            assert bounded[i].item() == is_bounded(region)


def test_empty_regions_have_no_facets():
    net = spread_network([6, 6], 2, 5)
    flipped = np.array([[0b1]], dtype=np.int64) ^ net.patterns(np.zeros((1, 2))).numpy()
    A, c, _, _ = net.systems(flipped)
    out = region_clip_2d(torch.from_numpy(A), torch.from_numpy(c), torch.zeros(c.shape, dtype=torch.bool), BOX, 1e-7)
    facet_of, _, radius, _, ok = out
    assert ok.all()
    if radius[0] <= 1e-7:
        assert (facet_of == -1).all()


def test_duplicate_hyperplanes_form_one_group():
    A = torch.tensor([[[1.0, 0.5], [2.0, 1.0], [-0.3, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    c = torch.tensor([[0.1, 0.2, 0.4, 1.0]], dtype=torch.float64)  # rows 0, 1: the same half-plane
    ignore = torch.tensor([[False, False, False, True]])
    facet_of, _, radius, _, ok = region_clip_2d(A, c, ignore, BOX, 1e-7)
    assert ok.all() and radius[0] > 0
    assert facet_of[0, 0] == facet_of[0, 1] == 0 and facet_of[0, 2] == 2 and facet_of[0, 3] == -1


def test_unbounded_regions_half_plane_and_strip():
    half_plane = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    strip = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    c = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    for A, want_radius in [(half_plane, 1.0), (strip, 0.25)]:
        ignore = torch.tensor([[False, bool((A[0, 1] == 0).all())]])
        facet_of, centre, radius, bounded, ok = region_clip_2d(A, c, ignore, None, 1e-7)
        assert ok.all() and not bounded[0] and abs(radius[0].item() - want_radius) < 1e-12
        assert (facet_of[0][~ignore[0]] >= 0).all()


@pytest.mark.parametrize(
    "args,error,message",
    [
        (lambda A, c, z: (A.float(), c, z, BOX, 1e-7), ValueError, "A must be float64"),
        (lambda A, c, z: (A[..., :1], c, z, BOX, 1e-7), ValueError, r"\[P, H, 2\]"),
        (lambda A, c, z: (A, c[:, :-1], z, BOX, 1e-7), ValueError, "c must have shape"),
        (lambda A, c, z: (A, c, z.long(), BOX, 1e-7), ValueError, "ignore must be bool"),
        (lambda A, c, z: (A, c, z, BOX.flip(0), 1e-7), ValueError, "lo < hi"),
        (lambda A, c, z: (A, c, z, BOX[:1], 1e-7), ValueError, r"box must be float64 \[2, 2\]"),
        (lambda A, c, z: (A, c, z, BOX, 0.0), ValueError, "tol must be a finite number > 0"),
        (lambda A, c, z: (A * float("nan"), c, z, BOX, 1e-7), ValueError, "must be finite"),
    ],
)
def test_bad_inputs_raise_clear_errors(args, error, message):
    A = torch.randn(3, 4, 2, dtype=torch.float64)
    c = torch.rand(3, 4, dtype=torch.float64)
    z = torch.zeros(3, 4, dtype=torch.bool)
    with pytest.raises(error, match=message):
        region_clip_2d(*args(A, c, z))


def test_meta_and_mixed_devices():
    A = torch.randn(3, 4, 2, dtype=torch.float64)
    c = torch.rand(3, 4, dtype=torch.float64)
    z = torch.zeros(3, 4, dtype=torch.bool)
    out = region_clip_2d(A.to("meta"), c.to("meta"), z.to("meta"), BOX.to("meta"), 1e-7)
    assert [tuple(t.shape) for t in out] == [(3, 4), (3, 2), (3,), (3,), (3,)]
    with pytest.raises((RuntimeError, ValueError), match="one device|CPU"):
        region_clip_2d(A, c.to("meta"), z, BOX, 1e-7)


def test_empty_batch():
    out = region_clip_2d(
        torch.zeros(0, 5, 2, dtype=torch.float64),
        torch.zeros(0, 5, dtype=torch.float64),
        torch.zeros(0, 5, dtype=torch.bool),
        BOX,
        1e-7,
    )
    assert [tuple(t.shape) for t in out] == [(0, 5), (0, 2), (0,), (0,), (0,)]


def test_opcheck_and_compile():
    net = spread_network([8, 8], 2, 3)
    _, A, c, zero = regions_of(net, (-1.0, 1.0), count=12)
    for box in (BOX, None):
        torch.library.opcheck(
            torch.ops.manifold_ext.region_clip_2d.default,
            (A, c, zero, box, 1e-7),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )
    compiled = torch.compile(lambda *a: region_clip_2d(*a)[0], fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(A, c, zero, BOX, 1e-7), region_clip_2d(A, c, zero, BOX, 1e-7)[0])


def test_same_answer_with_any_thread_count():
    net = spread_network([20, 20], 2, 4)
    _, A, c, zero = regions_of(net, None, count=400)
    previous = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(region_clip_2d(A, c, zero, None, 1e-7))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*outs):
        assert torch.equal(a, b)
