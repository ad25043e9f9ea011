"""Adversarial attacks and test-time purification (paper 000 §3).

* ``fgsm``, ``pgd_linf``, ``patch_pgd``, ``patch_nag``: gradient-sign attacks on
  any differentiable classifier (see ``gradient_attacks``), ``patch_mask`` to
  place a rectangular patch; ``patch_corner_search``: the exhaustive best corner
  of a small patch, a reference for how strong a patch attack can be.
* ``purify``: test-time purification by ELBO ascent over the input (Eq. 22).
* ``threshold_aware_attack``, ``fooling_attack``: the complete white-box attacks
  on the GMM classifier with rejection (thesis 004 Eq. 4.9, 4.10; ``whitebox``).
"""

from manifold_ext.attacks.exhaustive import patch_corner_search
from manifold_ext.attacks.gradient_attacks import (
    cross_entropy_per_sample,
    fgsm,
    input_gradient,
    patch_nag,
    patch_pgd,
    pgd_linf,
)
from manifold_ext.attacks.masks import patch_mask
from manifold_ext.attacks.purification import PurificationResult, elbo_input_gradient, purify
from manifold_ext.attacks.whitebox import (
    WhiteBoxResult,
    fooling_attack,
    threshold_aware_attack,
    whitebox_objective,
    whitebox_terms,
)

__all__ = [
    "fgsm",
    "pgd_linf",
    "patch_pgd",
    "patch_nag",
    "patch_mask",
    "patch_corner_search",
    "purify",
    "PurificationResult",
    "input_gradient",
    "elbo_input_gradient",
    "cross_entropy_per_sample",
    "threshold_aware_attack",
    "fooling_attack",
    "whitebox_terms",
    "whitebox_objective",
    "WhiteBoxResult",
]
