"""Large-step sampling (paper 000 Fig. 6-8) on a 2-D Swiss roll.

The Swiss-roll eps-model of the ``likelihood`` demo (T = 100) samples with
DDPM, DDIM (eta = 0), the large-step process of Def. 2.1, the paper's RK4
(appendix Eq. 38-43, with g = DDIM and g = DDPM) and the probability-flow ODE
solved by classical RK4, at dt in {1, 2, 5, 10, 20, 100}, all from the same x_T.
Sample quality is measured against the data:

* ``manifold_distance``: mean Euclidean distance from a sample to the
  noiseless Swiss-roll curve (the data manifold), in normalised units;
* ``sliced_wasserstein``: sliced 1-Wasserstein distance to held-out data;
* ``drift_from_dt1`` (deterministic samplers): mean distance between the
  sample at dt and the sample at dt = 1 from the same x_T (Fig. 8's
  "consistency").

Reference values for held-out *data* are reported beside them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from manifold_ext.demos.common import add_common_arguments, pyplot, seed_everything, write_json
from manifold_ext.demos.diffusion_likelihood import add_model_arguments, swiss_roll_model
from manifold_ext.diffusion import sample
from manifold_ext.diffusion.toy_data import point_set, swiss_roll_curve

NAME = "sampling"
DESCRIPTION = "Fig. 6-8: DDPM / DDIM / large-step / RK4 / PF-ODE samples at dt in {1, ..., 100}, quality vs data"

# name -> (method, keyword arguments, deterministic)
SAMPLERS = {
    "ddpm": ("ddpm", {}, False),
    "ddim": ("ddim", {"eta": 0.0}, True),
    "large_step": ("large_step", {}, False),
    "rk4_ddim": ("rk4", {"rk4_step": "ddim"}, True),
    "rk4_ddpm": ("rk4", {"rk4_step": "ddpm"}, False),
    "pf_ode_rk4": ("pf_ode", {}, True),
}
DTS = (1, 2, 5, 10, 20, 100)  # the paper's Fig. 6/8 use 1, 2, 10, 100; Fig. 7 adds 5 and 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=None, help="samples per sampler and dt (default 2000, quick 400)")


def manifold_distance(samples: torch.Tensor, curve: torch.Tensor) -> float:
    """Mean distance from each sample to its nearest point of the (densely sampled) curve."""
    nearest = torch.cat([torch.cdist(chunk, curve).min(1).values for chunk in samples.split(1024)])
    return nearest.mean().item()


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between equal-size point sets."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=generator)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return (pa - pb).abs().mean().item()


def _figure(path: Path, samples: dict, data: torch.Tensor):
    plt = pyplot()
    names = list(samples)
    fig, axes = plt.subplots(len(names), len(DTS), figsize=(3.2 * len(DTS), 3.2 * len(names)))
    for row, name in enumerate(names):
        for column, dt in enumerate(DTS):
            ax = axes[row, column]
            ax.scatter(data[:, 0], data[:, 1], s=0.5, color="0.85")
            points = samples[name][dt].numpy()
            ax.scatter(points[:, 0], points[:, 1], s=1, color="tab:blue")
            ax.set_xlim(-2.6, 2.6)
            ax.set_ylim(-2.6, 2.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"dt = {dt} ({100 // dt} steps)")
            if column == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    device = torch.device(args.device)
    n = args.samples or (400 if args.quick else 2000)
    model, schedule, train_seconds, _ = swiss_roll_model(args, device)
    curve = swiss_roll_curve()
    held_out = point_set("swiss_roll", n, seed=args.seed + 100)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(args.seed))
    samples, seconds, table = {}, {}, {}
    for name, (method, kwargs, deterministic) in SAMPLERS.items():
        samples[name], table[name] = {}, {}
        for dt in DTS:
            if dt > schedule.T or schedule.T % dt:
                continue
            generator = torch.Generator().manual_seed(args.seed + dt)
            start = time.perf_counter()
            x = sample(model, schedule, (n, 2), method=method, dt=dt, generator=generator, x_T=x_T,
                       device=device, **kwargs).cpu()
            seconds[f"{name}/dt={dt}"] = time.perf_counter() - start
            samples[name][dt] = x
            row = {"manifold_distance": round(manifold_distance(x, curve), 4),
                   "sliced_wasserstein": round(sliced_wasserstein(x, held_out), 4)}
            if deterministic:
                row["drift_from_dt1"] = round((x - samples[name][1]).norm(dim=1).mean().item(), 4)
            table[name][dt] = row
    reference = {
        "held_out_data_manifold_distance": round(manifold_distance(held_out, curve), 4),
        "held_out_vs_held_out_sliced_wasserstein": round(
            sliced_wasserstein(point_set("swiss_roll", n, seed=args.seed + 200), held_out), 4),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "sampling.png"
    _figure(figure, samples, held_out)
    summary = {
        "demo": NAME,
        "device": str(device),
        "T": schedule.T,
        "samples": n,
        "train_seconds": round(train_seconds, 2),
        "quality": {name: {f"dt={dt}": row for dt, row in rows.items()} for name, rows in table.items()},
        "data_reference": reference,
        "sampling_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "figure": str(figure),
    }
    write_json(args.out / "summary.json", summary)
    print(format_table(table, reference))
    return summary


def format_table(table: dict, reference: dict) -> str:
    lines = ["manifold distance (mean to the Swiss-roll curve) / sliced W1 to held-out data:",
             f"{'sampler':<12}" + "".join(f"{'dt=' + str(dt):>20}" for dt in DTS)]
    for name, rows in table.items():
        cells = [f"{rows[dt]['manifold_distance']:.3g} / {rows[dt]['sliced_wasserstein']:.3g}" if dt in rows else "-"
                 for dt in DTS]
        lines.append(f"{name:<12}" + "".join(f"{c:>20}" for c in cells))
    lines.append(f"held-out data: {reference['held_out_data_manifold_distance']:.3f} / "
                 f"{reference['held_out_vs_held_out_sliced_wasserstein']:.3f}")
    return "\n".join(lines)
