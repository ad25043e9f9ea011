"""The toy networks of Section 4.1 (paper 001): an exactness check of the enumeration against dense
sampling, the Fig. 1 observation on Hamming distance at a fixed Euclidean distance, and Algorithm 2
(bisection) along segments with its one-bit-apart guarantee checked."""

from __future__ import annotations

import numpy as np

from manifold_ext.demos.relu_polyhedra.counting import BOX
from manifold_ext.ops.relu_patterns import hamming_distance
from manifold_ext.relu_geometry import ReLUNetwork, bisect_to_neighbour, sample_patterns

# Fig. 1 observation: the pair (x, -1), (x, 1) for growing x; the paper compares x = 0 with x = 6.
FIG1_OFFSETS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


def sampling_check(network: ReLUNetwork, box_patterns: np.ndarray, points: int, seed: int) -> dict:
    """Patterns seen at ``points`` sampled points (a grid plus as many random points) of the box must
    all be enumerated; regions only the enumeration found are the small ones sampling misses."""
    sampled = np.unique(
        np.concatenate(
            [
                sample_patterns(network, BOX, points, seed=seed, grid=True),
                sample_patterns(network, BOX, points, seed=seed),
            ]
        ),
        axis=0,
    )
    lookup = {p.tobytes(): i for i, p in enumerate(box_patterns)}
    positions = np.array([lookup.get(p.tobytes(), -1) for p in sampled])
    return {
        "points": 2 * points,
        "distinct_patterns_sampled": len(sampled),
        "sampled_but_not_enumerated": int(np.sum(positions < 0)),
        "enumerated_only": int(len(box_patterns) - len(np.unique(positions[positions >= 0]))),
    }


def one_bit_guarantee(network: ReLUNetwork, path) -> dict:
    """Algorithm 2's guarantee checked independently: the Hamming distance between consecutive
    patterns along a :class:`~manifold_ext.relu_geometry.BisectionPath`, recomputed from the points."""
    patterns = network.patterns(path.points)
    assert np.array_equal(patterns.numpy(), path.patterns), "bisection points do not have their patterns"
    steps = (
        hamming_distance(patterns[:-1], patterns[1:]).diagonal().numpy()
        if len(patterns) > 1
        else np.zeros(0, dtype=np.int64)
    )
    ends = int(hamming_distance(patterns[:1], patterns[-1:])[0, 0])
    return {
        "regions": int(path.num_regions),
        "steps": len(steps),
        "steps_one_bit_apart": int(np.sum(steps == 1)),
        "degenerate_steps": len(path.degenerate),
        "hamming_between_ends": ends,
    }


def fig1_observation(networks: list[ReLUNetwork], offsets=FIG1_OFFSETS) -> dict:
    """For each offset x: Hamming distance between (x, -1) and (x, 1) (Euclidean distance 2), and the
    regions met along the segment between them (Algorithm 2), mean and SD over the networks."""
    rows = []
    all_one_bit = True
    for x in offsets:
        a, b = np.array([x, -1.0]), np.array([x, 1.0])
        hamming, regions = [], []
        for network in networks:
            guarantee = one_bit_guarantee(network, bisect_to_neighbour(network, a, b))
            all_one_bit &= guarantee["steps_one_bit_apart"] == guarantee["steps"]
            hamming.append(guarantee["hamming_between_ends"])
            regions.append(guarantee["regions"])
        rows.append(
            {
                "x": x,
                "hamming_mean": float(np.mean(hamming)),
                "hamming_sd": float(np.std(hamming, ddof=1)) if len(hamming) > 1 else 0.0,
                "regions_on_segment_mean": float(np.mean(regions)),
            }
        )
    return {
        "pairs": "(x, -1) and (x, 1): Euclidean distance 2 at horizontal offset x",
        "by_offset": rows,
        "networks": len(networks),
        "every_bisection_step_one_bit": bool(all_one_bit),
    }


def random_segment_bisection(networks: list[ReLUNetwork], pairs: int, seed: int) -> dict:
    """Algorithm 2 between random pairs of points of the box: regions along each segment vs the
    Hamming distance of its ends (regions >= Hamming + 1, since every differing bit flips at least once)."""
    rng = np.random.default_rng(seed)
    records = []
    for network in networks:
        for _ in range(pairs):
            a, b = rng.uniform(-1, 1, size=(2, network.input_dim))
            records.append(one_bit_guarantee(network, bisect_to_neighbour(network, a, b)))
    regions = np.array([r["regions"] for r in records])
    hamming = np.array([r["hamming_between_ends"] for r in records])
    clean = np.array([r["degenerate_steps"] == 0 for r in records])
    return {
        "segments": len(records),
        "regions_mean": float(regions.mean()),
        "hamming_mean": float(hamming.mean()),
        "steps": int(sum(r["steps"] for r in records)),
        "steps_one_bit_apart": int(sum(r["steps_one_bit_apart"] for r in records)),
        "degenerate_steps": int(sum(r["degenerate_steps"] for r in records)),
        "segments_with_regions_equal_hamming_plus_1": int(np.sum(regions == hamming + 1)),
        # Only where every step flips one bit (a degenerate step flips several at once).
        "regions_ge_hamming_plus_1_on_every_clean_segment": bool(np.all(regions[clean] >= hamming[clean] + 1)),
    }
