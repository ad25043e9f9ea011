"""Large-step sampling (paper 000 Fig. 6-8) at the paper's T = 1000, and Fig. 7's RK4-with-DDPM question.

Part 1, Fig. 6/8 at T = 1000. An eps-model is trained on a 2-D Swiss roll
(MLP) and one on scikit-learn's 8x8 digits (small U-Net), both with T = 1000
(linear schedule). Each samples with DDPM, DDIM (eta = 0), the large step of
Def. 2.1, and the paper's RK4 (appendix Eq. 38-43) with g = DDIM and
g = DDPM, at dt in {1, 2, 5, 10, 20, 50, 100} (1,000 to 10 steps), all from
the same x_T. Quality per cell:

* Swiss roll: ``manifold_distance`` (mean distance from a sample to the
  noiseless curve, normalised units), ``off_manifold`` (share of samples
  farther from the curve than 99 % of held-out data), ``coverage`` (mean
  distance from a held-out data point to its nearest sample: dropped parts of
  the roll raise it) and the sliced 1-Wasserstein distance to held-out data;
* digits: ``frechet_distance`` (FID-like: Frechet distance between Gaussians
  fitted to fixed features, the penultimate layer of a small CNN classifier
  trained once on the training digits) and ``nearest_train_distance`` (RMS
  pixel distance to the nearest training image), with held-out test digits
  as the reference;
* deterministic samplers: ``drift_from_dt1``, the distance between the sample
  at dt and at dt = 1 from the same x_T, RMS per coordinate (pixel) and
  averaged over samples (Fig. 8's "consistency").

Part 2, Fig. 7 (RK4 with g = DDPM against DDPM at dt = 2, 5, 10, 20 with
T = 100, as the paper's text says). The paper shows RK4-DDPM cleaner; here it
is not, and three experiments isolate why: the trained Swiss-roll model at
T = 100; the exact noise predictor of the empirical Swiss-roll distribution
(no network error); the exact predictor for Gaussian data (closed-form
spread), also under the partially diffusing sigmoid schedule of the common
Swiss-roll tutorial. Each under every placement of g's noise among RK4's
stages (``rk4_noise``: see ``manifold_ext.diffusion.samplers``).

Run time on 2 quiet cores (AMD EPYC, AVX-512 path): ``--quick`` (T = 100,
tiny models; for CI) about 30 s; the full run about 15 minutes, most of it
training the three models and sampling the digits.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from manifold_ext.demos.common import add_common_arguments, paper_row, pyplot, run_record, seed_everything, write_json
from manifold_ext.diffusion import (
    PointEpsNet,
    SmallUNet,
    TrainConfig,
    linear_schedule,
    load_checkpoint,
    sample,
    save_checkpoint,
    train_eps_model,
)
from manifold_ext.diffusion.exact import EmpiricalDataEps, GaussianDataEps, sigmoid_schedule
from manifold_ext.diffusion.samplers import SamplerDivergenceWarning
from manifold_ext.diffusion.toy_data import point_set, swiss_roll_curve
from manifold_ext.ops import ddpm_step

NAME = "sampling"
DESCRIPTION = "Fig. 6-8 at T = 1000 (Swiss roll, digits): DDPM / DDIM / large step / RK4 at dt 1..100; Fig. 7 RK4-DDPM"

# name -> (method, keyword arguments of `sample`, deterministic)
SAMPLERS = {
    "ddpm": ("ddpm", {}, False),
    "ddim": ("ddim", {"eta": 0.0}, True),
    "large_step": ("large_step", {}, False),
    "rk4_ddim": ("rk4", {"rk4_step": "ddim"}, True),
    "rk4_ddpm": ("rk4", {"rk4_step": "ddpm"}, False),
}
POINT_EXTRA = {"pf_ode_rk4": ("pf_ode", {}, True)}  # classical RK4 on the probability-flow ODE, for reference
DTS = (1, 2, 5, 10, 20, 50, 100)
# Fig. 7: DDPM against RK4 with g = DDPM, under every placement of g's noise among the RK4 stages.
FIG7_DTS = (1, 2, 5, 10, 20)
FIG7_SAMPLERS = {
    "ddpm": ("ddpm", {}),
    "ddpm_mean": ("ddpm_mean", {}),  # DDPM without its noise: what dropping the noise alone does
    "large_step": ("large_step", {}),
    "rk4_ddpm": ("rk4", {"rk4_step": "ddpm", "rk4_noise": "final"}),
    "rk4_ddpm_fresh": ("rk4", {"rk4_step": "ddpm", "rk4_noise": "fresh"}),
    "rk4_ddpm_shared": ("rk4", {"rk4_step": "ddpm", "rk4_noise": "shared"}),
    "rk4_ddpm_stages": ("rk4", {"rk4_step": "ddpm", "rk4_noise": "stages"}),
    "rk4_ddpm_none": ("rk4", {"rk4_step": "ddpm", "rk4_noise": "none"}),
    "rk4_ddim": ("rk4", {"rk4_step": "ddim"}),
}
THIN_GAUSSIAN_STD = 0.05  # the Swiss roll's thickness across the curve, in normalised units


@dataclasses.dataclass(frozen=True)
class Size:
    T: int  # steps of the Part 1 models
    point_steps: int
    point_hidden: int
    point_samples: int
    digit_steps: int
    unet_base: int
    digit_samples: int
    fig7_steps: int  # training steps of the T = 100 Swiss-roll model of Part 2
    fig7_samples: int
    fig7_seeds: int
    oracle_samples: int
    oracle_points: int  # data points of the empirical-distribution oracle
    gaussian_samples: int


SIZES = {
    "quick": Size(
        T=100,
        point_steps=600,
        point_hidden=64,
        point_samples=300,
        digit_steps=300,
        unet_base=8,
        digit_samples=32,
        fig7_steps=600,
        fig7_samples=300,
        fig7_seeds=2,
        oracle_samples=100,
        oracle_points=200,
        gaussian_samples=4000,
    ),
    "full": Size(
        T=1000,
        point_steps=4000,
        point_hidden=128,
        point_samples=1000,
        digit_steps=3000,
        unet_base=32,
        digit_samples=128,
        fig7_steps=4000,
        fig7_samples=2000,
        fig7_seeds=3,
        oracle_samples=500,
        oracle_points=1000,
        gaussian_samples=50_000,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="folder of trained models: each is loaded from it when there, else trained and saved",
    )
    parser.add_argument("--samples", type=int, default=None, help="Swiss-roll samples per cell (default 1000)")
    parser.add_argument("--digit-samples", type=int, default=None, help="digit samples per cell (default 128)")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def _trained(path: Path | None, build, data: torch.Tensor, schedule, config: TrainConfig, device) -> tuple:
    """(model in eval mode, schedule, training seconds): loaded from ``path`` when it exists, else trained."""
    if path is not None and path.exists():
        model, schedule, payload = load_checkpoint(path, map_location=device)
        return model.to(device), schedule, payload.get("train_seconds", 0.0)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    model, losses = train_eps_model(build().to(device), data.to(device), schedule, config)
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model, schedule, train_seconds=seconds, losses=losses)
    return model, schedule, seconds


def _checkpoint(args, name: str) -> Path | None:
    return args.checkpoints / f"{name}.pt" if args.checkpoints is not None else None


def swiss_roll_model(args, T: int, steps: int, hidden: int, device) -> tuple:
    data = point_set("swiss_roll", 20_000, seed=args.seed)
    config = TrainConfig(steps=steps, batch_size=1024, lr=2e-3, seed=args.seed)
    return _trained(
        _checkpoint(args, f"swiss_roll_T{T}_{steps}"),
        lambda: PointEpsNet(2, hidden, 3, T=T),
        data,
        linear_schedule(T),
        config,
        device,
    )


def digit_sets(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits in [-1, 1]: (train images, train labels, test images, test labels), 80 / 20 split."""
    from manifold_ext.datasets.images import digits_levels

    levels, labels = digits_levels()
    images = levels / 8.0 - 1.0  # levels 0..16 -> [-1, 1]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(images))
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]


def digit_model(args, size: Size, train: torch.Tensor, device) -> tuple:
    # the quick model takes larger, smaller-batch steps to learn something in seconds
    batch_size, lr = (64, 5e-3) if size.digit_steps < 1000 else (128, 2e-3)
    config = TrainConfig(steps=size.digit_steps, batch_size=batch_size, lr=lr, seed=args.seed)

    def build():
        return SmallUNet(1, base=size.unet_base, channel_mults=(1, 2), T=size.T)

    return _trained(
        _checkpoint(args, f"digits_T{size.T}_{size.digit_steps}_b{size.unet_base}"),
        build,
        train,
        linear_schedule(size.T),
        config,
        device,
    )


# ---------------------------------------------------------------------------
# Quality measures
# ---------------------------------------------------------------------------
def distance_to_set(points: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each point's distance to its nearest reference point ([N])."""
    return torch.cat([torch.cdist(chunk, reference).min(1).values for chunk in points.split(1024)])


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between equal-size point sets."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=generator)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return (pa - pb).abs().mean().item()


@dataclasses.dataclass
class PointReference:
    curve: torch.Tensor  # the noiseless Swiss roll (the data manifold)
    held_out: torch.Tensor  # fresh data, as many points as samples
    off_threshold: float  # 99th percentile of held-out data's distance to the curve

    @classmethod
    def build(cls, n: int, seed: int) -> PointReference:
        curve = swiss_roll_curve()
        held_out = point_set("swiss_roll", n, seed=seed + 100)
        threshold = torch.quantile(distance_to_set(held_out, curve), 0.99).item()
        return cls(curve, held_out, threshold)

    def quality(self, samples: torch.Tensor) -> dict:
        if not torch.isfinite(samples).all():
            return {
                "manifold_distance": math.inf,
                "off_manifold": 1.0,
                "coverage": math.inf,
                "sliced_wasserstein": math.inf,
            }
        to_curve = distance_to_set(samples, self.curve)
        return {
            "manifold_distance": round(to_curve.mean().item(), 4),
            "off_manifold": round((to_curve > self.off_threshold).float().mean().item(), 4),
            "coverage": round(distance_to_set(self.held_out, samples).mean().item(), 4),
            "sliced_wasserstein": round(sliced_wasserstein(samples, self.held_out), 4),
        }

    def data_row(self, seed: int) -> dict:
        """The same measures for fresh data: what a perfect sampler scores."""
        return self.quality(point_set("swiss_roll", len(self.held_out), seed=seed + 200))


class DigitFeatures(nn.Module):
    """A small CNN classifier of 8x8 digits; its 32-D penultimate layer is the fixed feature map of the FID-like
    distance (trained once, seeded, on the training digits only)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * 4 * 4, 32)
        self.classify = nn.Linear(32, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return F.relu(self.hidden(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def fit_digit_features(images: torch.Tensor, labels: torch.Tensor, seed: int, steps: int = 400) -> DigitFeatures:
    torch.manual_seed(seed)
    net = DigitFeatures()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(images), (128,), generator=generator)
        loss = F.cross_entropy(net(images[batch]), labels[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return net.eval().requires_grad_(False)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2) between Gaussians fitted to feature sets."""
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


@dataclasses.dataclass
class DigitReference:
    train: torch.Tensor
    test: torch.Tensor
    features: DigitFeatures
    train_features: torch.Tensor
    test_accuracy: float

    @classmethod
    def build(cls, train, train_labels, test, test_labels, seed: int) -> DigitReference:
        net = fit_digit_features(train, train_labels, seed)
        with torch.no_grad():
            accuracy = (net(test).argmax(1) == test_labels).float().mean().item()
            return cls(train, test, net, net.features(train), accuracy)

    def quality(self, samples: torch.Tensor) -> dict:
        if not torch.isfinite(samples).all():
            return {"frechet_distance": math.inf, "nearest_train_distance": math.inf}
        with torch.no_grad():
            features = self.features.features(samples.clamp(-1, 1))
        nearest = distance_to_set(samples.flatten(1), self.train.flatten(1)) / math.sqrt(samples[0].numel())
        return {
            "frechet_distance": round(frechet_distance(features, self.train_features), 4),
            "nearest_train_distance": round(nearest.mean().item(), 4),
        }

    def data_row(self, n: int) -> dict:
        return self.quality(self.test[:n])


# ---------------------------------------------------------------------------
# Sampling grids
# ---------------------------------------------------------------------------
@torch.inference_mode()
def ddpm_mean_chain(model, schedule, x_T: torch.Tensor, dt: int) -> torch.Tensor:
    """DDPM steps without their noise (each step is g's mean, Def. 2.1's mean): a deterministic chain that
    shows what removing the noise does on its own, without RK4."""
    x = x_T
    for t in range(schedule.T, 0, -dt):
        x = ddpm_step(x, model(x, t), schedule.abar(t), schedule.abar(t - dt))
    return x


def sample_cell(model, schedule, x_T, method, kwargs, dt, seed, device) -> tuple[torch.Tensor, float, str | None]:
    """(samples, seconds, divergence warning text or None) of one sampler at one dt."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SamplerDivergenceWarning)
        if method == "ddpm_mean":
            x = ddpm_mean_chain(model, schedule, x_T.to(device), dt).cpu()
        else:
            x = sample(
                model,
                schedule,
                tuple(x_T.shape),
                method=method,
                dt=dt,
                generator=generator,
                x_T=x_T,
                device=device,
                **kwargs,
            ).cpu()
    diverged = [str(w.message) for w in caught if issubclass(w.category, SamplerDivergenceWarning)]
    for message in diverged:
        print(f"warning: {message}")
    return x, time.perf_counter() - start, diverged[0] if diverged else None


def sampler_grid(model, schedule, x_T, samplers: dict, dts, quality, seed: int, device, label: str) -> tuple:
    """Every sampler at every dt from the same x_T: (samples, table of quality rows, seconds)."""
    from tqdm.auto import tqdm

    samples, table, seconds = {}, {}, {}
    cells = [(name, dt) for name in samplers for dt in dts if schedule.T % dt == 0]
    for name, dt in tqdm(cells, desc=f"{label} sampler x dt", unit="cell", mininterval=1.0):
        method, kwargs, deterministic = samplers[name][:3]
        x, seconds[f"{name}/dt={dt}"], diverged = sample_cell(
            model, schedule, x_T, method, kwargs, dt, seed + dt, device
        )
        samples.setdefault(name, {})[dt] = x
        row = quality(x)
        if deterministic and 1 in samples[name] and torch.isfinite(x).all():
            row["drift_from_dt1"] = round(
                (x - samples[name][1]).flatten(1).norm(dim=1).mean().item() / math.sqrt(x[0].numel()), 4
            )
        if diverged:
            row["diverged"] = diverged
        table.setdefault(name, {})[dt] = row
    return samples, table, seconds


# ---------------------------------------------------------------------------
# Part 2: Fig. 7
# ---------------------------------------------------------------------------
def fig7_trained(model, schedule, reference: PointReference, n: int, seeds: int, seed: int, device) -> tuple:
    """Fig. 7's samplers with the trained model, repeated over ``seeds`` draws of x_T and noise:
    (samples of the first seed, table of means with each measure's SD over seeds as ``<measure>_sd``, seconds)."""
    samplers = {name: (method, kwargs, False) for name, (method, kwargs) in FIG7_SAMPLERS.items()}
    tables, first, seconds = [], None, {}
    for repeat in range(seeds):
        x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1000 * repeat))
        samples, table, spent = sampler_grid(
            model,
            schedule,
            x_T,
            samplers,
            FIG7_DTS,
            reference.quality,
            seed + 1000 * repeat,
            device,
            f"Fig. 7 trained, seed {repeat + 1}/{seeds}",
        )
        if first is None:
            first = samples
        tables.append(table)
        seconds.update({f"{key}/seed{repeat}": value for key, value in spent.items()})
    return first, mean_over_seeds(tables), seconds


def mean_over_seeds(tables: list[dict]) -> dict:
    """Average every numeric measure over the tables; add its SD over them as ``<measure>_sd``."""
    out = {}
    for name, cells in tables[0].items():
        out[name] = {}
        for dt, row in cells.items():
            merged = {}
            for key, value in row.items():
                if not isinstance(value, float):
                    merged[key] = value
                    continue
                values = torch.tensor([table[name][dt][key] for table in tables], dtype=torch.float64)
                merged[key] = round(values.mean().item(), 4)
                if len(tables) > 1:
                    merged[f"{key}_sd"] = round(values.std().item(), 4)
            out[name][dt] = merged
    return out


def fig7_oracle(schedule, reference: PointReference, n: int, data_points: int, seed: int) -> tuple:
    """Fig. 7's samplers with the exact eps of the empirical Swiss-roll distribution: no network error."""
    oracle = EmpiricalDataEps(schedule, point_set("swiss_roll", data_points, seed=seed))
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1))
    samplers = {name: (method, kwargs, False) for name, (method, kwargs) in FIG7_SAMPLERS.items()}
    return sampler_grid(oracle, schedule, x_T, samplers, FIG7_DTS, reference.quality, seed, "cpu", "Fig. 7 oracle")


def fig7_gaussian(n: int, seed: int) -> dict:
    """Spread of the samples over the data's std, with the exact eps of N(0, s^2 I) data (1 = right; > 1 noisy).

    Two data widths (the Swiss roll's thickness and a wide set) and two T = 100 schedules: ours (linear, scaled)
    and the tutorial's sigmoid schedule, which stops at abar_T = 0.6.
    """
    out = {}
    for schedule in (linear_schedule(100), sigmoid_schedule(100)):
        for data_std in (THIN_GAUSSIAN_STD, 0.5):
            model = GaussianDataEps(schedule, data_std)
            x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
            cells = {}
            for name, (method, kwargs) in FIG7_SAMPLERS.items():
                cells[name] = {}
                for dt in FIG7_DTS:
                    x, _, _ = sample_cell(
                        model, schedule, x_T, method, {**kwargs, "divergence_factor": None}, dt, seed + dt, "cpu"
                    )
                    cells[name][f"dt={dt}"] = round(x.std().item() / data_std, 4)
            out[f"{schedule.name}, data std {data_std}"] = cells
    return out


def fig7_verdict(table: dict) -> dict:
    """Per RK4-DDPM noise placement and dt: is it cleaner than DDPM (closer to the curve) while still covering the
    roll (coverage at most twice DDPM's)? ``paper_pattern`` holds when both hold at dt = 2, 5 and 10 (Fig. 7)."""
    verdict = {}
    for name, cells in table.items():
        if not name.startswith("rk4_ddpm"):
            continue
        per_dt = {}
        for dt in (2, 5, 10, 20):
            ours, ddpm = cells[dt], table["ddpm"][dt]
            per_dt[f"dt={dt}"] = {
                "cleaner_than_ddpm": bool(ours["manifold_distance"] < ddpm["manifold_distance"]),
                "covers_like_ddpm": bool(ours["coverage"] <= 2 * ddpm["coverage"]),
            }
        pattern = all(all(per_dt[f"dt={dt}"].values()) for dt in (2, 5, 10))
        verdict[name] = {"paper_pattern": pattern, **per_dt}
    return verdict


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------
def _points_figure(path: Path, samples: dict, data: torch.Tensor, title: str, T: int):
    plt = pyplot()
    names, dts = list(samples), sorted({dt for cells in samples.values() for dt in cells})
    fig, axes = plt.subplots(len(names), len(dts), figsize=(2.1 * len(dts), 2.1 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for column, dt in enumerate(dts):
            ax = axes[row, column]
            ax.scatter(data[:, 0], data[:, 1], s=0.3, color="0.85", rasterized=True)
            points = samples[name].get(dt)
            if points is not None:
                ax.scatter(points[:, 0], points[:, 1], s=0.6, color="tab:blue", rasterized=True)
            ax.set_xlim(-2.6, 2.6)
            ax.set_ylim(-2.6, 2.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"dt = {dt} ({T // dt} steps)", fontsize=9)
            if column == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _digits_figure(path: Path, samples: dict, T: int, per_cell: int = 16):
    plt = pyplot()
    names, dts = list(samples), sorted({dt for cells in samples.values() for dt in cells})
    side = int(math.sqrt(per_cell))
    fig, axes = plt.subplots(len(names), len(dts), figsize=(1.6 * len(dts), 1.7 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for column, dt in enumerate(dts):
            ax = axes[row, column]
            images = samples[name][dt][: side * side, 0].clamp(-1, 1).nan_to_num(0.0)
            tile = images.view(side, side, 8, 8).permute(0, 2, 1, 3).reshape(side * 8, side * 8)
            ax.imshow(tile.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"dt = {dt} ({T // dt} steps)", fontsize=8)
            if column == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"8x8 digits, T = {T}: the same x_T in every cell")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _quality_figure(path: Path, point_table: dict, digit_table: dict | None, fig7: dict, gaussian: dict, T: int):
    plt = pyplot()
    panels = 5 if digit_table is not None else 4
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.8))
    ax = axes[0]
    for name, rows in point_table.items():
        dts = sorted(rows)
        ax.plot(dts, [rows[dt]["manifold_distance"] for dt in dts], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="dt", ylabel="mean distance to the curve", title=f"Swiss roll, T = {T}")
    ax.legend(fontsize=7)
    if digit_table is not None:
        ax = axes[1]
        for name, rows in digit_table.items():
            dts = sorted(rows)
            ax.plot(dts, [rows[dt]["frechet_distance"] for dt in dts], marker="o", label=name)
        ax.set(
            xscale="log", yscale="log", xlabel="dt", ylabel="Frechet distance (CNN features)", title=f"digits, T = {T}"
        )
        ax.legend(fontsize=7)
    for ax, key, label in (
        (axes[-3], "manifold_distance", "mean distance to the curve (clean)"),
        (axes[-2], "coverage", "data-to-nearest-sample distance (coverage)"),
    ):
        for name, rows in fig7["trained"].items():
            dts = sorted(rows)
            ax.plot(dts, [rows[dt][key] for dt in dts], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="dt", ylabel=label, title="Fig. 7: Swiss roll, T = 100 (trained)")
        ax.legend(fontsize=6)
    ax = axes[-1]
    key = next(k for k in gaussian if str(THIN_GAUSSIAN_STD) in k and "linear" in k)
    for name, cells in gaussian[key].items():
        ax.plot(FIG7_DTS, [cells[f"dt={dt}"] for dt in FIG7_DTS], marker="o", label=name)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="dt",
        ylabel="sample std / data std",
        title=f"Fig. 7: exact eps, N(0, {THIN_GAUSSIAN_STD}^2), T = 100",
    )
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------
# paper_comparison rows
# ---------------------------------------------------------------------------
FIG8_CLAIM = (
    "paper (Fig. 6/8, CelebA, T = 1000): Def. 2.1 large steps keep quality to dt = 10, fair at 100; "
    "RK4 with g = DDIM stays consistent with dt = 1 up to dt = 100 where DDIM does not"
)
FIG7_CLAIM = (
    "paper (Fig. 7, T = 100): RK4 with g = DDPM gives cleaner samples than DDPM at dt = 2, 5, 10 and fails at 20"
)


def comparison_rows(
    point_table: dict, digit_table: dict | None, fig7_table: dict, size_name: str, T: int, n_points: int, n_digits: int
) -> list[dict]:
    quick = "quick run (tiny models); " if size_name == "quick" else ""
    rows = []
    for name, cells in point_table.items():
        if name not in SAMPLERS:
            continue
        for dt, row in cells.items():
            rows.append(
                paper_row(
                    f"000-fig8-{name}-dt{dt}-swiss_roll",
                    f"{name} at dt = {dt}, T = {T}: mean distance of a sample to the Swiss-roll curve ({FIG8_CLAIM})",
                    None,
                    row["manifold_distance"],
                    unit="normalised units",
                    setup=f"{quick}2-D Swiss roll (unit std), MLP eps-model, {n_points} samples, "
                    "same x_T in every cell; the paper shows CelebA images",
                )
            )
    for name, cells in (digit_table or {}).items():
        for dt, row in cells.items():
            setup = (
                f"{quick}8x8 digits in [-1, 1], small U-Net, {n_digits} samples; Frechet distance in the "
                "features of a small CNN trained on the digits (not Inception); the paper shows CelebA images"
            )
            rows.append(
                paper_row(
                    f"000-fig8-{name}-dt{dt}-digits",
                    f"{name} at dt = {dt}, T = {T}: FID-like distance of digit samples "
                    f"to the training digits ({FIG8_CLAIM})",
                    None,
                    row["frechet_distance"],
                    unit="squared feature units",
                    setup=setup,
                )
            )
            if "drift_from_dt1" in row:
                rows.append(
                    paper_row(
                        f"000-fig8-{name}-dt{dt}-digits-drift",
                        f"{name} at dt = {dt}, T = {T}: RMS pixel distance to the "
                        "sample at dt = 1 from the same x_T (Fig. 8's consistency)",
                        None,
                        row["drift_from_dt1"],
                        unit="pixel RMS, [-1, 1] scale",
                        setup=setup,
                    )
                )
    setup = (
        f"{quick}2-D Swiss roll (unit std), MLP eps-model, linear schedule scaled to T = 100; the paper's "
        "schedule and noise placement are not stated; the paper shows points and CelebA"
    )
    for name in FIG7_SAMPLERS:
        for dt in (2, 5, 10, 20):
            row = fig7_table[name][dt]
            rows.append(
                paper_row(
                    f"000-fig7-{name}-dt{dt}",
                    f"{name} at dt = {dt}, T = 100: mean distance of a sample to the "
                    f"Swiss-roll curve, lower is cleaner ({FIG7_CLAIM}); spread: SD over seeds",
                    None,
                    row["manifold_distance"],
                    spread=row.get("manifold_distance_sd"),
                    unit="normalised units",
                    setup=setup,
                )
            )
            rows.append(
                paper_row(
                    f"000-fig7-{name}-dt{dt}-coverage",
                    f"{name} at dt = {dt}, T = 100: mean distance of a held-out data "
                    "point to its nearest sample, lower covers the roll better (a collapsed sampler is 'clean' but "
                    "covers little); spread: SD over seeds",
                    None,
                    row["coverage"],
                    spread=row.get("coverage_sd"),
                    unit="normalised units",
                    setup=setup,
                )
            )
    return rows


# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------
def _json_table(table: dict) -> dict:
    return {name: {f"dt={dt}": row for dt, row in cells.items()} for name, cells in table.items()}


def run(args: argparse.Namespace) -> dict:
    started, cpu_started = time.time(), time.process_time()
    seed_everything(args.seed)
    device = torch.device(args.device)
    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    n_points = args.samples or size.point_samples
    n_digits = args.digit_samples or size.digit_samples
    args.out.mkdir(parents=True, exist_ok=True)
    train_seconds = {}

    # Part 1a: Swiss roll at T.
    model, schedule, train_seconds["swiss_roll"] = swiss_roll_model(
        args, size.T, size.point_steps, size.point_hidden, device
    )
    points = PointReference.build(n_points, args.seed)
    x_T = torch.randn(n_points, 2, generator=torch.Generator().manual_seed(args.seed))
    point_samples, point_table, point_seconds = sampler_grid(
        model, schedule, x_T, {**SAMPLERS, **POINT_EXTRA}, DTS, points.quality, args.seed, device, "Swiss roll"
    )
    _points_figure(
        args.out / "swiss_roll_grid.png",
        point_samples,
        points.held_out,
        f"Swiss roll, T = {schedule.T}: the same x_T in every cell (grey: data)",
        schedule.T,
    )

    # Part 1b: digits at T.
    train, train_labels, test, test_labels = digit_sets(args.seed)
    digits = DigitReference.build(train, train_labels, test, test_labels, args.seed)
    unet, digit_schedule, train_seconds["digits"] = digit_model(args, size, train, device)
    x_T_digits = torch.randn(n_digits, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))
    digit_samples, digit_table, digit_seconds = sampler_grid(
        unet, digit_schedule, x_T_digits, SAMPLERS, DTS, digits.quality, args.seed, device, "digits"
    )
    _digits_figure(args.out / "digits_grid.png", digit_samples, digit_schedule.T)

    # Part 2: Fig. 7 at T = 100.
    if schedule.T == 100 and size.fig7_steps == size.point_steps:
        fig7_model, fig7_schedule = model, schedule
    else:
        fig7_model, fig7_schedule, train_seconds["swiss_roll_T100"] = swiss_roll_model(
            args, 100, size.fig7_steps, size.point_hidden, device
        )
    fig7_points = PointReference.build(size.fig7_samples, args.seed + 7)
    fig7_samples, fig7_table, fig7_seconds = fig7_trained(
        fig7_model, fig7_schedule, fig7_points, size.fig7_samples, size.fig7_seeds, args.seed, device
    )
    oracle_points = PointReference.build(size.oracle_samples, args.seed + 8)
    oracle_samples, oracle_table, _ = fig7_oracle(
        fig7_schedule, oracle_points, size.oracle_samples, size.oracle_points, args.seed
    )
    gaussian = fig7_gaussian(size.gaussian_samples, args.seed)
    _points_figure(
        args.out / "fig7_trained.png",
        fig7_samples,
        fig7_points.held_out,
        "Fig. 7: T = 100 Swiss-roll model, RK4 with g = DDPM under each noise placement",
        100,
    )
    _points_figure(
        args.out / "fig7_oracle.png",
        oracle_samples,
        oracle_points.held_out,
        "Fig. 7 with the exact eps of the empirical Swiss roll (no network error), T = 100",
        100,
    )
    _quality_figure(args.out / "quality.png", point_table, digit_table, {"trained": fig7_table}, gaussian, schedule.T)

    summary = {
        "demo": NAME,
        "size": size_name,
        "device": str(device),
        "part1": {
            "T": schedule.T,
            "schedule": schedule.name,
            "dts": list(DTS),
            "swiss_roll": {
                "samples": n_points,
                "quality": _json_table(point_table),
                "data_reference": points.data_row(args.seed),
                "off_manifold_threshold": round(points.off_threshold, 4),
            },
            "digits": {
                "samples": n_digits,
                "train_images": len(train),
                "test_images": len(test),
                "feature_classifier_test_accuracy": round(digits.test_accuracy, 4),
                "quality": _json_table(digit_table),
                "data_reference": digits.data_row(n_digits),
            },
        },
        "fig7": {
            "T": fig7_schedule.T,
            "schedule": fig7_schedule.name,
            "samples": size.fig7_samples,
            "seeds": size.fig7_seeds,
            "trained_model": _json_table(fig7_table),
            "trained_model_verdict": fig7_verdict(fig7_table),
            "oracle_eps": {
                "samples": size.oracle_samples,
                "data_points": size.oracle_points,
                "quality": _json_table(oracle_table),
                "verdict": fig7_verdict(oracle_table),
                "data_reference": oracle_points.data_row(args.seed + 8),
            },
            "gaussian_exact_eps_std_ratio": gaussian,
            "data_reference": fig7_points.data_row(args.seed + 7),
        },
        "train_seconds": {k: round(v, 1) for k, v in train_seconds.items()},
        "sampling_seconds": {
            "swiss_roll": round(sum(point_seconds.values()), 1),
            "digits": round(sum(digit_seconds.values()), 1),
            "fig7_trained": round(sum(fig7_seconds.values()), 1),
        },
        "figures": sorted(str(p) for p in args.out.glob("*.png")),
        "paper_comparison": comparison_rows(
            point_table, digit_table, fig7_table, size_name, schedule.T, n_points, n_digits
        ),
    }
    summary["run"] = run_record(started)
    # CPU time of this process: the wall time on an idle machine at one thread, whatever the load was
    summary["run"]["process_cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    write_json(args.out / "summary.json", summary)
    print(format_table(point_table, f"Swiss roll, T = {schedule.T}: mean distance to the curve", "manifold_distance"))
    print(format_table(digit_table, f"digits, T = {schedule.T}: Frechet distance", "frechet_distance"))
    print(format_table(fig7_table, "Fig. 7, T = 100 trained: mean distance to the curve", "manifold_distance"))
    return summary


def format_table(table: dict, title: str, key: str) -> str:
    dts = sorted({dt for cells in table.values() for dt in cells})
    lines = [title, f"{'sampler':<18}" + "".join(f"{'dt=' + str(dt):>10}" for dt in dts)]
    for name, cells in table.items():
        lines.append(f"{name:<18}" + "".join(f"{cells[dt][key]:>10.4g}" if dt in cells else f"{'-':>10}" for dt in dts))
    return "\n".join(lines)
