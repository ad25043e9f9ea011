"""Training eps_theta by the DDPM objective, with atomic checkpoints.

Loss (Ho et al. 2020, Eq. 14, "simple"): E_{t, x0, eps} |eps - eps_theta(x_t, t)|^2
with t uniform on 1..T and x_t drawn by Eq. 11 / Eq. 17 from x_0
(``diffusion_forward_step`` with per-sample abar).
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext._atomic import atomic_torch_save
from manifold_ext.diffusion.models import build_model
from manifold_ext.diffusion.schedules import NoiseSchedule
from manifold_ext.ops import diffusion_forward_step


@dataclasses.dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 2e-3
    ema_decay: float = 0.995  # the returned model holds the EMA weights (0 disables)
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end, if a path is given)


def noisy_batch(x0: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator | None = None):
    """(x_t, t, eps) with t ~ U{1..T}: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Eq. 11)."""
    batch = x0.shape[0]
    t = torch.randint(1, schedule.T + 1, (batch,), generator=generator, device="cpu").to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(x0.device)
    abar_t = schedule.alphas_cumprod.to(x0.device)[t]
    x_t = diffusion_forward_step(x0, eps, 1.0, abar_t)  # Eq. 17 from t = 0
    return x_t, t, eps


def train_eps_model(
    model: nn.Module,
    data: torch.Tensor,
    schedule: NoiseSchedule,
    config: TrainConfig = TrainConfig(),
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """Fit ``model`` to ``data`` ([N, *]) and return (EMA model in eval mode, losses).

    Seeded (``config.seed``): the same data, model initialisation and config give
    the same weights. With ``checkpoint`` set, training resumes from it when it
    exists and saves to it (atomically) every ``checkpoint_every`` steps and at the end.
    """
    device = data.device
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, config.steps))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    start, losses = 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start, losses = state["step"], state["losses"]
    model.train()
    bar = tqdm(range(start, config.steps), desc="training eps-model", unit="step", disable=not progress,
               mininterval=0.5, initial=start, total=config.steps)
    for step in bar:
        index = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator).to(device)
        x_t, t, eps = noisy_batch(data[index], schedule, generator)
        loss = (model(x_t, t) - eps).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        with torch.no_grad():
            decay = config.ema_decay if step > 100 else 0.0  # copy the weights while they move fast
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1.0 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        done = step + 1
        if checkpoint is not None and config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            _save_training_state(checkpoint, model, ema, optimiser, scheduler, generator, done, losses, schedule)
    if checkpoint is not None:
        _save_training_state(checkpoint, model, ema, optimiser, scheduler, generator, config.steps, losses, schedule)
    model.eval()
    return ema, losses


def _atomic_save(payload: dict, path: str | Path) -> None:
    atomic_torch_save(payload, path)  # a crash never leaves a half-written checkpoint


def _save_training_state(path, model, ema, optimiser, scheduler, generator, step, losses, schedule):
    _atomic_save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "step": step,
            "losses": losses,
            "model_name": type(model).__name__,
            "model_config": model.config,
            "schedule": schedule.to_dict(),
        },
        path,
    )


def save_checkpoint(path: str | Path, model: nn.Module, schedule: NoiseSchedule, **extra) -> None:
    """Save a trained model (weights, constructor config, schedule) atomically."""
    _atomic_save(
        {"ema": model.state_dict(), "model_name": type(model).__name__, "model_config": model.config,
         "schedule": schedule.to_dict(), **extra},
        path,
    )


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, NoiseSchedule, dict]:
    """(model with the saved (EMA) weights in eval mode, schedule, the whole payload)."""
    payload = torch.load(path, map_location=map_location, weights_only=False)
    model = build_model(payload["model_name"], payload["model_config"])
    model.load_state_dict(payload["ema"])
    return model.eval(), NoiseSchedule.from_dict(payload["schedule"]), payload
