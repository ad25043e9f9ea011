"""Diffusion log-likelihood of 2-D point sets (paper 000 Fig. 5).

A DDPM eps-model (MLP with time embedding, T = 100, linear schedule) is
trained on a Swiss roll; then every point of four sets (Swiss roll, circle,
moons, S-curve; fresh samples, normalised alike: see
``manifold_ext.diffusion.toy_data``) is scored by Eq. 15 at dt = 1 over
random rounds of the forward chain, on the fused likelihood-step op. The
in-distribution Swiss roll should score clearly highest.

Data scale and units: every set is centred and scaled to an overall standard
deviation sqrt((var_x + var_y) / 2) = 1, and log p is the density of a 2-D
point in those units, reported in nats and as log10 (the paper's Fig. 5C).
Scaling the data by c shifts log10 p by -2 log10 c per point, so absolute
values compare with the paper's (Swiss roll -0.933, log10) only up to the
paper's unstated data scale; the ranking does not depend on it.

Sizes (training steps; points per set x rounds; run time measured on 2 quiet
cores of an AMD EPYC, AVX-512 path, of which training is most of the default):
``--quick`` (1,500; 400 x 4; about 20 s, for CI), default (4,000; 2,000 x 10;
about 2 minutes), ``--full`` (the paper's size: 8,000; 10,000 x 100 at
T = 100, dt = 1, every set; about 10 minutes).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from manifold_ext.demos.common import add_common_arguments, paper_row, pyplot, run_record, seed_everything, write_json
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
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="load the trained model from this file if it exists, else train and save it there",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the paper's full size: 10,000 points x 100 rounds per set (about 10 minutes on 2 cores)",
    )


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
    model, losses = train_eps_model(
        model, data, schedule, TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=args.seed)
    )
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
        mean = axes[1, column].scatter(
            points[:, 0], points[:, 1], c=per_point_mean[kind], s=2, cmap="viridis", vmin=low, vmax=high
        )
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


PAPER_SWISS_ROLL_LOG10P = -0.933  # paper 000 §2.3.2 / Fig. 5C: mean log10 p of the Swiss roll, the highest
DATA_SCALE = (
    "each set centred and scaled to overall std sqrt((var_x + var_y) / 2) = 1; log p is the 2-D density "
    "in those units (scaling the data by c shifts log10 p by -2 log10 c per point)"
)


def set_statistics(values: torch.Tensor, seconds: float) -> dict:
    """Statistics of a ``[points, rounds]`` tensor of log p (nats) per point and round."""
    log10 = values / math.log(10)
    rounds = values.shape[1]
    return {
        "mean_log_p": round(values.mean().item(), 4),
        "mean_log10_p": round(log10.mean().item(), 4),
        # Fig. 5B's bottom row: each point's SD over the random rounds, averaged over points
        "per_point_std_over_rounds_log_p": round(values.std(1).mean().item(), 4) if rounds > 1 else None,
        "per_point_std_over_rounds_log10_p": round(log10.std(1).mean().item(), 4) if rounds > 1 else None,
        "std_of_round_means_log10_p": round(log10.mean(0).std().item(), 4) if rounds > 1 else None,
        "std_over_points_log10_p": round(log10.mean(1).std().item(), 4),
        "log_mean_exp_over_rounds": round(log_mean_exp(values).mean().item(), 4),
        "seconds": round(seconds, 2),
    }


def comparison_rows(stats: dict, points: int, rounds: int, T: int, dt: int) -> list[dict]:
    """``000-fig5-<set>-log10p``: mean log10 p per point (the paper gives the Swiss roll's only)."""
    size = (
        ""
        if (points, rounds, T, dt) == (10_000, 100, 100, 1)
        else (f"{points} points x {rounds} rounds, T = {T}, dt = {dt} (paper: 10,000 x 100, T = 100, dt = 1); ")
    )
    rows = []
    for kind, row in stats.items():
        setup = (
            f"{size}data scale: {DATA_SCALE}; the paper's scale is not stated; sklearn-generated set with "
            f"relative noise 0.05; MLP eps-model trained here"
        )
        rows.append(
            paper_row(
                f"000-fig5-{kind}-log10p",
                f"mean log10 p(x_0) per point of the {kind} set under a Swiss-roll diffusion model (Eq. 15; spread: "
                f"per-point SD over rounds, averaged)",
                PAPER_SWISS_ROLL_LOG10P if kind == "swiss_roll" else None,
                row["mean_log10_p"],
                spread=row["per_point_std_over_rounds_log10_p"],
                unit="log10 p per 2-D point",
                setup=setup,
            )
        )
    return rows


def run(args: argparse.Namespace) -> dict:
    started, cpu_started = time.time(), time.process_time()
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
        log_p[kind] = log_likelihood(
            model,
            data.to(device),
            schedule,
            dt=args.dt,
            rounds=rounds,
            generator=generator,
            batch_size=args.batch_size,
            progress=True,
        )
        seconds[kind] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "likelihood.png"
    _figure(figure, sets, log_p, losses)
    stats = {kind: set_statistics(values, seconds[kind]) for kind, values in log_p.items()}
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
        "data_scale": DATA_SCALE,
        "units": "log p in nats per 2-D point; log10 p = log p / ln 10",
        "train_seconds": round(train_seconds, 2),
        "final_training_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "sets": stats,
        "ranking_by_mean_log_p": ranking,
        "swiss_roll_highest": ranking[0] == "swiss_roll",
        "margin_to_second_nats": round(stats[ranking[0]]["mean_log_p"] - stats[ranking[1]]["mean_log_p"], 4),
        "scoring_seconds_total": round(sum(seconds.values()), 2),
        "figure": str(figure),
        "paper_comparison": comparison_rows(stats, points, rounds, schedule.T, args.dt),
    }
    summary["run"] = run_record(started)
    # CPU time of this process: the wall time on an idle machine at one thread, whatever the load was
    summary["run"]["process_cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    write_json(args.out / "summary.json", summary)
    return summary
