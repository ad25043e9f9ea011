"""Flow demo (paper 000 §2.1, Fig. 2-4): log-likelihood of images under flows, as an
out-of-distribution score, plus samples and super-resolution.

Trains on scikit-learn's bundled 8x8 digits of classes 0-7 (in-distribution) and
scores held-out test digits against out-of-distribution inputs: the unseen
classes 8 and 9, flipped digits, noised digits and uniform noise. Three models,
all on the fused coupling op:

1. a multi-scale Glow (exact log p(x), bits per dimension with dequantisation);
2. the hierarchical autoencoder + flow model of §2.1, trained in the paper's
   order (autoencoders by MSE, then flows), with the Eq. 5-8 terms
   log p(z), log p(y), log p(x) shown as histograms like Fig. 2;
3. a conditional Glow p(x_8x8 | x_4x4) (conditional coupling) for 4x4 -> 8x8
   super-resolution, next to the hierarchical model's own super-resolution.

With ``--data-root`` pointing at a folder holding CelebA (``img_align_celeba``) and/or
CIFAR-10 (``cifar-10-batches-py``), ``--dataset celeba`` or ``cifar10`` trains on that
set at 32x32 instead, with the other set (when present) as out-of-distribution data
(Fig. 2 is CelebA vs CIFAR-10). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from manifold_ext._optional import require
from manifold_ext._training import train_loop
from manifold_ext.datasets import (
    digits_levels,
    find_local_image_set,
    load_celeba_folder,
    load_cifar10_folder,
    ood_digit_sets,
)
from manifold_ext.datasets.images import DIGITS_BINS
from manifold_ext.demos.common import add_common_arguments, paper_row, pyplot, run_record, seed_everything, write_json
from manifold_ext.flows import HierarchicalFlow, MultiScaleGlow, data_initialize, dequantize, fit
from manifold_ext.flows.hierarchical import downsample, total_log_prob

NAME = "flow"
DESCRIPTION = (
    "Glow + hierarchical autoencoder/flow on 8x8 digits: log p OOD histograms (Fig. 2), AUROC, "
    "samples, 4x4->8x8 super-resolution"
)

IN_CLASSES = tuple(range(8))  # digits 8 and 9 are held out as out-of-distribution


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    parser.add_argument(
        "--dataset",
        choices=("digits", "celeba", "cifar10"),
        default="digits",
        help="in-distribution data (default: scikit-learn's 8x8 digits; others need --data-root)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="local folder holding img_align_celeba/ and/or cifar-10-batches-py/ (never downloaded)",
    )
    parser.add_argument("--glow-steps", type=int, default=None, help="Glow training steps (default 3000, quick 150)")
    parser.add_argument(
        "--ae-steps", type=int, default=None, help="hierarchical autoencoder steps (default 2000, quick 150)"
    )
    parser.add_argument(
        "--flow-steps", type=int, default=None, help="hierarchical flow steps (default 2000, quick 150)"
    )
    parser.add_argument(
        "--sr-steps", type=int, default=None, help="conditional (super-resolution) Glow steps (default 2000, quick 150)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _digits_data(seed: int):
    levels, labels = digits_levels()
    generator = torch.Generator().manual_seed(seed)
    in_dist = levels[torch.isin(labels, torch.tensor(IN_CLASSES))]
    held_out = levels[~torch.isin(labels, torch.tensor(IN_CLASSES))]
    order = torch.randperm(len(in_dist), generator=generator)
    n_test = len(in_dist) // 5
    train, test = in_dist[order[n_test:]], in_dist[order[:n_test]]
    test_x = dequantize(test, DIGITS_BINS, generator)
    ood = ood_digit_sets(test_x, dequantize(held_out, DIGITS_BINS, generator), seed=seed)
    return train, test_x, ood, DIGITS_BINS, "digits 0-7 (test)"


def _local_data(name: str, root, seed: int, quick: bool):
    generator = torch.Generator().manual_seed(seed)
    limit = 2000 if quick else 20000
    path = find_local_image_set(root, name)
    if path is None:
        raise SystemExit(
            f"--dataset {name}: not found under --data-root {root!r} "
            "(expected img_align_celeba/ for CelebA or cifar-10-batches-py/ for CIFAR-10)"
        )
    levels = load_celeba_folder(path, 32, limit) if name == "celeba" else load_cifar10_folder(path, "train", limit)
    order = torch.randperm(len(levels), generator=generator)
    n_test = min(1000, len(levels) // 5)
    train, test = levels[order[n_test:]], levels[order[:n_test]]
    test_x = dequantize(test, 256, generator)
    ood = {
        "flipped": torch.flip(test_x, dims=[2]),
        "uniform noise": torch.rand(test_x.shape, generator=generator) - 0.5,
    }
    other = "cifar10" if name == "celeba" else "celeba"
    other_path = find_local_image_set(root, other)
    if other_path is not None:
        other_levels = (
            load_cifar10_folder(other_path, "test", n_test)
            if other == "cifar10"
            else load_celeba_folder(other_path, 32, n_test)
        )
        ood = {other: dequantize(other_levels, 256, generator), **ood}
    return train, test_x, ood, 256, f"{name} (test)"


# ---------------------------------------------------------------------------
# Training loops (Glow and conditional Glow; the hierarchical model uses flows.fit)
# ---------------------------------------------------------------------------


def _train_glow(
    model: MultiScaleGlow, train_levels, n_bins, steps, batch_size, device, generator, desc, conditional=False
):
    def batch_of(levels):
        x = dequantize(levels, n_bins, generator).to(device)
        return (x, downsample(x)) if conditional else (x, None)

    model.to(device).train()
    first = batch_of(train_levels[torch.randperm(len(train_levels), generator=generator)[:512]])
    data_initialize(model, *first, method="log_prob")  # ActNorm's data-dependent initialisation

    def step_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(train_levels), (batch_size,), generator=generator)
        x, cond = batch_of(train_levels[index])
        return model.bits_per_dim(x, n_bins, cond).mean()

    losses = train_loop(
        model.parameters(),
        step_loss,
        steps=steps,
        lr=1e-3,
        warmup_steps=max(1, steps // 20),
        clip_grad_norm=50.0,
        generator=generator,
        desc=desc,
    ).loss
    return model.eval(), losses


@torch.no_grad()
def _batched(fn, x: torch.Tensor, device, size: int = 512) -> torch.Tensor:
    return torch.cat([fn(chunk.to(device)).cpu() for chunk in x.split(size)])


def _auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    scores = torch.cat([in_scores, out_scores]).double().nan_to_num(nan=-1e300, neginf=-1e300, posinf=1e300)
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    roc_auc_score = require("sklearn.metrics", feature="the flow demo's AUROC").roc_auc_score
    return float(roc_auc_score(labels, scores.numpy()))


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def _image_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """[N, C, H, W] in [-1/2, 1/2] -> an [rows*H, cols*W(, C)] array in [0, 1] with 1-pixel gaps."""
    images = (images.clamp(-0.5, 0.5) + 0.5).cpu()
    n, c, h, w = images.shape
    cols = math.ceil(n / rows)
    grid = torch.ones(c, rows * (h + 1) - 1, cols * (w + 1) - 1)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = images[k]
    array = grid.permute(1, 2, 0).numpy()
    return array[..., 0] if c == 1 else array


def _histogram_figure(path, quantities: dict[str, dict[str, torch.Tensor]], in_name: str, aurocs):
    """Fig. 2: one panel per quantity, the in-distribution histogram over each OOD set's."""
    plt = pyplot()
    names = list(quantities)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(np.atleast_1d(axes), names):
        per_set = quantities[name]
        values = torch.cat([v for v in per_set.values()])
        finite = values[torch.isfinite(values)]
        lo = max(finite.quantile(0.01).item(), -10_000.0)  # as Fig. 2: drop log p < -10,000
        hi = finite.quantile(0.999).item()
        bins = np.linspace(lo, hi, 60)
        for k, (set_name, v) in enumerate(per_set.items()):
            v = v[torch.isfinite(v) & (v >= lo)].numpy()
            if len(v) == 0:
                continue
            label = set_name if set_name == in_name else f"{set_name} (AUROC {aurocs[name][set_name]:.3f})"
            ax.hist(v, bins=bins, density=True, alpha=0.45 if k else 0.7, color=colours[k % len(colours)], label=label)
        ax.set_title(name)
        ax.set_xlabel("nats")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _samples_figure(path, panels: dict[str, torch.Tensor]):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for ax, (title, images) in zip(np.atleast_1d(axes), panels.items()):
        ax.imshow(_image_grid(images, rows=int(math.sqrt(len(images)))), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _superres_figure(path, low, truth, hierarchical, conditional, temperature):
    """Rows: examples; columns: low-res input (shown enlarged), ground truth, samples of each model."""
    plt = pyplot()
    n = low.shape[0]
    columns = [("low-res input", F.interpolate(low, scale_factor=2, mode="nearest")), ("ground truth", truth)]
    columns += [(f"hierarchical #{k + 1}", s) for k, s in enumerate(hierarchical)]
    columns += [(f"conditional Glow #{k + 1}", s) for k, s in enumerate(conditional)]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.3 * n + 0.6))
    for row in range(n):
        for col, (title, images) in enumerate(columns):
            ax = axes[row, col]
            image = (images[row].clamp(-0.5, 0.5) + 0.5).permute(1, 2, 0).cpu().numpy()
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(
        f"super-resolution {low.shape[-1]}x{low.shape[-1]} -> {truth.shape[-1]}x{truth.shape[-1]}, "
        f"temperature {temperature}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _training_figure(path, curves: dict[str, list[float]]):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3))
    for ax, (title, values) in zip(np.atleast_1d(axes), curves.items()):
        ax.plot(values, lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------


def _slug(text: str) -> str:
    """'log p(z)' -> 'log-pz', 'held-out classes' -> 'held-out-classes' (for paper_comparison ids)."""
    kept = "".join(c if c.isalnum() or c in " -_" else "" for c in text.lower())
    return "-".join(kept.replace("_", " ").split())


def _paper_rows(aurocs: dict, dataset: str, in_name: str) -> list[dict]:
    """Fig. 2 shows log p histograms of in- and out-of-distribution sets (CelebA vs CIFAR-10); it gives no AUROC,
    so every row has paper = None; ours is the AUROC of 'in-distribution has the higher log p'."""
    setup = (
        "scikit-learn 8x8 digits 0-7 (test) against held-out digits 8-9, flipped, noised and uniform-noise "
        "images instead of CelebA against CIFAR-10"
        if dataset == "digits"
        else f"{dataset} at 32x32 against the sets found locally"
    ) + "; Fig. 2 shows histograms, no AUROC"
    models = {
        "log p(z)": "hierarchical",
        "log p(y)": "hierarchical",
        "log p(x)": "hierarchical",
        "Glow log p(x)": "glow",
    }
    rows = []
    for quantity, per_set in aurocs.items():
        for name, value in per_set.items():
            term = _slug(quantity.replace("Glow ", ""))
            rows.append(
                paper_row(
                    f"000-fig2-{models[quantity]}-{term}-{_slug(name)}",
                    f"OOD AUROC of {quantity} ({models[quantity]} model): {in_name} vs {name}",
                    None,
                    round(value, 4),
                    setup=setup,
                )
            )
    return rows


def _round(value, digits=4):
    return round(float(value), digits)


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    generator = seed_everything(args.seed)
    device = torch.device(args.device)
    quick = args.quick
    steps = {
        "glow": args.glow_steps or (150 if quick else 3000),
        "ae": args.ae_steps or (150 if quick else 2000),
        "flow": args.flow_steps or (150 if quick else 2000),
        "sr": args.sr_steps or (150 if quick else 2000),
    }
    if args.dataset == "digits":
        train, test_x, ood, n_bins, in_name = _digits_data(args.seed)
    else:
        train, test_x, ood, n_bins, in_name = _local_data(args.dataset, args.data_root, args.seed, quick)
    channels, size = train.shape[1], train.shape[-1]
    big = size >= 32
    sets = {in_name: test_x, **ood}
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}

    # 1. Multi-scale Glow: exact log p(x) and bits per dimension.
    start = time.perf_counter()
    glow_size = dict(  # one Glow size for parts 1 (unconditional) and 3 (conditional on the downsampled image)
        levels=3 if big else 2,
        steps_per_level=(2 if quick else 8 if big else 4),
        hidden_channels=(32 if quick else 128 if big else 64),
    )
    glow = MultiScaleGlow(channels, **glow_size, image_size=(size, size))
    glow, glow_losses = _train_glow(
        glow, train, n_bins, steps["glow"], args.batch_size, device, generator, "Glow (bits/dim)"
    )
    timings["glow_train_s"] = time.perf_counter() - start
    glow_log_p = {name: _batched(glow.log_prob, x, device) for name, x in sets.items()}
    dims = channels * size * size
    glow_bpd = {
        name: (-(lp - dims * math.log(n_bins)) / (dims * math.log(2))).mean().item() for name, lp in glow_log_p.items()
    }

    # 2. Hierarchical autoencoders + flows (§2.1), trained in the paper's order.
    start = time.perf_counter()
    hier = HierarchicalFlow(
        image_channels=channels,
        image_size=size,
        levels=4 if big else 3,
        latent_channels=4 if big else 2,
        ae_hidden=64 if big else 32,
        flow_steps=2 if quick else 4,
        flow_hidden=32 if quick else 64,
    ).to(device)
    result = fit(
        hier,
        train,
        autoencoder_steps=steps["ae"],
        flow_steps=steps["flow"],
        batch_size=args.batch_size,
        dequantize_fn=lambda b: dequantize(b, n_bins, generator),
        checkpoint=args.out / "hierarchical.pt",
        checkpoint_every=500,
        resume=False,
        seed=args.seed,
    )
    timings["hierarchical_train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    hier_terms = {}
    # The encoder volume factor needs d_i backward passes and an SVD per image: cheap at 8x8,
    # costly at 32x32 (d_1 = 1024), where a subset of each set is scored.
    eval_limit = (16 if quick else 100) if big else None
    for name, x in tqdm(sets.items(), desc="log p terms (Eq. 5-8)", unit="set"):
        chunks = [hier.log_prob_terms(chunk.to(device)) for chunk in x[:eval_limit].split(64 if big else 256)]
        hier_terms[name] = {
            "log p(z)": torch.cat([sum(t.log_pz for t in terms).cpu() for terms in chunks]),
            "log p(y)": torch.cat([sum(t.log_py for t in terms).cpu() for terms in chunks]),
            "log p(x)": torch.cat([total_log_prob(terms).cpu() for terms in chunks]),
            "log p(z_1)": torch.cat([terms[0].log_pz.cpu() for terms in chunks]),
            "ae log-volume": torch.cat([sum(t.ae_logdet for t in terms).cpu() for terms in chunks]),
        }
    timings["log_prob_terms_s"] = time.perf_counter() - start
    quantities = {q: {name: hier_terms[name][q] for name in sets} for q in ("log p(z)", "log p(y)", "log p(x)")}
    quantities["Glow log p(x)"] = glow_log_p
    aurocs = {q: {name: _auroc(per_set[in_name], per_set[name]) for name in ood} for q, per_set in quantities.items()}
    with torch.no_grad():
        recon_mse = F.mse_loss(_batched(hier.reconstruct, test_x, device), test_x).item()

    # 3. Super-resolution (size/2 -> size): conditional Glow p(x | d(x)) and the hierarchical model.
    start = time.perf_counter()
    sr_glow = MultiScaleGlow(channels, **glow_size, condition_channels=channels, image_size=(size, size))
    sr_glow, sr_losses = _train_glow(
        sr_glow,
        train,
        n_bins,
        steps["sr"],
        args.batch_size,
        device,
        generator,
        "conditional Glow (bits/dim)",
        conditional=True,
    )
    timings["sr_glow_train_s"] = time.perf_counter() - start
    low = downsample(test_x)
    cond_bpd = _batched(lambda xx: sr_glow.bits_per_dim(xx, n_bins, downsample(xx)), test_x, device).mean().item()
    t = args.temperature
    sr_hier = _batched(lambda lo: hier.super_resolve(lo, t, generator=None), low, device)
    sr_cond = _batched(lambda lo: sr_glow.sample(len(lo), t, cond=lo), low, device)
    baseline = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)

    def sr_stats(images):
        return {
            "mse_to_truth": _round(F.mse_loss(images, test_x).item(), 5),
            "mse_of_downsampled_to_input": _round(F.mse_loss(downsample(images), low).item(), 5),
        }

    # Figures.
    figures = {k: args.out / f"flow_{k}.png" for k in ("loglik_hist", "samples", "superres", "training")}
    _histogram_figure(figures["loglik_hist"], quantities, in_name, aurocs)
    with torch.no_grad():
        shown = test_x[:36].to(device)
        _samples_figure(
            figures["samples"],
            {
                "test images": shown,
                f"Glow samples, T={t}": glow.sample(36, t, generator=None),
                "Glow samples, T=1.0": glow.sample(36, 1.0),
                "hierarchical reconstructions (Eq. 3, z from encoders)": hier.reconstruct(shown),
                f"hierarchical samples (Eq. 3, z ~ N(0, T^2)), T={t}": hier.sample(36, t),
            },
        )
        examples = test_x[:8].to(device)
        low_examples = downsample(examples)
        _superres_figure(
            figures["superres"],
            low_examples,
            examples,
            [hier.super_resolve(low_examples, t) for _ in range(3)],
            [sr_glow.sample(8, t, cond=low_examples) for _ in range(3)],
            t,
        )
    _training_figure(
        figures["training"],
        {
            "Glow bits/dim": glow_losses,
            "autoencoders MSE (Eq. 4)": result.autoencoder_losses,
            "flows NLL/dim (Eq. 5)": result.flow_losses,
            "conditional Glow bits/dim": sr_losses,
        },
    )

    summary = {
        "demo": NAME,
        "dataset": args.dataset,
        "device": str(device),
        "in_distribution": in_name,
        "set_sizes": {name: len(x) for name, x in sets.items()},
        "hierarchical_scored_per_set": eval_limit or "all",
        "training_steps": steps,
        "seconds": {k: _round(v, 1) for k, v in timings.items()},
        "glow": {
            "bits_per_dim": {name: _round(v) for name, v in glow_bpd.items()},
            "mean_log_p_nats": {name: _round(v.mean()) for name, v in glow_log_p.items()},
            "ood_auroc_log_p": {name: _round(v) for name, v in aurocs["Glow log p(x)"].items()},
        },
        "hierarchical": {
            "levels": hier.levels,
            "latent_dims": [ae.latent_channels * (size // 2 ** (i + 1)) ** 2 for i, ae in enumerate(hier.autoencoders)],
            "final_autoencoder_mse": _round(np.mean(result.autoencoder_losses[-50:]), 5),
            "final_flow_nll_per_dim": _round(np.mean(result.flow_losses[-50:])),
            "test_reconstruction_mse_eq3": _round(recon_mse, 5),
            "mean_nats": {
                q: {name: _round(hier_terms[name][q].mean()) for name in sets}
                for q in ("log p(z)", "log p(y)", "log p(x)", "log p(z_1)", "ae log-volume")
            },
            "ood_auroc": {
                q: {name: _round(v) for name, v in aurocs[q].items()} for q in ("log p(z)", "log p(y)", "log p(x)")
            },
            "ood_auroc_level1_log_pz": {
                name: _round(_auroc(hier_terms[in_name]["log p(z_1)"], hier_terms[name]["log p(z_1)"])) for name in ood
            },
        },
        "super_resolution": {
            "from": f"{size // 2}x{size // 2}",
            "to": f"{size}x{size}",
            "temperature": t,
            "conditional_glow_bits_per_dim": _round(cond_bpd),
            "unconditional_glow_bits_per_dim": _round(glow_bpd[in_name]),
            "conditional_glow": sr_stats(sr_cond),
            "hierarchical": sr_stats(sr_hier),
            "bilinear_upsampling": sr_stats(baseline),
        },
        "figures": {k: str(v) for k, v in figures.items()},
        "checkpoint": str(args.out / "hierarchical.pt"),
        "paper_comparison": _paper_rows(aurocs, args.dataset, in_name),
        "run": run_record(started),
    }
    write_json(args.out / "summary.json", summary)
    return summary
