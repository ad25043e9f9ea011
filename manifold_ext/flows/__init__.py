"""Normalising flows (paper 000 §2.1): Glow layers on the fused coupling op."""
from manifold_ext.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    FlowSequential,
    GlowStep,
    InvertibleConv1x1,
    StandardNormalFlow,
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
    "default_coupling_net",
]
