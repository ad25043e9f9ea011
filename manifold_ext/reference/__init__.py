"""Plain-PyTorch reference implementations of every operator.

They are the readable specification of each op: the tests compare the
compiled kernels against them, and the benchmarks time them as "eager" and,
compiled with ``torch.compile``, as "compile". One reference per op, no copies.
"""

from manifold_ext.reference.affine_coupling import affine_coupling_reference
from manifold_ext.reference.closest_centre_kl import closest_centre_kl_reference, nearest_centre_kl_reference
from manifold_ext.reference.diffusion import (
    ddim_step_reference,
    ddpm_step_reference,
    diffusion_forward_step_reference,
    diffusion_nll_step_and_forward_reference,
    diffusion_nll_step_reference,
    large_step_reference,
    rk4_combine_reference,
    rk4_update_reference,
)
from manifold_ext.reference.gaussian_elbo import gaussian_elbo_reference
from manifold_ext.reference.relu_patterns import (
    activation_bits_reference,
    activation_patterns_reference,
    hamming_distance_bits_reference,
    hamming_distance_reference,
    hamming_topk_bits_reference,
    hamming_topk_reference,
    pack_patterns_reference,
    region_system_reference,
    unpack_patterns_reference,
)

__all__ = ["affine_coupling_reference"]
__all__ += [
    "diffusion_nll_step_reference",
    "diffusion_nll_step_and_forward_reference",
    "diffusion_forward_step_reference",
    "ddpm_step_reference",
    "ddim_step_reference",
    "large_step_reference",
    "rk4_combine_reference",
    "rk4_update_reference",
]
__all__ += ["closest_centre_kl_reference", "nearest_centre_kl_reference"]
__all__ += ["gaussian_elbo_reference"]
__all__ += [
    "activation_bits_reference",
    "activation_patterns_reference",
    "hamming_distance_bits_reference",
    "hamming_distance_reference",
    "hamming_topk_bits_reference",
    "hamming_topk_reference",
    "pack_patterns_reference",
    "region_system_reference",
    "unpack_patterns_reference",
]
