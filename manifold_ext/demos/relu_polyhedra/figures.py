"""Figures of the polyhedra demo: Fig. 1 (regions coloured by their affine map), Table 1 counts next to the
paper's, slices of the 3-D decomposition (Fig. 2) and the geometry experiments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from manifold_ext.demos.common import pyplot
from manifold_ext.demos.relu_polyhedra.counting import BOX
from manifold_ext.demos.relu_polyhedra.paper import TABLE1
from manifold_ext.relu_geometry import ReLUNetwork
from manifold_ext.relu_geometry.plot import plot_regions, region_polygon

DPI = 110


def _plane_window(regions, bounded) -> float:
    """Half-width of a square window holding every bounded region (and the box), with a margin."""
    extent = 1.0
    for region, is_bounded in zip(regions, bounded):
        if is_bounded:
            polygon = region_polygon(region, (-1e6, 1e6))
            if len(polygon):
                extent = max(extent, float(np.abs(polygon).max()))
    return 1.25 * extent


def fig1(
    path: Path,
    network: ReLUNetwork,
    box_patterns: np.ndarray,
    plane_patterns: np.ndarray,
    bounded: np.ndarray,
    near: float = 8.0,
) -> None:
    """Fig. 1: the 2x10 network's regions in [-1, 1]^2, in [-8, 8]^2 with the segments of the paper's
    observation (x = 0 and x = 6, dotted) and in a window holding every bounded region; colour = affine map."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.8))
    plot_regions(
        axes[0],
        network.regions(torch.from_numpy(box_patterns)),
        BOX,
        title=f"{len(box_patterns)} regions in [-1, 1]^2 (2x10 net, seed 0)",
    )
    plane = network.regions(torch.from_numpy(plane_patterns))
    plot_regions(axes[1], plane, (-near, near), title="R^2 near the box: segments (0, ±1) and (6, ±1)")
    for x in (0.0, 6.0):
        axes[1].plot([x, x], [-1, 1], ls=":", lw=2.0, color="w")
    wide = _plane_window(plane, bounded)
    plot_regions(
        axes[2],
        plane,
        (-wide, wide),
        title=f"R^2: {len(plane)} regions ({int(bounded.sum())} bounded, {int((~bounded).sum())} unbounded)",
    )
    for ax in axes[1:]:
        ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, ls="--", lw=1.0, color="w"))
    fig.suptitle("Fig. 1 (paper: 218 in the box, 237 in R^2 = 211 bounded + 26 unbounded); colour = affine map")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def table1(path: Path, rows: list[dict]) -> None:
    """Table 1: mean region count with min-max bars, paper vs ours in the box and in R^2."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    groups = (
        ("layers", "hidden layers (5 nodes each)", lambda r: r["nodes"] == 5 and r["layers"] != 3),
        ("nodes", "nodes per layer (3 hidden layers)", lambda r: r["layers"] == 3),
    )
    for ax, (key, label, keep) in zip(axes, groups):
        chosen = sorted((r for r in rows if keep(r)), key=lambda r: r[key])
        x = np.array([r[key] for r in chosen], dtype=float)
        step = 0.12 * (x[1] - x[0]) if len(x) > 1 else 0.1
        series = [
            ("paper (50 seeds)", [TABLE1[(r["layers"], r["nodes"])] for r in chosen], -step, "k"),
            ("ours in R^2", [r["R2"] for r in chosen], 0.0, "tab:blue"),
            ("ours in [-1,1]^2", [r["box"] for r in chosen], step, "tab:orange"),
        ]
        for name, stats, shift, colour in series:
            mean = np.array([s["mean"] for s in stats])
            low = mean - np.array([s["min"] for s in stats])
            high = np.array([s["max"] for s in stats]) - mean
            ax.errorbar(x + shift, mean, yerr=[low, high], marker="o", capsize=3, color=colour, label=name, lw=1.2)
        ax.set_xlabel(label)
        ax.set_ylabel("regions (mean, bars = min..max over seeds)")
        ax.set_xticks(x)
        ax.set_title(f"Table 1: regions vs {key}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def slices_3d(
    path: Path, network: ReLUNetwork, box_patterns: np.ndarray, levels=(-0.8, -0.4, 0.0, 0.4, 0.8), per_axis: int = 300
) -> None:
    """Slices x3 = const of the 3-D decomposition (Fig. 2): each enumerated region in its own colour
    (a random colour per region, the same in every slice), its boundaries where the colour changes."""
    plt = pyplot()
    lookup = {p.tobytes(): i for i, p in enumerate(box_patterns)}
    palette = np.random.default_rng(0).uniform(0.15, 0.95, size=(len(box_patterns) + 1, 3))
    palette[-1] = 0.0  # black: a pattern the enumeration did not list (there should be none)
    axis = np.linspace(BOX[0], BOX[1], per_axis)
    xx, yy = np.meshgrid(axis, axis, indexing="xy")
    fig, axes = plt.subplots(1, len(levels), figsize=(3.6 * len(levels), 4))
    for ax, level in zip(np.atleast_1d(axes), levels):
        points = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, level)], 1)
        patterns = network.patterns(points).numpy()
        index = np.array([lookup.get(p.tobytes(), -1) for p in patterns]).reshape(xx.shape)
        ax.imshow(palette[index], origin="lower", extent=(*BOX, *BOX), interpolation="nearest")
        ax.set_title(f"x3 = {level:+.1f}: {len(np.unique(index))} regions")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"3x10 net on x1^2+x2^2+x3^2-3 (seed 0): {len(box_patterns)} regions in [-1,1]^3 "
        "(paper: 2,212); slices x3 = const, one colour per region"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def geometry(path: Path, observation: dict, digits: dict | None) -> None:
    """Fig. 1 observation (Hamming distance at a fixed Euclidean distance vs offset from the training area),
    Table 6 radii and Fig. 4 (regions along nearest-neighbour segments vs depth)."""
    plt = pyplot()
    panels = 1 + (digits is not None) * 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.3))
    axes = np.atleast_1d(axes)
    rows = observation["by_offset"]
    x = [r["x"] for r in rows]
    axes[0].errorbar(
        x,
        [r["hamming_mean"] for r in rows],
        yerr=[r["hamming_sd"] for r in rows],
        marker="o",
        capsize=3,
        label="Hamming distance of the ends",
    )
    axes[0].plot(x, [r["regions_on_segment_mean"] for r in rows], "s--", label="regions on the segment (Alg. 2)")
    axes[0].axvspan(-0.05, 1.0, color="0.9", zorder=0, label="training area |x1| <= 1")
    axes[0].set_xlabel("x: segment from (x, -1) to (x, 1)")
    axes[0].set_ylabel(f"mean over {observation['networks']} 2x10 nets")
    axes[0].set_title("Fig. 1 observation: same Euclidean distance")
    axes[0].legend(fontsize=8)
    if digits is not None:
        radii = next((s["chebyshev_radius"] for s in digits["structures"].values() if "chebyshev_radius" in s), None)
        if radii:
            names = list(radii)
            axes[1].bar(
                names,
                [radii[n]["mean"] for n in names],
                yerr=[radii[n]["sd"] for n in names],
                capsize=4,
                color=["tab:blue", "tab:green", "tab:red"][: len(names)],
            )
            axes[1].set_ylabel("Chebyshev radius in [0,1]^64 (mean ± SD)")
            axes[1].set_title("Table 6 on 8x8 digits")
        depth = digits["fig4_bisection_vs_depth"]
        layers = sorted(int(k) for k in depth)
        axes[2].plot(layers, [depth[str(k)]["regions"]["mean"] for k in layers], "o-", label="mean")
        axes[2].plot(layers, [depth[str(k)]["regions"]["max"] for k in layers], "s--", label="max")
        axes[2].plot([1, 5], [21, 49], "ko:", label="paper mean (MNIST)")
        axes[2].plot([1, 5], [41, 303], "k^:", label="paper max (MNIST)")
        axes[2].set_xlabel("hidden layers of 200 nodes")
        axes[2].set_ylabel("regions on the segment")
        axes[2].set_title("Fig. 4: nearest-neighbour segments (Alg. 2)")
        axes[2].set_yscale("log")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
