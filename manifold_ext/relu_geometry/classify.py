"""Nearest-neighbour classification in Hamming distance between activation patterns (paper 001, Table 3)."""

from __future__ import annotations

import numpy as np
import torch

from manifold_ext.ops.relu_patterns import hamming_topk
from manifold_ext.relu_geometry._checks import as_int
from manifold_ext.relu_geometry.network import ReLUNetwork


class HammingNearestNeighbour:
    """k-nearest-neighbour classifier on packed activation patterns, searched with ``hamming_topk``.

    Args:
        k: neighbours that vote (default 1).
        network: if given, ``fit``/``predict`` take inputs ``[N, d]`` and use their patterns under
            this :class:`ReLUNetwork`; otherwise they take packed patterns ``int64 [N, words]``.

    Votes are counted per class; a tie between classes goes to the class of the nearest
    neighbour among the tied ones (neighbours are ordered by distance, then by training index).
    """

    def __init__(self, k: int = 1, network: ReLUNetwork | None = None):
        self.k = as_int(k, "HammingNearestNeighbour: k", minimum=1)
        self.network = network
        self._ref: torch.Tensor | None = None
        self._labels: np.ndarray | None = None

    def _patterns(self, X) -> torch.Tensor:
        if self.network is not None:
            return self.network.patterns(X)
        p = X if torch.is_tensor(X) else torch.as_tensor(np.asarray(X))
        if p.dtype != torch.int64 or p.dim() != 2:
            raise ValueError(
                "HammingNearestNeighbour: without a network, pass packed patterns int64 [N, words] "
                f"(see manifold_ext.ops.activation_patterns), got {p.dtype} {tuple(p.shape)}"
            )
        return p.contiguous()

    def fit(self, X, y) -> "HammingNearestNeighbour":
        ref = self._patterns(X)
        labels = np.asarray(y)
        if labels.shape != (ref.shape[0],):
            raise ValueError(
                f"HammingNearestNeighbour.fit: got {ref.shape[0]} patterns but labels of shape {labels.shape}"
            )
        if ref.shape[0] < self.k:
            raise ValueError(
                f"HammingNearestNeighbour.fit: k = {self.k} needs at least {self.k} training "
                f"patterns, got {ref.shape[0]}"
            )
        self._ref, self._labels = ref, labels
        self.classes_ = np.unique(labels)
        return self

    def kneighbors(self, X, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances int32 [N, k], training indices int64 [N, k])``, nearest first."""
        if self._ref is None:
            raise RuntimeError("HammingNearestNeighbour: call fit first")
        query = self._patterns(X)
        if query.shape[1] != self._ref.shape[1]:
            raise ValueError(
                f"HammingNearestNeighbour: patterns have {query.shape[1]} words, the training "
                f"patterns {self._ref.shape[1]}"
            )
        k = self.k if k is None else as_int(k, "HammingNearestNeighbour.kneighbors: k", minimum=1)
        if k > self._ref.shape[0]:
            raise ValueError(
                f"HammingNearestNeighbour.kneighbors: k = {k} exceeds the {self._ref.shape[0]} training patterns"
            )
        dist, index = hamming_topk(query.to(self._ref.device), self._ref, k)
        return dist.cpu().numpy(), index.cpu().numpy()

    def predict(self, X) -> np.ndarray:
        _, index = self.kneighbors(X)
        neighbour_labels = self._labels[index]  # [N, k], nearest first
        if self.k == 1:
            return neighbour_labels[:, 0]
        class_index = np.searchsorted(self.classes_, neighbour_labels)
        votes = np.zeros((len(index), len(self.classes_)), dtype=np.int64)
        np.add.at(votes, (np.arange(len(index))[:, None], class_index), 1)
        best = votes.max(axis=1, keepdims=True)
        tied = votes == best  # [N, C]
        # The first neighbour (nearest) whose class is among the tied ones decides.
        first_tied = tied[np.arange(len(index))[:, None], class_index]  # [N, k]
        pick = first_tied.argmax(axis=1)
        return neighbour_labels[np.arange(len(index)), pick]

    def score(self, X, y) -> float:
        """Accuracy on ``(X, y)``."""
        return float(np.mean(self.predict(X) == np.asarray(y)))
