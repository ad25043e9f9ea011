"""Training eps_theta by the DDPM objective, with verified, atomic checkpoints.

Loss (Ho et al. 2020, Eq. 14, "simple"): E_{t, x0, eps} |eps - eps_theta(x_t, t)|^2
with t uniform on 1..T (an int64 ``[B]`` tensor, the eps-network contract of
:mod:`~manifold_ext.diffusion.models`) and x_t drawn by Eq. 11 / Eq. 17 from x_0
(``diffusion_forward_step`` with per-sample abar).

Checkpoints (:mod:`manifold_ext._checkpoint`) carry a content hash, the model's
class, config and weight signature, the schedule, the training settings and a
fingerprint of the data. A resume checks all of them before anything is
loaded and refuses a file that would not continue *this* run.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext import _checkpoint as ckpt
from manifold_ext._args import as_int
from manifold_ext._checkpoint import CheckpointError
from manifold_ext.diffusion.models import check_model_schedule, model_device
from manifold_ext.diffusion.schedules import NoiseSchedule
from manifold_ext.ops import diffusion_forward_step

TRAINING_KIND = "diffusion.training"
MODEL_KIND = "diffusion.model"


@dataclasses.dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 2e-3
    ema_decay: float = 0.995  # the returned model holds the EMA weights (0 disables)
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end, if a path is given)

    def run_settings(self) -> dict:
        """The settings that determine the trained weights (all but ``checkpoint_every``)."""
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "ema_decay": self.ema_decay,
            "seed": self.seed,
        }

    def validate(self) -> None:
        as_int(self.steps, "TrainConfig.steps", 0)
        as_int(self.batch_size, "TrainConfig.batch_size", 1)
        as_int(self.seed, "TrainConfig.seed")
        as_int(self.checkpoint_every, "TrainConfig.checkpoint_every", 0)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")


def noisy_batch(x0: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator | None = None):
    """(x_t, t, eps) with t ~ U{1..T}: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Eq. 11)."""
    batch = x0.shape[0]
    # t: int64 [B], the eps-network contract (models.py)
    t = torch.randint(1, schedule.T + 1, (batch,), generator=generator, device="cpu").to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(x0.device)
    abar_t = schedule.alphas_cumprod.to(x0.device)[t]
    x_t = diffusion_forward_step(x0, eps, 1.0, abar_t)  # Eq. 17 from t = 0
    return x_t, t, eps


def _run_meta(model: nn.Module, schedule: NoiseSchedule, config: TrainConfig, data: torch.Tensor) -> dict:
    """What identifies a training run: a checkpoint resumes it only if all of this agrees."""
    return {
        "model": {k: v for k, v in ckpt.model_record(model).items()},
        "schedule": schedule.to_dict(),
        "train": config.run_settings(),
        "data": ckpt.tensor_fingerprint(data),
    }


def _resume(path: Path, run: dict, model, ema, optimiser, scheduler, generator) -> tuple[int, list[float]]:
    """Load a training state after checking it belongs to this run; nothing is touched on failure."""
    payload, meta = ckpt.read_checkpoint(path, map_location=model_device(model))
    if meta.get("kind") != TRAINING_KIND:
        raise CheckpointError(
            path, f"holds a {meta.get('kind')!r} checkpoint, not a training state ({TRAINING_KIND!r}) to resume"
        )
    remedy = "resume with the same model, schedule, data and TrainConfig, or give a new checkpoint path"
    ckpt.require_fields_match(path, meta, run, "model", ("class", "config"), remedy)
    ckpt.require_fields_match(path, meta, run, "schedule", ("T", "betas"), remedy)
    ckpt.require_match(path, meta, {"train": run["train"], "data": run["data"]}, remedy)
    for key, module in (("model", model), ("ema", ema)):
        ckpt.check_state_dict(path, module, payload.get(key, {}), what=key)
    step = payload.get("step")
    if not isinstance(step, int) or not 0 <= step <= run["train"]["steps"]:
        raise CheckpointError(path, f"step {step!r} is outside 0..steps = 0..{run['train']['steps']}")
    # Everything fits: only now are the caller's objects changed.
    model.load_state_dict(payload["model"])
    ema.load_state_dict(payload["ema"])
    optimiser.load_state_dict(payload["optimiser"])
    scheduler.load_state_dict(payload["scheduler"])
    generator.set_state(payload["generator"])
    return step, list(payload["losses"])


def train_eps_model(
    model: nn.Module,
    data: torch.Tensor,
    schedule: NoiseSchedule,
    config: TrainConfig = TrainConfig(),
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """Fit ``model`` to ``data`` ([N, *]) and return (EMA model in eval mode, losses).

    Training runs on the model's device (``data`` is moved there batch by
    batch). Seeded (``config.seed``): the same data, model initialisation and
    config give the same weights. With ``checkpoint`` set, training saves to it
    (atomically) every ``config.checkpoint_every`` steps and at the end, and
    resumes from it when it exists, but only if the file was written by the same
    run: model class and config, schedule, ``TrainConfig`` (all but
    ``checkpoint_every``) and data must all agree, or a
    :class:`~manifold_ext._checkpoint.CheckpointError` names the field that
    differs (the model and the file are left untouched). A finished checkpoint
    returns its model without training.
    """
    config.validate()
    if not isinstance(data, torch.Tensor) or not data.is_floating_point():
        raise TypeError(
            f"data must be a floating-point tensor [N, *], got "
            f"{data.dtype if isinstance(data, torch.Tensor) else type(data).__name__}"
        )
    if data.dim() < 1 or data.shape[0] == 0:
        raise ValueError(f"data must hold at least one example [N, *], got shape {list(data.shape)}")
    check_model_schedule(model, schedule)
    device = model_device(model)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, config.steps))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    start, losses = 0, []
    run = _run_meta(model, schedule, config, data) if checkpoint is not None else None
    if checkpoint is not None and Path(checkpoint).exists():
        start, losses = _resume(Path(checkpoint), run, model, ema, optimiser, scheduler, generator)
    model.train()
    bar = tqdm(
        range(start, config.steps),
        desc="training eps-model",
        unit="step",
        disable=not progress,
        mininterval=0.5,
        initial=start,
        total=config.steps,
    )
    for step in bar:
        index = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator).to(data.device)
        x_t, t, eps = noisy_batch(data[index].to(device), schedule, generator)
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
        if (
            checkpoint is not None
            and config.checkpoint_every
            and done % config.checkpoint_every == 0
            and done < config.steps
        ):
            _save_training_state(checkpoint, run, model, ema, optimiser, scheduler, generator, done, losses)
    if checkpoint is not None and start < config.steps:
        _save_training_state(checkpoint, run, model, ema, optimiser, scheduler, generator, config.steps, losses)
    model.eval()
    return ema, losses


def _save_training_state(path, run, model, ema, optimiser, scheduler, generator, step, losses):
    payload = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "step": step,
        "losses": list(losses),
    }
    # The EMA weights are the trained model: load_checkpoint reads them ("state_key").
    meta = {"kind": TRAINING_KIND, **run, "model": {**run["model"], "state_key": "ema"}}
    ckpt.write_checkpoint(path, payload, meta)


def save_checkpoint(path: str | Path, model: nn.Module, schedule: NoiseSchedule, **extra) -> None:
    """Save a trained model (weights, class, constructor config, weight signature, schedule) atomically.

    Any ``nn.Module`` works. A model with a ``config`` attribute (the built-in
    networks) is rebuilt by :func:`load_checkpoint` alone; any other is loaded
    into an instance the caller passes (``load_checkpoint(path, model=MyEps())``).
    ``extra`` entries (plain data and tensors, e.g. ``losses=[...]``) come back
    in the payload.
    """
    check_model_schedule(model, schedule)
    ckpt.save_model(path, model, kind=MODEL_KIND, meta={"schedule": schedule.to_dict()}, extra=extra)


def load_checkpoint(
    path: str | Path, map_location="cpu", model: nn.Module | None = None, schedule: NoiseSchedule | None = None
) -> tuple[nn.Module, NoiseSchedule, dict]:
    """(model with the saved (EMA) weights in eval mode, schedule, the whole payload).

    Reads files from :func:`save_checkpoint` and training states of
    :func:`train_eps_model`. Everything is verified before the weights are used:
    the content hash, and with ``model`` / ``schedule`` given, that the file's
    class, config, weight shapes and schedule match them (a
    :class:`~manifold_ext._checkpoint.CheckpointError` names the first field that
    differs; ``model`` is untouched then).
    """
    payload, meta = ckpt.read_checkpoint(path, map_location=map_location)
    if meta.get("kind") not in (MODEL_KIND, TRAINING_KIND):
        raise CheckpointError(
            path,
            f"holds a {meta.get('kind')!r} checkpoint, not a diffusion model ({MODEL_KIND!r} or {TRAINING_KIND!r})",
        )
    try:
        saved_schedule = NoiseSchedule.from_dict(meta["schedule"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(path, f"holds no valid noise schedule: {error}") from error
    if schedule is not None:
        ckpt.require_match(path, {"schedule": saved_schedule.identity()}, {"schedule": schedule.identity()})
    loaded = ckpt.model_from_checkpoint(path, payload, meta, model)
    check_model_schedule(loaded, saved_schedule)
    return loaded, saved_schedule, payload
