"""Two-digit composites (paper 000 §4.1): two handwritten digits side by side,
each from {0, ..., D-1}, giving D^2 classes ("00", "01", ..., "55" for D = 6).

The paper builds them from MNIST (28x28 digits, 28x56 composites); here the
default source is scikit-learn's bundled 8x8 digits (1,797 images, no
download), giving 8x16 composites. ``two_digit_mnist`` builds the 28x56
version from a local MNIST copy when the user has one (see ``mnist.py``).

Train and test composites are made from disjoint pools of single-digit images,
so a test composite never reuses a digit image seen in training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch


@dataclasses.dataclass
class TwoDigitData:
    """Composite images and their two digit labels."""

    images: torch.Tensor  # [N, 1, H, 2W] float32 in [0, 1]
    first: torch.Tensor  # [N] int64, the left digit
    second: torch.Tensor  # [N] int64, the right digit
    num_digits: int  # D: digits are 0..D-1

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def labels(self) -> torch.Tensor:
        """Class index first * D + second, in 0..D^2-1 ("ab" -> a*D + b)."""
        return self.first * self.num_digits + self.second

    @property
    def attributes(self) -> torch.Tensor:
        """[N, 2] int64 (first digit, second digit): the attribute vector of each image."""
        return torch.stack([self.first, self.second], dim=1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def split_pools(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of single-digit image indices into disjoint train/test pools."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        cut = max(1, int(round(len(idx) * test_fraction)))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def compose_pairs(images: np.ndarray, labels: np.ndarray, num_digits: int, per_class: int, seed: int) -> TwoDigitData:
    """``per_class`` composites for every ordered pair (a, b) of digits < num_digits,
    each a random image of a next to a random image of b (images: [N, H, W] in [0, 1])."""
    rng = np.random.default_rng(seed)
    by_digit = [np.flatnonzero(labels == d) for d in range(num_digits)]
    for digit, idx in enumerate(by_digit):
        if len(idx) == 0:
            raise ValueError(f"no images of digit {digit} to compose pairs from")
    first = np.repeat(np.arange(num_digits), num_digits * per_class)
    second = np.tile(np.repeat(np.arange(num_digits), per_class), num_digits)
    left = np.array([rng.choice(by_digit[a]) for a in first])
    right = np.array([rng.choice(by_digit[b]) for b in second])
    composite = np.concatenate([images[left], images[right]], axis=2)  # [N, H, 2W]
    order = rng.permutation(len(first))
    return TwoDigitData(
        images=torch.from_numpy(composite[order]).float().unsqueeze(1),
        first=torch.from_numpy(first[order]).long(),
        second=torch.from_numpy(second[order]).long(),
        num_digits=num_digits,
    )


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def two_digit_digits(
    split: str = "train",
    *,
    num_digits: int = 6,
    per_class: int | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> TwoDigitData:
    """Two-digit composites (8x16) from scikit-learn's bundled 8x8 digits.

    Args:
        split: ``"train"`` or ``"test"``; the two draw from disjoint single-digit pools.
        num_digits: D, digits 0..D-1 (default 6: the paper's 36 classes).
        per_class: composites per class (default 200 for train, 50 for test).
        test_fraction: share of each digit's images reserved for the test pool.
        seed: the pools' split uses ``seed``; the pairing uses ``seed`` and the split.
    """
    from sklearn.datasets import load_digits

    _check_split(split)
    if not 1 <= num_digits <= 10:
        raise ValueError(f"num_digits must be in 1..10, got {num_digits}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8], pixel values 0..16
    labels = digits.target
    train_idx, test_idx = split_pools(labels, test_fraction, seed)
    pool = train_idx if split == "train" else test_idx
    if per_class is None:
        per_class = 200 if split == "train" else 50
    return compose_pairs(images[pool], labels[pool], num_digits, per_class, seed + (0 if split == "train" else 1))


def two_digit_mnist(
    root: str | Path, split: str = "train", *, num_digits: int = 6, per_class: int | None = None, seed: int = 0
) -> TwoDigitData:
    """Two-digit composites (28x56) from a local MNIST copy (paper 000 §4.1's data).

    Train composites use MNIST's training images, test composites its test
    images. Raises FileNotFoundError when MNIST is not under ``root`` (nothing
    is downloaded).
    """
    from manifold_ext.datasets.mnist import load_mnist

    _check_split(split)
    images, labels = load_mnist(root, split)
    if per_class is None:
        per_class = 1000 if split == "train" else 200
    return compose_pairs(images.numpy(), labels.numpy(), num_digits, per_class, seed + (0 if split == "train" else 1))
