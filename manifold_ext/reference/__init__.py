"""Plain-PyTorch reference implementations of every operator.

They are the readable specification of each op: the tests compare the
compiled kernels against them, and the benchmarks time them as "eager" and,
compiled with ``torch.compile``, as "compile". One reference per op, no copies.
"""
from manifold_ext.reference.affine_coupling import affine_coupling_reference
from manifold_ext.reference.closest_centre_kl import closest_centre_kl_reference, nearest_centre_kl_reference

__all__ = ["affine_coupling_reference"]
__all__ += ["closest_centre_kl_reference", "nearest_centre_kl_reference"]
