"""Diffusion log-likelihood of 2-D point sets (paper 000 Fig. 5).

A DDPM eps-model (MLP with time embedding, T = 100, linear schedule) is
trained on a Swiss roll; then every point of four sets (Swiss roll, circle,
moons, S-curve; fresh samples, normalised alike: see
``manifold_ext.diffusion.toy_data``) is scored by Eq. 15 at dt = 1 over
random rounds of the forward chain, on the fused likelihood-step op. The
in-distribution Swiss roll should score clearly highest.

Sizes: ``--quick`` (seconds, CI), default (about a minute on 2 cores),
``--full`` (the paper's 10,000 points x 100 rounds per set: slow).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from manifold_ext.demos.common import add_common_arguments, pyplot, seed_everything, write_json
from manifold_ext.diffusion import (
    PointEpsNet,
    TrainConfig,
    linear_schedule,
    load_checkpoint,
    log_likelihood,
    log_mean_exp,
    save_checkpoint,
    train_eps_model,
)
from manifold_ext.diffusion.toy_data import POINT_SETS, point_set

NAME = "likelihood"
DESCRIPTION = "Fig. 5: diffusion log p (Eq. 15) of Swiss roll / circle / moons / S-curve under a Swiss-roll model"

# (training steps, hidden units, batch size, learning rate, points per set, rounds)
SIZES = {
    "quick": (1500, 64, 512, 5e-3, 400, 4),
    "default": (4000, 128, 1024, 2e-3, 2000, 10),
    "full": (8000, 128, 1024, 2e-3, 10_000, 100),
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--T", type=int, default=100, help="diffusion steps (default 100, as the paper)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps (default by size)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden units of the eps-MLP (default by size)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="load the trained model from this file if it exists, else train and save it there")
    parser.add_argument("--full", action="store_true", help="the paper's full size (slow)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    add_model_arguments(parser)
    parser.add_argument("--points", type=int, default=None, help="points per set (default by size)")
    parser.add_argument("--rounds", type=int, default=None, help="random rounds per point (default by size)")
    parser.add_argument("--dt", type=int, default=1, help="step between scored times (a divisor of T; default 1)")
    parser.add_argument("--batch-size", type=int, default=16_384, help="rows (point x round) per pass")


def size_of(args) -> str:
    return "full" if args.full else "quick" if args.quick else "default"


def swiss_roll_model(args, device: torch.device):
    """The trained Swiss-roll eps-model and schedule (loaded from --checkpoint when it exists)."""
    if args.checkpoint is not None and args.checkpoint.exists():
        model, schedule, payload = load_checkpoint(args.checkpoint, map_location=device)
        return model.to(device), schedule, payload.get("train_seconds", 0.0), payload.get("losses", [])
    steps, hidden, batch_size, lr, _, _ = SIZES[size_of(args)]
    steps, hidden = args.train_steps or steps, args.hidden or hidden
    schedule = linear_schedule(args.T)
    data = point_set("swiss_roll", 20_000, seed=args.seed).to(device)
    torch.manual_seed(args.seed)
    model = PointEpsNet(dim=2, hidden=hidden, layers=3, T=args.T).to(device)
    start = time.perf_counter()
    model, losses = train_eps_model(model, data, schedule, TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=args.seed))
    train_seconds = time.perf_counter() - start
    if args.checkpoint is not None:
        save_checkpoint(args.checkpoint, model, schedule, train_seconds=train_seconds, losses=losses)
    return model, schedule, train_seconds, losses


def _figure(path: Path, sets: dict, log_p: dict, losses: list[float]):
    plt = pyplot()
    kinds = list(sets)
    fig, axes = plt.subplots(3, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 11))
    per_point_mean = {k: v.mean(1).numpy() for k, v in log_p.items()}
    per_point_std = {k: v.std(1).numpy() if v.shape[1] > 1 else np.zeros(v.shape[0]) for k, v in log_p.items()}
    low = min(np.percentile(v, 2) for v in per_point_mean.values())
    high = max(v.max() for v in per_point_mean.values())
    for column, kind in enumerate(kinds):
        points = sets[kind].numpy()
        axes[0, column].scatter(points[:, 0], points[:, 1], s=1, color="k", alpha=0.5)
        axes[0, column].set_title(kind)
        mean = axes[1, column].scatter(points[:, 0], points[:, 1], c=per_point_mean[kind], s=2, cmap="viridis",
                                       vmin=low, vmax=high)
        axes[1, column].set_title(f"mean log p = {per_point_mean[kind].mean():.2f}")
        std = axes[2, column].scatter(points[:, 0], points[:, 1], c=per_point_std[kind], s=2, cmap="magma")
        axes[2, column].set_title(f"std over rounds (mean {per_point_std[kind].mean():.2f})")
        for row in range(3):
            axes[row, column].set_aspect("equal")
            axes[row, column].set_xlim(-2.6, 2.6)
            axes[row, column].set_ylim(-2.6, 2.6)
    fig.colorbar(mean, ax=axes[1, len(kinds) - 1])
    fig.colorbar(std, ax=axes[2, len(kinds) - 1])
    hist = axes[0, -1]
    bins = np.linspace(low, high, 60)
    for kind in kinds:
        hist.hist(per_point_mean[kind], bins=bins, density=True, histtype="step", label=kind)
    hist.set_title("histogram of per-point mean log p")
    hist.legend()
    bar = axes[1, -1]
    means = [-(log_p[k] / math.log(10)).mean().item() for k in kinds]
    bar.bar(kinds, means, color=["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(kinds)])
    bar.set_title("-log10 p (mean; lower is more likely)")
    axes[2, -1].plot(losses, lw=0.4)
    axes[2, -1].set_yscale("log")
    axes[2, -1].set_title("training loss (eps MSE)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    device = torch.device(args.device)
    size = size_of(args)
    *_, points, rounds = SIZES[size]
    points, rounds = args.points or points, args.rounds or rounds
    model, schedule, train_seconds, losses = swiss_roll_model(args, device)
    sets = {kind: point_set(kind, points, seed=args.seed + 1 + index) for index, kind in enumerate(POINT_SETS)}
    generator = torch.Generator(device=device).manual_seed(args.seed)
    log_p, seconds = {}, {}
    for kind, data in sets.items():
        start = time.perf_counter()
        log_p[kind] = log_likelihood(model, data.to(device), schedule, dt=args.dt, rounds=rounds,
                                     generator=generator, batch_size=args.batch_size, progress=True)
        seconds[kind] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "likelihood.png"
    _figure(figure, sets, log_p, losses)
    stats = {}
    for kind, values in log_p.items():
        stats[kind] = {
            "mean_log_p": round(values.mean().item(), 4),
            "std_log_p_over_rounds": round(values.std(1).mean().item(), 4) if rounds > 1 else None,
            "std_log_p_over_points": round(values.mean(1).std().item(), 4),
            "mean_log10_p": round((values / math.log(10)).mean().item(), 4),
            "log_mean_exp_over_rounds": round(log_mean_exp(values).mean().item(), 4),
            "seconds": round(seconds[kind], 2),
        }
    ranking = sorted(stats, key=lambda k: -stats[k]["mean_log_p"])
    summary = {
        "demo": NAME,
        "size": size,
        "device": str(device),
        "T": schedule.T,
        "schedule": schedule.name,
        "dt": args.dt,
        "points_per_set": points,
        "rounds": rounds,
        "train_seconds": round(train_seconds, 2),
        "final_training_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "sets": stats,
        "ranking_by_mean_log_p": ranking,
        "swiss_roll_highest": ranking[0] == "swiss_roll",
        "margin_to_second_nats": round(stats[ranking[0]]["mean_log_p"] - stats[ranking[1]]["mean_log_p"], 4),
        "scoring_seconds_total": round(sum(seconds.values()), 2),
        "figure": str(figure),
    }
    write_json(args.out / "summary.json", summary)
    return summary
