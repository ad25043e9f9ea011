"""Diffusion models on the fused likelihood and sampler-step ops (paper 000 §2.2).

* :mod:`~manifold_ext.diffusion.schedules`: linear (DDPM) and cosine schedules.
* :mod:`~manifold_ext.diffusion.models`: eps-networks for 2-D points and small images.
* :mod:`~manifold_ext.diffusion.training`: seeded DDPM training, atomic checkpoints.
* :mod:`~manifold_ext.diffusion.likelihood`: ``log_likelihood`` by Eq. 15 (per-round bounds, or the
  log-mean-exp estimate), in-process or sharded over an executor (Dask).
* :mod:`~manifold_ext.diffusion.samplers`: DDPM, DDIM, large-step, RK4, probability-flow ODE.
"""

from manifold_ext._checkpoint import CheckpointError
from manifold_ext.diffusion.likelihood import chain_nll, log_likelihood, log_mean_exp
from manifold_ext.diffusion.models import PointEpsNet, SmallUNet, build_model, time_tensor, timestep_embedding
from manifold_ext.diffusion.samplers import SAMPLERS, sample
from manifold_ext.diffusion.schedules import NoiseSchedule, cosine_schedule, linear_schedule, make_schedule
from manifold_ext.diffusion.training import TrainConfig, load_checkpoint, noisy_batch, save_checkpoint, train_eps_model

__all__ = [
    "SAMPLERS",
    "CheckpointError",
    "NoiseSchedule",
    "PointEpsNet",
    "SmallUNet",
    "TrainConfig",
    "build_model",
    "chain_nll",
    "cosine_schedule",
    "linear_schedule",
    "load_checkpoint",
    "log_likelihood",
    "log_mean_exp",
    "make_schedule",
    "noisy_batch",
    "sample",
    "save_checkpoint",
    "time_tensor",
    "timestep_embedding",
    "train_eps_model",
]
