"""How well a latent grid clusters and disentangles labelled data (paper 000 §4.1)."""

from __future__ import annotations

import numpy as np
import torch

from manifold_ext._optional import require


def _nmi(labels, clusters) -> float:
    metrics = require("sklearn.metrics", feature="normalised mutual information (vae.metrics)")
    return float(metrics.normalized_mutual_info_score(labels, clusters))


def _as_numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def majority_map(clusters, labels) -> dict[int, int]:
    """For every cluster id, the label most of its members carry (ties: the smaller label)."""
    clusters, labels = _as_numpy(clusters), _as_numpy(labels)
    mapping = {}
    for cluster in np.unique(clusters):
        mapping[int(cluster)] = int(np.bincount(labels[clusters == cluster]).argmax())
    return mapping


def mapped_accuracy(mapping: dict[int, int], clusters, labels) -> float:
    """Share of samples whose cluster's mapped label is their label (unmapped clusters count as wrong)."""
    clusters, labels = _as_numpy(clusters), _as_numpy(labels)
    if len(labels) == 0:
        return float("nan")
    predicted = np.array([mapping.get(int(c), -1) for c in clusters])
    return float((predicted == labels).mean())


def purity(clusters, labels) -> float:
    """Cluster purity: the share of samples carrying their cluster's majority label."""
    return mapped_accuracy(majority_map(clusters, labels), clusters, labels)


def cluster_report(train_clusters, train_labels, test_clusters, test_labels, num_classes: int) -> dict:
    """Clustering of held-out data by "nearest centre -> label":

    * ``accuracy``: each centre is labelled by the majority label of the *training*
      samples assigned to it; the share of test samples whose centre's label is right;
    * ``purity``: the same with majorities taken on the test samples themselves;
    * ``nmi``: normalised mutual information between test centres and labels;
    * ``occupied_centres``: how many distinct centres the test samples use;
    * ``chance_accuracy``: 1 / num_classes.
    """
    mapping = majority_map(train_clusters, train_labels)
    return {
        "accuracy": mapped_accuracy(mapping, test_clusters, test_labels),
        "purity": purity(test_clusters, test_labels),
        "nmi": _nmi(_as_numpy(test_labels), _as_numpy(test_clusters)),
        "occupied_centres": int(len(np.unique(_as_numpy(test_clusters)))),
        "chance_accuracy": 1.0 / num_classes,
    }


def dimension_control(train_index, train_factors, test_index, test_factors) -> dict:
    """Which latent dimension controls which factor (e.g. first/second digit).

    ``*_index``: [N, n] per-dimension grid indices of the nearest centre;
    ``*_factors``: [N, F] integer factors. Returns F x n matrices: ``accuracy[f][d]``,
    predicting factor f from the grid index along dimension d alone (majority map
    from training data, scored on test data), and ``nmi[f][d]``; plus, for each
    factor, the dimension that predicts it best.
    """
    train_index, train_factors = _as_numpy(train_index), _as_numpy(train_factors)
    test_index, test_factors = _as_numpy(test_index), _as_numpy(test_factors)
    num_factors, num_dims = train_factors.shape[1], train_index.shape[1]
    accuracy = [[0.0] * num_dims for _ in range(num_factors)]
    nmi = [[0.0] * num_dims for _ in range(num_factors)]
    for f in range(num_factors):
        for d in range(num_dims):
            mapping = majority_map(train_index[:, d], train_factors[:, f])
            accuracy[f][d] = mapped_accuracy(mapping, test_index[:, d], test_factors[:, f])
            nmi[f][d] = _nmi(test_factors[:, f], test_index[:, d])
    best = [int(np.argmax(row)) for row in accuracy]
    return {"accuracy": accuracy, "nmi": nmi, "best_dimension": best}
