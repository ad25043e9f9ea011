"""When the CUDA kernels of the diffusion ops check a per-sample schedule.

A per-sample ``abar`` (a ``[B]`` tensor on the GPU) must satisfy the step's
inequalities (``0 < abar_next < abar_t <= 1`` for the likelihood step, ...).
By default the CUDA kernels check every pair before they launch and raise a
``ValueError`` naming the first bad sample; reading that answer costs one
device-to-host synchronisation per call, which stalls a training loop every
step and cannot happen while a CUDA graph is being captured.

Inside :func:`deferred_schedule_checks` the pairs are checked by the kernel that
turns them into step coefficients instead: no synchronisation. A bad pair then
stops that kernel with a device-side assert, after printing the sample, its
values and the rule it breaks; like any device-side assert it leaves the CUDA
context unusable (the process must restart), so defer the checks where the
schedule was validated once beforehand (``NoiseSchedule.validate``), e.g. for
``abar`` gathered from a validated schedule at random time steps. Calls being
captured into a CUDA graph always check this way. CPU tensors, and ``abar``
given as floats or 0-dim tensors, are checked on the host as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from manifold_ext._extension import load_extension


@contextlib.contextmanager
def deferred_schedule_checks(enabled: bool = True) -> Iterator[None]:
    """Within the block, CUDA kernels check per-sample schedules on the device (no sync).

    The setting is process-wide (backward ops run on autograd's threads) and is
    restored on exit. ``enabled=False`` forces the immediate check inside an
    enclosing deferred block.

    Example:
        >>> with deferred_schedule_checks():  # doctest: +SKIP
        ...     x_t = diffusion_forward_step(x0, eps, 1.0, abar_table[t])  # t: per-sample CUDA indices
    """
    extension = load_extension()
    previous = extension._set_deferred_schedule_checks(bool(enabled))
    try:
        yield
    finally:
        extension._set_deferred_schedule_checks(previous)
