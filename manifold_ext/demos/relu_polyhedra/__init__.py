"""ReLU polyhedra demo: paper 001 (Liu et al., "Integrating geometries of ReLU feedforward neural networks").

1. Fig. 1 / Section 4.1.1: the 2 x 10 network on f(x) = x1^2 + x2^2 - 0.4 over [-1, 1]^2, trained from
   several seeds: regions in the box and in R^2 (bounded / unbounded) by traversal and pruning
   (Algorithm 1), checked against dense sampling, drawn coloured by their affine map; and the Fig. 1
   observation (Hamming distance between points at a fixed Euclidean distance, inside vs far outside
   the training area) with Algorithm 2 along the same segments.
2. Table 1: ten architectures (2..10 x 5, 3 x 5..25) over ``--seeds`` seeds (50 with ``--full``, as
   the paper): validation MSE, units that never switch in the box, regions in the box and in R^2,
   active bits per region.
3. Section 4.1.3: the 3 x 10 network on x1^2 + x2^2 + x3^2 - 3, regions in [-1, 1]^3.
4. Section 4.2 on scikit-learn's 8x8 digits (MNIST in the paper): Tables 3, 4, 5, 6 and Fig. 4
   (see :mod:`manifold_ext.demos.relu_polyhedra.digits`).

``summary.json`` holds every number and the ``paper_comparison`` rows; ``--scheduler ADDRESS``
enumerates on an existing Dask cluster (see :mod:`manifold_ext.demos.relu_polyhedra.counting`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import as_completed

import numpy as np
from tqdm.auto import tqdm

from manifold_ext.demos.common import (
    add_common_arguments,
    run_record,
    seed_everything,
    validate_paper_comparison,
    write_json,
)
from manifold_ext.demos.relu_polyhedra import comparison, figures
from manifold_ext.demos.relu_polyhedra.counting import BOX, RegionCounter, count_summary
from manifold_ext.demos.relu_polyhedra.digits import Sizes, run_digits
from manifold_ext.demos.relu_polyhedra.paper import TABLE1
from manifold_ext.demos.relu_polyhedra.toy import fig1_observation, random_segment_bisection, sampling_check
from manifold_ext.demos.relu_polyhedra.training import Recipe, train_networks

NAME = "polyhedra"
DESCRIPTION = (
    "ReLU polyhedra (paper 001): Fig. 1 2x10 net, all of Table 1 over seeds in [-1,1]^2 and R^2, "
    "the 3-D 3x10 net, Hamming/bisection/Chebyshev experiments on 8x8 digits"
)

TABLE1_ARCHITECTURES = list(TABLE1)  # (layers, nodes), the paper's order
QUICK_ARCHITECTURES = [(2, 5), (3, 5)]
FIG1_ARCHITECTURE = (2, 10)
ARCHITECTURE_3D = (3, 10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    parser.add_argument(
        "--full",
        action="store_true",
        help="the paper's 50 seeds per Table 1 network and larger digits experiments (long)",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per Table 1 / Fig. 1 network (default 10; --full 50; --quick 2)"
    )
    parser.add_argument(
        "--seeds-3d", type=int, default=None, help="seeds of the 3-D 3x10 network (default 5; --full 10; --quick 0)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"training steps per network (default {Recipe.steps}; --quick 800)"
    )
    parser.add_argument(
        "--init",
        choices=("median", "pytorch"),
        default="median",
        help="hidden-layer initialisation: 'median' (default: He weights, bias = -median "
        "pre-activation, no unit starts dead) or 'pytorch' (nn.Linear's default; an ablation)",
    )
    parser.add_argument(
        "--grid",
        type=int,
        default=None,
        help="points per axis of the sampling check's grid (default 1000; --quick 200)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local processes enumerating networks side by side (default: one per core)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="enumerate on an existing Dask scheduler (e.g. tcp://127.0.0.1:8786): each traversal's "
        "batches of regions go to its workers; needs manifold_ext[distributed]",
    )


@dataclasses.dataclass
class Settings:
    seeds: int
    seeds_3d: int
    recipe: Recipe
    grid: int
    architectures: list[tuple[int, int]]
    digits: Sizes

    def as_dict(self) -> dict:
        return {
            "seeds": self.seeds,
            "seeds_3d": self.seeds_3d,
            "sampling_grid_per_axis": self.grid,
            "architectures": [f"{a}x{b}" for a, b in self.architectures],
            "digits": dataclasses.asdict(self.digits),
        }


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick and args.full:
        raise ValueError("demo polyhedra: --quick and --full exclude each other")
    for name in ("seeds", "steps", "grid", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"demo polyhedra: --{name} must be >= 1, got {value}")
    if args.seeds_3d is not None and args.seeds_3d < 0:
        raise ValueError(f"demo polyhedra: --seeds-3d must be >= 0, got {args.seeds_3d}")
    if args.quick:
        seeds, seeds_3d, steps, grid = 2, 0, 800, 200
        digits = Sizes(
            structures=(1,),
            depth_widths=(1, 2),
            radii_points=8,
            bisection_pairs=4,
            table5_pairs=2,
            epochs=10,
            table6_structure=1,
        )
        architectures = QUICK_ARCHITECTURES
    elif args.full:
        seeds, seeds_3d, steps, grid = 50, 10, Recipe.steps, 1000
        digits = Sizes(radii_points=300, bisection_pairs=200, table5_pairs=6, active_bit_images=5)
        architectures = TABLE1_ARCHITECTURES
    else:
        seeds, seeds_3d, steps, grid = 10, 5, Recipe.steps, 1000
        digits = Sizes()
        architectures = TABLE1_ARCHITECTURES
    recipe = Recipe(steps=args.steps or steps, init=getattr(args, "init", "median"))
    return Settings(
        args.seeds or seeds,
        seeds_3d if args.seeds_3d is None else args.seeds_3d,
        recipe,
        args.grid or grid,
        architectures,
        digits,
    )


def _cluster(scheduler: str | None):
    if scheduler is None:
        return None, None
    from manifold_ext._distributed import dask_executor

    return dask_executor(scheduler)


def _training_order(settings: Settings) -> list[tuple[str, tuple[int, int], int]]:
    """(role, (layers, nodes), input dim), the costliest enumerations first so the workers stay busy."""
    jobs = [("3d", ARCHITECTURE_3D, 3)] if settings.seeds_3d else []
    table = sorted(settings.architectures, key=lambda a: -TABLE1[a]["mean"])
    jobs += [("table1", a, 2) for a in table]
    jobs.insert(min(len(jobs), 1 + len(jobs) // 2), ("fig1", FIG1_ARCHITECTURE, 2))
    return jobs


def _per_net_rows(trained, results) -> list[dict]:
    return [
        {"seed": seed, "validation_mse": float(mse), **res.stats}
        for seed, mse, res in zip(trained.seeds, trained.validation_mse, results)
    ]


def _aggregate(rows: list[dict], everywhere: bool = True) -> dict:
    out = {
        "seeds": len(rows),
        "box": count_summary([r["regions_box"] for r in rows]),
        "mse": {
            "mean": float(np.mean([r["validation_mse"] for r in rows])),
            "sd": float(np.std([r["validation_mse"] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
        },
        "never_switching_units_in_box": count_summary([r["never_switching_units_in_box"] for r in rows]),
        "failed_lps": int(sum(r["failed_lps"] for r in rows)),
    }
    if everywhere:
        out.update(
            {
                "R2": count_summary([r["regions_everywhere"] for r in rows]),
                "bounded": count_summary([r["bounded"] for r in rows]),
                "unbounded": count_summary([r["unbounded"] for r in rows]),
                "active_bits_per_region_mean": count_summary([r["active_bits"]["mean"] for r in rows]),
                "active_bits_per_region_max": count_summary([r["active_bits"]["max"] for r in rows]),
            }
        )
    return out


@dataclasses.dataclass
class Clock:
    """Wall and CPU seconds per phase (CPU = process_time: what a loaded machine does not inflate)."""

    wall: dict = dataclasses.field(default_factory=dict)
    cpu: dict = dataclasses.field(default_factory=dict)

    def add(self, phase: str, wall: float, cpu: float | None = None) -> None:
        self.wall[phase] = self.wall.get(phase, 0.0) + wall
        if cpu is not None:
            self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu


def _train_and_submit(args, settings: Settings, counter: RegionCounter, clock: Clock):
    """Train every architecture (all seeds at once) and hand each network to the counter as soon as it exists,
    so enumeration runs while the next architecture trains."""
    trained_by_role, futures = {}, {}
    for role, (layers, nodes), d in tqdm(
        _training_order(settings), desc="training (all seeds at once)", unit="architecture"
    ):
        n_seeds = settings.seeds_3d if role == "3d" else settings.seeds
        seeds = [args.seed + 1000 * (role == "3d") + s for s in range(n_seeds)]
        trained = train_networks([nodes] * layers, d, seeds, settings.recipe)
        clock.add("training", trained.seconds, trained.cpu_seconds)
        trained_by_role[(role, (layers, nodes))] = trained
        for s, network in enumerate(trained.networks):
            futures[counter.submit(network, BOX, everywhere=(d == 2))] = (role, (layers, nodes), s)
    return trained_by_role, futures


def _collect(futures) -> dict:
    """``{(role, architecture): [NetRegions per seed]}`` once every enumeration has finished."""
    results: dict = {}
    for future in tqdm(as_completed(futures), total=len(futures), desc="enumerating networks", unit="net"):
        role, arch, s = futures[future]
        results.setdefault((role, arch), {})[s] = future.result()
    return {key: [found[s] for s in range(len(found))] for key, found in results.items()}


def _write_figures(out, fig1_net, fig1_result, table1, observation, digits, net_3d, result_3d) -> dict:
    paths = {"fig1": out / "relu_polyhedra.png", "table1": out / "table1_counts.png", "geometry": out / "geometry.png"}
    figures.fig1(
        paths["fig1"], fig1_net, fig1_result.patterns_box, fig1_result.patterns_everywhere, fig1_result.bounded
    )
    figures.table1(paths["table1"], table1)
    figures.geometry(paths["geometry"], observation, digits)
    if net_3d is not None:
        paths["slices_3d"] = out / "decomposition_3d.png"
        figures.slices_3d(paths["slices_3d"], net_3d, result_3d.patterns_box)
    return {k: str(v) for k, v in paths.items()}


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    seed_everything(args.seed)
    settings = settings_from(args)
    executor, client = _cluster(args.scheduler)
    clock = Clock()
    try:
        with RegionCounter(args.workers, executor) as counter:
            wall = time.perf_counter()
            trained_by_role, futures = _train_and_submit(args, settings, counter, clock)
            # While the workers enumerate: the experiments that need no enumeration.
            t0, c0 = time.perf_counter(), time.process_time()
            fig1_nets = trained_by_role[("fig1", FIG1_ARCHITECTURE)].networks
            observation = fig1_observation(fig1_nets)
            segments = random_segment_bisection(fig1_nets, pairs=5 if args.quick else 20, seed=args.seed)
            clock.add("fig1_observation_and_bisection", time.perf_counter() - t0, time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            digits = run_digits(args.seed, settings.digits)
            clock.add("digits", time.perf_counter() - t0, time.process_time() - c0)
            t0 = time.perf_counter()
            by_role = _collect(futures)
            clock.add("waiting_for_enumeration_after_other_work", time.perf_counter() - t0)
            clock.add("wall_from_first_training_to_last_region", time.perf_counter() - wall)
    finally:
        if client is not None:
            client.close()
    per_net = {key: _per_net_rows(trained_by_role[key], by_role[key]) for key in by_role}
    all_nets = [r for rows in per_net.values() for r in rows]
    clock.add(
        "enumeration_summed_over_networks",
        sum(r.get("seconds_box", 0) + r.get("seconds_everywhere", 0) for r in all_nets),
        sum(r["cpu_seconds"] for r in all_nets),
    )

    t0, c0 = time.perf_counter(), time.process_time()
    table1 = [{"layers": a[0], "nodes": a[1], **_aggregate(per_net[("table1", a)])} for a in settings.architectures]
    fig1_key = ("fig1", FIG1_ARCHITECTURE)
    fig1_net, fig1_result = trained_by_role[fig1_key].networks[0], by_role[fig1_key][0]
    fig1 = {
        **_aggregate(per_net[fig1_key]),
        "observation": observation,
        "random_segments_bisection": segments,
        "sampling_check_seed0": sampling_check(fig1_net, fig1_result.patterns_box, settings.grid**2, args.seed),
    }
    section_3d, net_3d, result_3d = None, None, None
    if settings.seeds_3d:
        key_3d = ("3d", ARCHITECTURE_3D)
        net_3d, result_3d = trained_by_role[key_3d].networks[0], by_role[key_3d][0]
        section_3d = {
            **_aggregate(per_net[key_3d], everywhere=False),
            "sampling_check_seed0": sampling_check(
                net_3d, result_3d.patterns_box, round(settings.grid**2 / 2), args.seed
            ),
        }
    clock.add("sampling_checks", time.perf_counter() - t0, time.process_time() - c0)

    args.out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    paths = _write_figures(args.out, fig1_net, fig1_result, table1, observation, digits, net_3d, result_3d)
    clock.add("figures", time.perf_counter() - t0, time.process_time() - c0)

    rows = comparison.fig1_rows(fig1) + comparison.table1_rows(table1)
    if section_3d is not None:
        rows += comparison.regions_3d_rows(section_3d)
    rows += comparison.digits_rows(digits)
    validate_paper_comparison(rows)
    summary = {
        "demo": NAME,
        "settings": settings.as_dict(),
        "training_recipe": {
            **settings.recipe.as_dict(),
            "data_points": {"2-D": 10_000, "3-D": 125_000},
            "validation_split": "last 20% of each seed's points",
        },
        "enumeration_route": counter.route,
        "fig1_2x10": fig1,
        "table1": table1,
        "regions_3d_3x10": section_3d,
        "digits": digits,
        "networks": {f"{role}-{a[0]}x{a[1]}": rows_ for (role, a), rows_ in per_net.items()},
        "timing_seconds": {k: round(v, 1) for k, v in clock.wall.items()},
        "cpu_seconds": {
            **{k: round(v, 1) for k, v in clock.cpu.items()},
            "this_process_total": round(time.process_time(), 1),
            "note": "enumeration CPU is measured in the local worker processes (with --scheduler it is "
            "the driver thread's process time, not the cluster's)",
        },
        "figures": paths,
        "paper_comparison": rows,
        "run": run_record(started),
    }
    write_json(args.out / "summary.json", summary)
    return summary
