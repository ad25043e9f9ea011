"""Thin Python wrappers of the compiled operators.

Each module registers, for its ``torch.ops.manifold_ext`` operators, a fake
(meta) kernel so ``torch.compile``/``torch.export`` can trace them and the
autograd formula (backed by a compiled backward operator).
"""
from manifold_ext.ops.affine_coupling import COUPLING_LAYOUTS, COUPLING_SCALES, affine_coupling
from manifold_ext.ops.relu_patterns import (
    activation_patterns,
    hamming_distance,
    hamming_topk,
    pack_patterns,
    region_system,
    unpack_patterns,
)

__all__ = ["affine_coupling", "COUPLING_SCALES", "COUPLING_LAYOUTS"]
__all__ += ["activation_patterns", "unpack_patterns", "pack_patterns", "hamming_distance", "hamming_topk",
            "region_system"]
