"""Normalising flows (paper 000 §2.1): Glow layers on the fused coupling op."""

from manifold_ext.flows.glow import (
    ConditionalAffineCoupling,
    FlowStep,
    GaussianPrior,
    MultiScaleGlow,
    Squeeze,
    bits_per_dim,
    dequantize,
    resize_condition,
    standard_normal_log_prob,
    use_coupling_implementation,
)
from manifold_ext.flows.hierarchical import (
    HierarchicalConfig,
    HierarchicalFlow,
    LevelAutoencoder,
    fit,
    jacobian_log_volume,
    log_volume_factor,
)
from manifold_ext.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    FlowSequential,
    GlowStep,
    InvertibleConv1x1,
    StandardNormalFlow,
    data_initialize,
    default_coupling_net,
)

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "FlowLayer",
    "FlowSequential",
    "GlowStep",
    "InvertibleConv1x1",
    "StandardNormalFlow",
    "data_initialize",
    "default_coupling_net",
    # multi-scale Glow, conditional coupling (glow.py)
    "ConditionalAffineCoupling",
    "FlowStep",
    "GaussianPrior",
    "MultiScaleGlow",
    "Squeeze",
    "bits_per_dim",
    "dequantize",
    "resize_condition",
    "standard_normal_log_prob",
    "use_coupling_implementation",
    # hierarchical autoencoders + flows, Eq. 1-8 (hierarchical.py)
    "HierarchicalConfig",
    "HierarchicalFlow",
    "LevelAutoencoder",
    "fit",
    "jacobian_log_volume",
    "log_volume_factor",
]
