"""Adversarial attacks and test-time purification (paper 000 §3).

* ``fgsm``, ``pgd_linf``, ``patch_pgd``, ``patch_nag``: gradient-sign attacks on
  any differentiable classifier (see ``gradient_attacks``), ``patch_mask`` to
  place a rectangular patch.
* ``purify``: test-time purification by ELBO ascent over the input (Eq. 22).
"""
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

__all__ = [
    "fgsm",
    "pgd_linf",
    "patch_pgd",
    "patch_nag",
    "patch_mask",
    "purify",
    "PurificationResult",
    "input_gradient",
    "elbo_input_gradient",
    "cross_entropy_per_sample",
]
