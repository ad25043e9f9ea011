"""Bisection along a segment to points whose patterns differ in one bit (paper 001, Algorithm 2).

Algorithm 2 accepts an interval once the patterns at its ends differ in one
bit. That alone is not proof that the segment crosses one boundary there: a
bent hyperplane of a deeper layer can be crossed twice around another crossing,
leaving the end patterns one bit apart with three regions between them. Here
every interval is checked exactly with the two end regions' systems (Eq. 5):
it is accepted only when the segment leaves the first region through the
flipped unit's hyperplane at the same parameter at which it enters the second.
Intervals whose end patterns agree are dropped at once (regions are convex, so
the whole interval lies in that region). All intervals of one level are
evaluated in one batched call of the pattern and region-system ops.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from manifold_ext.ops.relu_patterns import hamming_distance
from manifold_ext.relu_geometry._checks import as_float
from manifold_ext.relu_geometry.network import ReLUNetwork


@dataclasses.dataclass
class BisectionPath:
    """Regions met along the segment ``x + t (y - x)``, ``t in [0, 1]``, in order.

    ``ts[i]`` is a parameter inside the ``i``-th region (``ts[0] = 0``, ``ts[-1] = 1``),
    ``points[i]`` the point there and ``patterns[i]`` its packed pattern; consecutive
    patterns differ in exactly one bit, ``flipped_units[i]``, except at the steps listed
    in ``degenerate`` (the segment passes through a point where several boundaries
    meet, so several bits flip at once; ``flipped_units`` is then -1).
    ``crossings[i]`` is the parameter of the boundary between regions ``i`` and ``i + 1``.
    """

    ts: np.ndarray
    points: np.ndarray
    patterns: np.ndarray
    crossings: np.ndarray
    flipped_units: np.ndarray
    degenerate: list[int]

    @property
    def num_regions(self) -> int:
        return len(self.ts)

    @property
    def deltas(self) -> np.ndarray:
        """Algorithm 2's output: the parameters ``delta_i`` of the interior points ``A_1..A_n``."""
        return self.ts[1:-1]


def _exit_parameter(A, c, x0, v, t0, forward: bool) -> tuple[float, int, float]:
    """First parameter at which ``x0 + (t - t0) v`` leaves ``{A x <= c}`` moving forward (or backward),
    the row that becomes tight there, and the gap to the next row."""
    speed = A @ v if forward else -(A @ v)
    slack = c - A @ x0
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(speed > 1e-14, slack / speed, np.inf)
    if not np.isfinite(steps).any():
        return np.inf, -1, np.inf
    order = np.argsort(steps)
    first = order[0]
    gap = steps[order[1]] - steps[first] if len(order) > 1 else np.inf
    t = t0 + steps[first] if forward else t0 - steps[first]
    return float(t), int(first), float(gap)


def bisect_to_neighbour(network: ReLUNetwork, x, y, *, min_interval: float = 1e-12, tol: float = 1e-9) -> BisectionPath:
    """Points along the segment from ``x`` to ``y`` whose consecutive patterns differ in one bit.

    Args:
        network: a :class:`ReLUNetwork`.
        x, y: end points ``[d]``.
        min_interval: intervals (in ``t``) shorter than this are not split further; if their end
            patterns still differ in several bits the step is reported in ``degenerate``.
        tol: parameter tolerance of the exact crossing check.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != (network.input_dim,) or y.shape != (network.input_dim,):
        raise ValueError(
            f"bisect_to_neighbour: x and y must be points of dimension {network.input_dim}, "
            f"got shapes {x.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("bisect_to_neighbour: x and y must be finite")
    for name, value in (("min_interval", min_interval), ("tol", tol)):
        if not as_float(value, f"bisect_to_neighbour: {name}") > 0:
            raise ValueError(f"bisect_to_neighbour: {name} must be > 0, got {value}")
    v = y - x
    H = network.num_units

    def patterns_at(ts):
        return network.patterns(x[None, :] + np.asarray(ts)[:, None] * v[None, :]).numpy()

    ends = patterns_at([0.0, 1.0])
    # Accepted steps: (t_left, t_right, pattern_left, pattern_right, crossing t, flipped unit or -1)
    steps = []
    pending = [(0.0, 1.0, ends[0], ends[1])]
    while pending:
        keys = np.stack([p for _, _, p, _ in pending] + [q for _, _, _, q in pending])
        n = len(pending)
        packed = torch.from_numpy(keys)
        dist = hamming_distance(packed[:n], packed[n:]).diagonal().numpy()
        one_bit = [i for i in range(n) if dist[i] == 1]
        verified = {}
        if one_bit:
            A, c, _, _ = network.systems(torch.from_numpy(keys[one_bit + [n + i for i in one_bit]]))
            m = len(one_bit)
            for j, i in enumerate(one_bit):
                ta, tb, pa, pb = pending[i]
                diff = np.flatnonzero(np.unpackbits((pa ^ pb).view(np.uint8), bitorder="little")[:H])
                unit = int(diff[0])
                t_exit, row_a, gap_a = _exit_parameter(A[j], c[j], x + ta * v, v, ta, forward=True)
                t_enter, row_b, gap_b = _exit_parameter(A[m + j], c[m + j], x + tb * v, v, tb, forward=False)
                direct = (
                    row_a == unit
                    and row_b == unit
                    and abs(t_exit - t_enter) <= tol * (1 + abs(t_exit))
                    and ta - tol <= t_exit <= tb + tol
                )
                if direct:
                    verified[i] = (t_exit, unit)
        next_pending = []
        mids, split = [], []
        for i, (ta, tb, pa, pb) in enumerate(pending):
            if dist[i] == 0:
                continue  # one convex region holds the whole interval
            if i in verified:
                steps.append((ta, tb, pa, pb, verified[i][0], verified[i][1]))
            elif tb - ta <= min_interval:
                steps.append((ta, tb, pa, pb, 0.5 * (ta + tb), -1))
            else:
                split.append(i)
                mids.append(0.5 * (ta + tb))
        if split:
            mid_patterns = patterns_at(mids)
            for i, tm, pm in zip(split, mids, mid_patterns):
                ta, tb, pa, pb = pending[i]
                next_pending += [(ta, tm, pa, pm), (tm, tb, pm, pb)]
        pending = next_pending
    steps.sort(key=lambda s: s[0])
    ts = [0.0] + [s[1] for s in steps]
    pats = [ends[0]] + [s[3] for s in steps]
    if len(ts) > 1:
        ts[-1] = 1.0
    ts_arr = np.array(ts)
    return BisectionPath(
        ts=ts_arr,
        points=x[None, :] + ts_arr[:, None] * v[None, :],
        patterns=np.array(pats, dtype=np.int64).reshape(len(ts), -1),
        crossings=np.array([s[4] for s in steps]),
        flipped_units=np.array([s[5] for s in steps], dtype=np.int64),
        degenerate=[k for k, s in enumerate(steps) if s[5] < 0],
    )
