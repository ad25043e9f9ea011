"""Plain-PyTorch reference implementations of every operator.

They are the readable specification of each op: the tests compare the
compiled kernels against them, and the benchmarks time them as "eager" and,
compiled with ``torch.compile``, as "compile". One reference per op, no copies.
"""
from manifold_ext.reference.affine_coupling import affine_coupling_reference
from manifold_ext.reference.gaussian_elbo import gaussian_elbo_reference

__all__ = ["affine_coupling_reference", "gaussian_elbo_reference"]
