"""Thin Python wrappers of the compiled operators.

Each module registers, for its ``torch.ops.manifold_ext`` operators, a fake
(meta) kernel so ``torch.compile``/``torch.export`` can trace them and the
autograd formula (backed by a compiled backward operator).
"""

from manifold_ext.ops._schedule_checks import deferred_schedule_checks  # noqa: F401  (a setting, not an op)
from manifold_ext.ops.affine_coupling import COUPLING_LAYOUTS, COUPLING_SCALES, affine_coupling
from manifold_ext.ops.closest_centre_kl import closest_centre_kl, nearest_centre_kl
from manifold_ext.ops.diffusion import (
    ddim_step,
    ddpm_step,
    diffusion_forward_step,
    diffusion_nll_step,
    diffusion_nll_step_and_forward,
    large_step,
    rk4_combine,
    rk4_update,
)
from manifold_ext.ops.gaussian_elbo import gaussian_elbo
from manifold_ext.ops.relu_patterns import (
    activation_patterns,
    hamming_distance,
    hamming_topk,
    pack_patterns,
    region_system,
    unpack_patterns,
)

__all__ = ["affine_coupling", "COUPLING_SCALES", "COUPLING_LAYOUTS"]
__all__ += [
    "diffusion_nll_step",
    "diffusion_nll_step_and_forward",
    "diffusion_forward_step",
    "ddpm_step",
    "ddim_step",
    "large_step",
    "rk4_combine",
    "rk4_update",
]
__all__ += ["closest_centre_kl", "nearest_centre_kl"]
__all__ += ["gaussian_elbo"]
__all__ += [
    "activation_patterns",
    "unpack_patterns",
    "pack_patterns",
    "hamming_distance",
    "hamming_topk",
    "region_system",
]
