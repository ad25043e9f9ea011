"""Lift, Map, Detect (paper ``001_…``, Liu, Zhou and Weinberger) on 8x8 digits, against the
diffusion likelihood of paper 000 Eq. 15.

A small U-Net eps-model (T = 100, linear schedule) is trained on scikit-learn's 8x8
digits of classes 0-7 (dequantised, scaled to [-1, 1]); held-out test digits of those
classes are in-distribution, and the out-of-distribution sets are the flow demo's:
digits 8 and 9 (held-out classes), in-distribution test digits flipped upside down,
noised (Gaussian, std 0.2 on the [-1, 1] scale) and uniform noise. Every image gets

* the LMD score: median over ``--attempts`` inpaintings (alternating 4x4 checkerboard
  of 2x2-pixel patches, RePaint-style Algorithm 2) of the reconstruction MSE;
* the likelihood score: log p by Eq. 15 (``log_likelihood``, mean over rounds).

Reported: ROC-AUC of each score per OOD set (in-distribution = negative class for
LMD's distance, positive for log p), histograms, and example reconstructions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from manifold_ext._optional import require
from manifold_ext.analysis.lmd import checkerboard_mask, lmd_scores
from manifold_ext.datasets import digits_levels, ood_digit_sets
from manifold_ext.datasets.images import DIGITS_BINS
from manifold_ext.demos.common import add_common_arguments, paper_row, pyplot, run_record, seed_everything, write_json
from manifold_ext.diffusion import (
    SmallUNet,
    TrainConfig,
    linear_schedule,
    load_checkpoint,
    log_likelihood,
    save_checkpoint,
    train_eps_model,
)
from manifold_ext.flows import dequantize

NAME = "liftmap"
DESCRIPTION = "Lift-Map-Detect OOD detection (diffusion inpainting, median MSE) vs diffusion log p on 8x8 digits"

IN_CLASSES = tuple(range(8))
# (training steps, images per set, attempts, inpainting dt, likelihood rounds)
SIZES = {"quick": (300, 40, 4, 5, 2), "default": (3000, 200, 10, 2, 4)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    parser.add_argument("--train-steps", type=int, default=None, help="U-Net training steps (default 3000, quick 300)")
    parser.add_argument("--per-set", type=int, default=None, help="images scored per set (default 200, quick 40)")
    parser.add_argument(
        "--attempts", type=int, default=None, help="inpaintings per image (default 10, the paper's; quick 4)"
    )
    parser.add_argument(
        "--patches", type=int, default=4, help="checkerboard patches per side (default 4: 2x2-pixel patches)"
    )
    parser.add_argument(
        "--dt", type=int, default=None, help="inpainting time step, a divisor of T (default 2, quick 5)"
    )
    parser.add_argument("--resample", type=int, default=1, help="RePaint resamplings per step (default 1: Algorithm 2)")
    parser.add_argument("--rounds", type=int, default=None, help="Eq. 15 rounds per image (default 4, quick 2)")
    parser.add_argument(
        "--checkpoint",
        type=str,
        default=None,
        help="load the trained model from this file if it exists, else train and save it there",
    )


def digits_sets(seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(train, in-distribution test, OOD sets), continuous images in [-1, 1], ``[N, 1, 8, 8]``."""
    levels, labels = digits_levels()
    generator = torch.Generator().manual_seed(seed)
    inside = torch.isin(labels, torch.tensor(IN_CLASSES))
    in_dist, held_out = levels[inside], levels[~inside]
    order = torch.randperm(len(in_dist), generator=generator)
    n_test = len(in_dist) // 5
    train = 2 * dequantize(in_dist[order[n_test:]], DIGITS_BINS, generator)
    test = dequantize(in_dist[order[:n_test]], DIGITS_BINS, generator)
    ood = ood_digit_sets(test, dequantize(held_out, DIGITS_BINS, generator), seed=seed)  # in [-1/2, 1/2]
    return train, 2 * test, {name: 2 * images for name, images in ood.items()}


def _paper_rows(aurocs: dict, per_set: int, attempts: int) -> list[dict]:
    """LMD's Table 1 pairs (CIFAR-10, SVHN, MNIST, KMNIST, FashionMNIST at 32x32, LPIPS) have no counterpart on
    the 8x8 digits, so paper = None; its nearest rows are MNIST vs KMNIST 0.984 and vs FashionMNIST 0.999."""
    setup = (
        f"8x8 digits 0-7 (in) against held-out digits 8-9, flipped, noised and uniform noise, {per_set} images "
        f"per set, {attempts} inpaintings, MSE instead of LPIPS, a small U-Net at T = 100; the article's "
        "digit rows are MNIST vs KMNIST (0.984) and vs FashionMNIST (0.999)"
    )
    rows = []
    for score, label in (("lmd", "LMD (median inpainting MSE)"), ("log_p", "diffusion log p (Eq. 15)")):
        for name, value in aurocs[score].items():
            slug = "-".join(name.lower().split())
            rows.append(
                paper_row(
                    f"001-lmd-{score.replace('_', '')}-{slug}",
                    f"OOD ROC-AUC of {label}: {name}",
                    None,
                    round(value, 4),
                    setup=setup,
                )
            )
    return rows


def _auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """ROC-AUC for "OOD has the higher score"."""
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    roc_auc_score = require("sklearn.metrics", feature="the liftmap demo's AUROC").roc_auc_score
    return float(roc_auc_score(labels, torch.cat([in_scores, out_scores]).double().numpy()))


def _figure(path, sets, lmd, log_p, recons, aurocs, patches):
    plt = pyplot()
    names = list(sets)
    fig = plt.figure(figsize=(4 * len(names), 9))
    grid = fig.add_gridspec(3, len(names), hspace=0.35)
    mask = checkerboard_mask(8, 8, patches).float().numpy()
    for column, name in enumerate(names):
        sub = grid[0, column].subgridspec(3, 4, hspace=0.05, wspace=0.05)
        for j in range(4):
            original = sets[name][j, 0].numpy()
            for row, image in enumerate(
                (original, np.where(mask > 0, original, np.nan), recons[name][j, 0, 0].numpy())
            ):
                ax = fig.add_subplot(sub[row, j])
                ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(("input", "lifted", "mapped")[row], fontsize=7)
            if j == 0:
                fig.axes[-3].set_title(name, fontsize=9)
    ax = fig.add_subplot(grid[1, :])
    bins = np.linspace(0, float(np.percentile(torch.cat(list(lmd.values())).numpy(), 99)), 50)
    for name in names:
        ax.hist(lmd[name].numpy(), bins=bins, histtype="step", density=True, label=name)
    ax.set_title("LMD score: median reconstruction MSE over attempts (higher = more OOD)")
    ax.legend()
    ax = fig.add_subplot(grid[2, :])
    ood_names = [n for n in names if n != "in-distribution"]
    x = np.arange(len(ood_names))
    ax.bar(x - 0.2, [aurocs["lmd"][n] for n in ood_names], 0.4, label="LMD (median MSE)")
    ax.bar(x + 0.2, [aurocs["log_p"][n] for n in ood_names], 0.4, label="diffusion log p (Eq. 15)")
    ax.set_xticks(x, ood_names)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="k", lw=0.5)
    ax.set_title("ROC-AUC, digits 0-7 (test) vs each set")
    ax.legend(loc="lower left")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    seed_everything(args.seed)
    device = torch.device(args.device)
    size = "quick" if args.quick else "default"
    steps, per_set, attempts, dt, rounds = SIZES[size]
    steps = args.train_steps or steps
    per_set, attempts = args.per_set or per_set, args.attempts or attempts
    dt, rounds = args.dt or dt, args.rounds or rounds
    train, test, ood = digits_sets(args.seed)
    start = time.perf_counter()
    if args.checkpoint is not None and Path(args.checkpoint).exists():
        model, schedule, _ = load_checkpoint(args.checkpoint, map_location=device)
        losses = []
    else:
        schedule = linear_schedule(100)
        torch.manual_seed(args.seed)
        model = SmallUNet(channels=1, base=32, channel_mults=(1, 2), T=100).to(device)
        model, losses = train_eps_model(
            model, train.to(device), schedule, TrainConfig(steps=steps, batch_size=128, lr=2e-3, seed=args.seed)
        )
        if args.checkpoint is not None:
            save_checkpoint(args.checkpoint, model, schedule, losses=losses)
    train_seconds = time.perf_counter() - start
    pick = torch.Generator().manual_seed(args.seed + 1)
    sets = {"in-distribution": test}
    sets.update(ood)
    sets = {name: images[torch.randperm(len(images), generator=pick)[:per_set]] for name, images in sets.items()}
    noise = torch.Generator(device=device).manual_seed(args.seed)
    lmd, log_p, recons, seconds = {}, {}, {}, {"lmd": 0.0, "log_p": 0.0}
    for name, images in sets.items():
        start = time.perf_counter()
        scores, _, mapped = lmd_scores(
            model,
            schedule,
            images.to(device),
            attempts=attempts,
            patches=args.patches,
            dt=dt,
            resample=args.resample,
            generator=noise,
            progress=True,
            return_reconstructions=True,
        )
        seconds["lmd"] += time.perf_counter() - start
        lmd[name], recons[name] = scores, mapped
        start = time.perf_counter()
        log_p[name] = log_likelihood(model, images.to(device), schedule, rounds=rounds, generator=noise).mean(1)
        seconds["log_p"] += time.perf_counter() - start
    ood_names = [n for n in sets if n != "in-distribution"]
    aurocs = {
        "lmd": {n: _auroc(lmd["in-distribution"], lmd[n]) for n in ood_names},
        "log_p": {n: _auroc(-log_p["in-distribution"], -log_p[n]) for n in ood_names},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "liftmap.png"
    _figure(figure, sets, lmd, log_p, recons, aurocs, args.patches)
    summary = {
        "demo": NAME,
        "size": size,
        "device": str(device),
        "train_steps": steps,
        "train_seconds": round(train_seconds, 2),
        "final_training_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "images_per_set": per_set,
        "attempts": attempts,
        "mask": f"alternating checkerboard {args.patches}x{args.patches} "
        f"(patches of {8 // args.patches}x{8 // args.patches} pixels)",
        "inpainting_dt": dt,
        "resample": args.resample,
        "distance": "mean squared error (LPIPS needs a pretrained network; MSE is the article's Table 3 alternative)",
        "likelihood_rounds": rounds,
        "auroc": {k: {n: round(v, 4) for n, v in d.items()} for k, d in aurocs.items()},
        "mean_lmd_score": {n: round(float(v.mean()), 5) for n, v in lmd.items()},
        "mean_log_p_nats_on_minus1_1_scale": {n: round(float(v.mean()), 2) for n, v in log_p.items()},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "figure": str(figure),
        "paper_comparison": _paper_rows(aurocs, per_set, attempts),
        "run": run_record(started),
    }
    write_json(args.out / "summary.json", summary)
    return summary
