"""Reproductions and demos, run as ``manifold-ext demo <name>``.

Each demo module defines ``NAME``, ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args) -> summary dict``; it writes PNG figures and ``summary.json``
to its ``--out`` folder and has a ``--quick`` mode for tests and CI.
"""
from __future__ import annotations

from manifold_ext.demos import (
    attack,
    attributes,
    coupling_flow,
    diffusion_likelihood,
    diffusion_sampling,
    geodesic,
    grid_vae,
    liftmap,
    relu_polyhedra,
)
from manifold_ext.demos import flow as flow_demo

DEMOS = {
    module.NAME: module
    for module in (
        coupling_flow, flow_demo, diffusion_likelihood, diffusion_sampling, grid_vae, attack, relu_polyhedra,
        geodesic, attributes, liftmap,
    )
}
