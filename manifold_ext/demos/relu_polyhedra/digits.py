"""Section 4.2 of paper 001 (MNIST) on scikit-learn's 8x8 digits: Hamming-NN vs Euclidean-NN (Table 3),
Hamming distance at a fixed Euclidean distance for train / test / FGSM points (Table 4), Algorithm 2
between nearest neighbours (Table 5, Fig. 4), Chebyshev radii (Table 6) and active bits (Table 2).

Setup differences from the paper, stated wherever a number is reported: 1,797 images of 8x8 = 64
pixels (scaled to [0, 1]) split 70 / 30 stratified, instead of MNIST's 60,000 + 10,000 images of
784 pixels; the paper's architectures (3x200, 5x300, 5x500; 1..5 x 200) are kept. Chebyshev balls
are taken within the pixel box [0, 1]^64 (the paper bounds unbounded regions by a box too, without
saying which). The paper does not give its FGSM step; we use eps = 0.1 in pixel units.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_ext._machine import torch_threads
from manifold_ext._optional import require
from manifold_ext.attacks import fgsm
from manifold_ext.demos.relu_polyhedra.paper import STRUCTURES
from manifold_ext.demos.relu_polyhedra.toy import one_bit_guarantee
from manifold_ext.ops.relu_patterns import hamming_distance
from manifold_ext.relu_geometry import (
    HammingNearestNeighbour,
    ReLUNetwork,
    active_bits,
    bisect_to_neighbour,
    chebyshev_centre,
)

PIXEL_BOX = (0.0, 1.0)
FGSM_EPS = 0.1
FIXED_DISTANCES = (0.5, 0.75, 1.0)  # Table 4's Euclidean distances
EPOCHS = 50  # Section 4.2: cross-entropy, Adam, at most 50 epochs
SETUP = "sklearn 8x8 digits (64 pixels in [0,1], 1,258 train / 539 test) instead of MNIST (784 pixels, 60k/10k)"


@dataclasses.dataclass
class Sizes:
    """How much of each experiment to run (the paper's sizes are in brackets)."""

    structures: tuple[int, ...] = (1, 2, 3)
    depth_widths: tuple[int, ...] = (1, 2, 3, 4, 5)  # Fig. 4's hidden layers of 200 nodes
    radii_points: int = 200  # per set [1000]
    bisection_pairs: int = 100  # Euclidean nearest-neighbour pairs per network [1000]
    table5_pairs: int = 6  # [6]
    active_bit_images: int = 0  # [30]; 0 skips Table 2 (LPs in 64-D: ~8 CPU s per region of 3x200, ~40 of 5x300)
    active_bit_structure: int = 2  # Table 2's smallest net is 5 x 300
    table6_structure: int = 2  # Tables 5 and 6 use structure 2 (5x300)
    epochs: int = EPOCHS


@dataclasses.dataclass
class Digits:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_split(seed: int) -> Digits:
    """The 8x8 digits in [0, 1], 70 / 30 stratified split."""
    datasets = require("sklearn.datasets", feature="the polyhedra demo's digits experiments")
    model_selection = require("sklearn.model_selection", feature="the polyhedra demo's digits experiments")
    X, y = datasets.load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = model_selection.train_test_split(
        X / 16.0, y, test_size=0.3, random_state=seed, stratify=y
    )
    return Digits(X_train, y_train, X_test, y_test)


@dataclasses.dataclass
class Classifier:
    widths: list[int]
    model: nn.Sequential  # float32, for FGSM
    network: ReLUNetwork
    train_accuracy: float
    test_accuracy: float
    seconds: float

    @property
    def name(self) -> str:
        return f"{len(self.widths)}x{self.widths[0]}"


def _accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.tensor(X, dtype=torch.float32)).argmax(1).numpy() == y).mean())


@torch_threads(1)
def train_classifier(widths: list[int], data: Digits, seed: int, epochs: int = EPOCHS) -> Classifier:
    """Model (1) with ReLU hidden layers ``widths`` and 10 outputs: cross-entropy, Adam (lr 1e-3),
    mini-batches of 64, ``epochs`` epochs (Section 4.2)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = data.X_train.shape[1]
    for width in widths:
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    model = nn.Sequential(*layers, nn.Linear(fan_in, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.tensor(data.X_train, dtype=torch.float32)
    y = torch.tensor(data.y_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()
    return Classifier(
        list(widths),
        model,
        ReLUNetwork.from_module(model),
        _accuracy(model, data.X_train, data.y_train),
        _accuracy(model, data.X_test, data.y_test),
        time.perf_counter() - started,
    )


def fgsm_points(classifier: Classifier, data: Digits, eps: float = FGSM_EPS) -> tuple[np.ndarray, dict]:
    """FGSM (``manifold_ext.attacks.fgsm``) on every test image, clipped to the pixel range."""
    x = torch.tensor(data.X_test, dtype=torch.float32)
    y = torch.tensor(data.y_test)
    adversarial = fgsm(classifier.model, x, y, eps, clip=PIXEL_BOX)
    X_adv = adversarial.double().numpy()
    return X_adv, {
        "eps": eps,
        "accuracy_clean": classifier.test_accuracy,
        "accuracy_adversarial": _accuracy(classifier.model, X_adv, data.y_test),
    }


def _leave_one_out_first(indices: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
    """Per row of neighbour indices (nearest first, possibly the query ``own[i]`` itself among them: ties at
    distance 0 can put it second), the first neighbour that is another point."""
    own = np.arange(len(indices)) if own is None else np.asarray(own)
    first_other = np.argmax(indices != own[:, None], axis=1)
    return indices[np.arange(len(indices)), first_other]


def nearest_neighbour_accuracy(network: ReLUNetwork, data: Digits) -> dict:
    """Table 3: how often a point's nearest training neighbour has its class, by Euclidean distance between
    images and by Hamming distance between activation patterns. Training points leave themselves out."""
    neighbors = require("sklearn.neighbors", feature="the polyhedra demo's nearest-neighbour experiment")
    euclid = neighbors.NearestNeighbors(n_neighbors=2).fit(data.X_train)
    train_nn = _leave_one_out_first(euclid.kneighbors(data.X_train, return_distance=False))
    test_nn = euclid.kneighbors(data.X_test, n_neighbors=1, return_distance=False)[:, 0]
    hamming = HammingNearestNeighbour(k=1, network=network).fit(data.X_train, data.y_train)
    _, train_index = hamming.kneighbors(data.X_train, k=2)
    hamming_train = _leave_one_out_first(train_index)
    return {
        "euclidean": {
            "train": float(np.mean(data.y_train[train_nn] == data.y_train)),
            "test": float(np.mean(data.y_train[test_nn] == data.y_test)),
        },
        "hamming": {
            "train": float(np.mean(data.y_train[hamming_train] == data.y_train)),
            "test": hamming.score(data.X_test, data.y_test),
        },
    }


def hamming_at_fixed_distance(network: ReLUNetwork, X: np.ndarray, distances, seed: int) -> dict:
    """Table 4: Hamming distance between each point and a point at Euclidean distance ``r`` from it in a
    uniformly random direction (not clipped to the pixel box, so that the distance is exact)."""
    rng = np.random.default_rng(seed)
    out = {}
    own = network.patterns(X)
    for r in distances:
        direction = rng.standard_normal(X.shape)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        other = network.patterns(X + r * direction)
        d = hamming_distance(own, other).diagonal().numpy().astype(np.float64)
        out[str(r)] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)), "n": len(d)}
    return out


def chebyshev_radii(network: ReLUNetwork, X: np.ndarray) -> np.ndarray:
    """Table 6: radius of the largest ball inside each point's region (Eq. 7-8), within the pixel box."""
    A, c, _, _ = network.systems(network.patterns(X))
    return np.array([chebyshev_centre((A[i], c[i]), box=PIXEL_BOX, method="highs")[1] for i in range(len(X))])


def _stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": len(values),
    }


def nearest_pairs(X: np.ndarray, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """``n_pairs`` random training points, each with its Euclidean nearest neighbour (Fig. 4's pairs)."""
    neighbors = require("sklearn.neighbors", feature="the polyhedra demo's bisection experiment")
    anchors = np.random.default_rng(seed).choice(len(X), size=min(n_pairs, len(X)), replace=False)
    index = neighbors.NearestNeighbors(n_neighbors=2).fit(X).kneighbors(X[anchors], return_distance=False)
    partners = _leave_one_out_first(index, anchors)
    return [(int(a), int(b)) for a, b in zip(anchors, partners)]


def bisection_along_pairs(network: ReLUNetwork, X: np.ndarray, pairs) -> dict:
    """Algorithm 2 between each pair: regions along the segment, the Hamming distance of its ends and
    the one-bit-apart guarantee recomputed from the returned points."""
    records = [one_bit_guarantee(network, bisect_to_neighbour(network, X[a], X[b])) for a, b in pairs]
    regions = np.array([r["regions"] for r in records])
    hamming = np.array([r["hamming_between_ends"] for r in records])
    return {
        "pairs": len(records),
        "regions": _stats(regions),
        "hamming": _stats(hamming),
        "steps": int(sum(r["steps"] for r in records)),
        "steps_one_bit_apart": int(sum(r["steps_one_bit_apart"] for r in records)),
        "degenerate_steps": int(sum(r["degenerate_steps"] for r in records)),
        "per_pair": [{"hamming": int(h), "regions": int(n)} for h, n in zip(hamming, regions)],
    }


def active_bit_counts(network: ReLUNetwork, X: np.ndarray) -> np.ndarray:
    """Table 2: active (non-redundant) bits of each point's region (Eq. 6) within the pixel box [0, 1]^64.

    The paper solves Eq. 6 in all of R^784. Here the box is kept: the library's redundancy LPs stop with
    "Unbounded" on some rows of these regions without a box (reported to the relu_geometry owners), and
    the images live in the box anyway; a row whose hyperplane misses the box counts as redundant here.
    """
    A, c, _, _ = network.systems(network.patterns(X))
    return np.array([len(active_bits((A[i], c[i]), box=PIXEL_BOX)) for i in range(len(X))])


def run_digits(seed: int, sizes: Sizes, progress: bool = True) -> dict:
    """Every digits experiment; returns the summary section (``paper_comparison`` rows are built from it)."""
    started = time.perf_counter()
    data = load_split(seed)
    summary: dict = {"setup": SETUP, "fgsm_eps": FGSM_EPS, "pixel_box": list(PIXEL_BOX), "structures": {}}
    bar = tqdm(
        total=len(sizes.structures) + len(sizes.depth_widths), desc="digits networks", unit="net", disable=not progress
    )
    classifiers: dict[str, Classifier] = {}
    for k in sizes.structures:
        layers, nodes = STRUCTURES[k]
        clf = train_classifier([nodes] * layers, data, seed + k, sizes.epochs)
        classifiers[clf.name] = clf
        X_adv, attack = fgsm_points(clf, data)
        section = {
            "network": f"64-{'-'.join(map(str, clf.widths))}-10",
            "hidden_units": clf.network.num_units,
            "train_accuracy": clf.train_accuracy,
            "test_accuracy": clf.test_accuracy,
            "train_seconds": round(clf.seconds, 1),
            "fgsm": attack,
            "nearest_neighbour": nearest_neighbour_accuracy(clf.network, data),
            "hamming_at_fixed_distance": {
                name: hamming_at_fixed_distance(clf.network, X, FIXED_DISTANCES, seed)
                for name, X in (("train", data.X_train), ("test", data.X_test), ("fgsm", X_adv))
            },
        }
        if k == sizes.table6_structure:
            rng = np.random.default_rng(seed)
            n = sizes.radii_points
            picks = {
                "train": data.X_train[rng.choice(len(data.X_train), min(n, len(data.X_train)), replace=False)],
                "test": data.X_test[rng.choice(len(data.X_test), min(n, len(data.X_test)), replace=False)],
            }
            picks["adversarial"] = X_adv[rng.choice(len(X_adv), min(n, len(X_adv)), replace=False)]
            section["chebyshev_radius"] = {name: _stats(chebyshev_radii(clf.network, X)) for name, X in picks.items()}
            pairs = nearest_pairs(data.X_train, sizes.table5_pairs, seed + 5)
            section["table5_bisection"] = bisection_along_pairs(clf.network, data.X_train, pairs)
        if sizes.active_bit_images and k == sizes.active_bit_structure:
            images = data.X_train[: sizes.active_bit_images]
            t0 = time.perf_counter()
            section["active_bits"] = {
                **_stats(active_bit_counts(clf.network, images)),
                "seconds_per_region": round((time.perf_counter() - t0) / len(images), 1),
            }
        summary["structures"][str(k)] = section
        bar.update(1)
    pairs = nearest_pairs(data.X_train, sizes.bisection_pairs, seed + 4)
    summary["fig4_bisection_vs_depth"] = {}
    for layers in sizes.depth_widths:
        clf = classifiers.get(f"{layers}x200") or train_classifier(
            [200] * layers, data, seed + 100 + layers, sizes.epochs
        )
        result = bisection_along_pairs(clf.network, data.X_train, pairs)
        result.pop("per_pair")
        summary["fig4_bisection_vs_depth"][str(layers)] = {"test_accuracy": clf.test_accuracy, **result}
        bar.update(1)
    bar.close()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary
