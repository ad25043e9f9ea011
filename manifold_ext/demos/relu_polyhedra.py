"""ReLU polyhedra demo (paper 001, Liu et al., Section 4.1 and Tables 1 and 3).

1. The paper's toy network, 2 hidden layers x 10 units, trained on
   f(x) = x1^2 + x2^2 - 0.4 over [-1, 1]^2: all its regions in the box and in
   R^2 (bounded / unbounded) by traversal and pruning (Algorithm 1), checked
   against dense sampling (every sampled pattern must be enumerated; regions
   found only by enumeration are listed with their inscribed radius) and drawn
   coloured by their affine map (Fig. 1).
2. Table 1: region counts in the box for small networks of growing depth and
   width (mean over seeds) with their validation MSE; and (full mode) the 3 x 10
   network of Section 4.1.3 in [-1, 1]^3, also checked against sampling.
3. Table 3 / Table 6 in miniature on scikit-learn's 8x8 digits: 1-NN accuracy
   with Hamming distance between activation patterns vs Euclidean distance, and
   Chebyshev radii of the regions of training vs test points.

Your trained networks are not the paper's, so the counts differ from its 218 /
237 (211 bounded, 26 unbounded); what is checked is that they are exact.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext.demos.common import add_common_arguments, pyplot, seed_everything, write_json
from manifold_ext.relu_geometry import (
    HammingNearestNeighbour,
    ReLUNetwork,
    chebyshev_centre,
    enumerate_regions,
    sample_patterns,
)
from manifold_ext.relu_geometry.plot import plot_regions, region_polygon

NAME = "polyhedra"
DESCRIPTION = "ReLU polyhedra: 2x10 net on x1^2+x2^2-0.4, regions in [-1,1]^2 and R^2 vs sampling, Table 1 counts"

BOX = (-1.0, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    parser.add_argument("--steps", type=int, default=None, help="training steps per network (default 3000, quick 800)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per Table 1 architecture (default 3, quick 2)")
    parser.add_argument("--grid", type=int, default=None,
                        help="sampling grid per axis for the check (default 2000, quick 600)")


def target(x: torch.Tensor) -> torch.Tensor:
    """The paper's function: sum of squares minus 0.4 (2-D), or minus 3 in 3-D (Section 4.1.3)."""
    return (x ** 2).sum(1, keepdim=True) - (0.4 if x.shape[1] == 2 else 3.0)


def mlp(d: int, widths: list[int]) -> nn.Sequential:
    layers, fan_in = [], d
    for w in widths:
        layers += [nn.Linear(fan_in, w), nn.ReLU()]
        fan_in = w
    return nn.Sequential(*layers, nn.Linear(fan_in, 1))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run tiny-network training on ``n`` threads: with a few hundred parameters, intra-op
    threads only add synchronisation (27x slower on a busy 2-core machine, measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch_threads(1)
def train_regressor(widths: list[int], d: int, steps: int, seed: int, n_points: int = 10_000,
                    bias_init: float | None = None):
    """10,000 uniform points of [-1, 1]^d (80% train, 20% validation), Adam on MSE, keeping the
    weights of the best validation MSE (the paper trains to early stopping on validation loss).
    ``bias_init``: a constant for every bias instead of PyTorch's default (see ``table1``)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.rand(n_points, d, generator=g) * 2 - 1
    y = target(x)
    split = int(0.8 * n_points)
    model = mlp(d, widths)
    if bias_init is not None:
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.constant_(layer.bias, bias_init)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best, best_state = float("inf"), None
    for step in range(steps):
        batch = torch.randint(0, split, (512,), generator=g)
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 49 or step == steps - 1:
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x[split:]), y[split:]).item()
            if val < best:
                best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), best


def _grid_patterns(net: ReLUNetwork, per_axis: int) -> np.ndarray:
    axis = np.linspace(BOX[0], BOX[1], per_axis)
    unique = []
    for row in np.array_split(axis, max(1, per_axis // 200)):
        xx, yy = np.meshgrid(row, axis, indexing="ij")
        unique.append(np.unique(net.patterns(np.stack([xx.ravel(), yy.ravel()], 1)).numpy(), axis=0))
    return np.unique(np.concatenate(unique), axis=0)


def toy_network(args, steps: int, grid: int) -> tuple[dict, ReLUNetwork, object]:
    model, val_mse = train_regressor([10, 10], 2, steps, args.seed)
    net = ReLUNetwork.from_module(model)
    in_box = enumerate_regions(net, box=BOX)
    everywhere = enumerate_regions(net)
    # Dense sampling: a grid and as many uniform random points.
    sampled = np.unique(np.concatenate([_grid_patterns(net, grid),
                                        sample_patterns(net, BOX, grid * grid, seed=args.seed)]), axis=0)
    positions = in_box.index_of(sampled)
    found_by_sampling = np.zeros(len(in_box), dtype=bool)
    found_by_sampling[positions[positions >= 0]] = True
    only_enumeration = np.flatnonzero(~found_by_sampling)
    summary = {
        "validation_mse": val_mse,
        "regions_in_box": len(in_box),
        "regions_in_R2": len(everywhere),
        "bounded_in_R2": everywhere.num_bounded,
        "unbounded_in_R2": everywhere.num_unbounded,
        "paper_reference": {"regions_in_box": 218, "regions_in_R2": 237, "bounded": 211, "unbounded": 26},
        "sampling_check": {
            "points": 2 * grid * grid,
            "distinct_patterns_sampled": int(len(sampled)),
            "sampled_but_not_enumerated": int(np.sum(positions < 0)),
            "enumerated_only": int(len(only_enumeration)),
            "enumerated_only_inradius_max": float(in_box.radii[only_enumeration].max()) if len(only_enumeration) else None,
            "interior_points_have_their_pattern": bool(np.array_equal(
                net.patterns(in_box.interior_points).numpy(), in_box.patterns)),
        },
        "enumeration_seconds": {"box": round(in_box.seconds, 3), "R2": round(everywhere.seconds, 3)},
        "linear_programs": {"box": in_box.n_lps, "R2": everywhere.n_lps},
        "failed_lps": len(in_box.failures) + len(everywhere.failures),
        "empty_candidates": in_box.empty_candidates + everywhere.empty_candidates,
    }
    return summary, net, (in_box, everywhere)


def toy_network_3d(args, steps: int, points: int) -> dict:
    """Section 4.1.3: a 3 x 10 network on x1^2 + x2^2 + x3^2 - 3 in [-1, 1]^3 (paper: 2,212 regions)."""
    model, val_mse = train_regressor([10, 10, 10], 3, steps, args.seed, n_points=125_000)
    net = ReLUNetwork.from_module(model)
    result = enumerate_regions(net, box=BOX)
    sampled = sample_patterns(net, BOX, points, seed=args.seed)
    positions = result.index_of(sampled)
    missed = np.ones(len(result), dtype=bool)
    missed[positions[positions >= 0]] = False
    return {
        "validation_mse": val_mse,
        "regions_in_box": len(result),
        "paper_reference": 2212,
        "sampling_check": {"points": points, "distinct_patterns_sampled": int(len(sampled)),
                           "sampled_but_not_enumerated": int(np.sum(positions < 0)),
                           "enumerated_only": int(missed.sum()),
                           "enumerated_only_inradius_max": float(result.radii[missed].max()) if missed.any() else None},
        "enumeration_seconds": round(result.seconds, 2),
        "linear_programs": result.n_lps,
        "failed_lps": len(result.failures),
    }


TABLE1_BIAS_INIT = 0.1


def table1(args, steps: int, seeds: int) -> list[dict]:
    if args.quick:
        architectures = [(2, 5), (4, 5), (3, 5), (3, 10)]
    else:
        architectures = [(2, 5), (4, 5), (6, 5), (8, 5), (3, 5), (3, 10), (3, 15)]
    rows = []
    jobs = [(layers, nodes, seed) for layers, nodes in architectures for seed in range(seeds)]
    counts: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for layers, nodes, seed in tqdm(jobs, desc="Table 1 networks", unit="net"):
        # Biases start at 0.1: with PyTorch's default init, 6- and 8-layer 5-wide nets are often
        # dead from the start (every unit of a layer inactive on the whole square, so the net is
        # constant and training cannot move it: validation MSE 0.17, the target's variance).
        model, val_mse = train_regressor([nodes] * layers, 2, steps, 1000 + seed, bias_init=TABLE1_BIAS_INIT)
        result = enumerate_regions(ReLUNetwork.from_module(model), box=BOX, progress=False)
        counts.setdefault((layers, nodes), []).append((len(result), val_mse))
    for (layers, nodes), values in counts.items():
        n = np.array([v[0] for v in values])
        mse = np.array([v[1] for v in values])
        rows.append({"layers": layers, "nodes": nodes, "seeds": len(values), "bias_init": TABLE1_BIAS_INIT,
                     "mean": float(n.mean()),
                     "sd": float(n.std(ddof=1)) if len(n) > 1 else 0.0, "median": float(np.median(n)),
                     "min": int(n.min()), "max": int(n.max()), "mean_mse": float(mse.mean())})
    return rows


@torch_threads(1)
def digits_geometry(args, quick: bool) -> dict:
    """Hamming-NN vs Euclidean-NN (Table 3) and Chebyshev radii of train vs test regions (Table 6)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=args.seed, stratify=y)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.tensor(X_train, dtype=torch.float32), torch.tensor(y_train)
    for epoch in range(30 if quick else 100):
        for batch in torch.randperm(len(xt)).split(64):
            loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    net = ReLUNetwork.from_module(model)
    with torch.no_grad():
        test_acc = float((model(torch.tensor(X_test, dtype=torch.float32)).argmax(1).numpy() == y_test).mean())
    hamming = HammingNearestNeighbour(k=1, network=net).fit(X_train, y_train)
    euclid = KNeighborsClassifier(1).fit(X_train, y_train)
    n_radii = 40 if quick else 200
    radii = {}
    for name, data in (("train", X_train[:n_radii]), ("test", X_test[:n_radii])):
        regions = net.regions(net.patterns(data))
        radii[name] = np.array([chebyshev_centre(r, box=(0.0, 1.0), method="highs")[1] for r in regions])
    return {
        "network": "64-100-100-10, trained on 70% of the 8x8 digits",
        "test_accuracy": test_acc,
        "nn_accuracy_test": {"euclidean": float(euclid.score(X_test, y_test)),
                             "hamming": float(hamming.score(X_test, y_test))},
        "chebyshev_radius_in_pixel_box": {name: {"mean": float(r.mean()), "sd": float(r.std()),
                                                 "min": float(r.min()), "max": float(r.max()), "n": len(r)}
                                          for name, r in radii.items()},
    }


def _plane_window(net, everywhere) -> float:
    """Half-width of a square window holding every bounded region (and the box), with a margin."""
    extent = 1.0
    for region, bounded in zip(everywhere.regions(net), everywhere.bounded):
        if bounded:
            poly = region_polygon(region, (-1e6, 1e6))
            if len(poly):
                extent = max(extent, float(np.abs(poly).max()))
    return 1.25 * extent


def _figure(path, net, in_box, everywhere, table):
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.6), gridspec_kw={"width_ratios": [1.2, 1.2, 1, 1]})
    plot_regions(axes[0], in_box.regions(net), BOX, title=f"{len(in_box)} regions in [-1, 1]^2 (2x10 net)")
    wide = _plane_window(net, everywhere)
    plot_regions(axes[1], everywhere.regions(net), (-wide, wide),
                 title=f"R^2: {len(everywhere)} regions ({everywhere.num_bounded} bounded, "
                       f"{everywhere.num_unbounded} unbounded)")
    axes[1].add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, ls="--", lw=1.0, color="w"))
    depth = sorted((r for r in table if r["nodes"] == 5 and r["layers"] != 3), key=lambda r: r["layers"])
    width = sorted((r for r in table if r["layers"] == 3), key=lambda r: r["nodes"])
    for ax, rows, key, label in ((axes[2], depth, "layers", "hidden layers (5 nodes each)"),
                                 (axes[3], width, "nodes", "nodes per layer (3 layers)")):
        ax.errorbar([r[key] for r in rows], [r["mean"] for r in rows], yerr=[r["sd"] for r in rows], marker="o",
                    capsize=3)
        ax.set_xlabel(label)
        ax.set_ylabel("regions in [-1, 1]^2 (mean ± sd over seeds)")
        ax.set_title("Table 1: regions vs " + key)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    steps = args.steps or (800 if args.quick else 3000)
    seeds = args.seeds or (2 if args.quick else 3)
    grid = args.grid or (600 if args.quick else 2000)
    start = time.perf_counter()
    toy, net, (in_box, everywhere) = toy_network(args, steps, grid)
    table = table1(args, steps, seeds)
    toy_3d = None if args.quick else toy_network_3d(args, steps, 2_000_000)
    digits = digits_geometry(args, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "relu_polyhedra.png"
    _figure(figure, net, in_box, everywhere, table)
    summary = {
        "demo": NAME,
        "toy_2x10": toy,
        "table1": table,
        "toy_3x10_in_3d": toy_3d,
        "digits": digits,
        "seconds": round(time.perf_counter() - start, 1),
        "figure": str(figure),
    }
    write_json(args.out / "summary.json", summary)
    return summary
