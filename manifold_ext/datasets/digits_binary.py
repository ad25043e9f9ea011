"""Binary image-classification data that ships or loads from disk (no downloads).

* ``load_digits_binary``: scikit-learn's bundled 8x8 handwritten digits (1,797
  images, pixel values 0..16 scaled to [0, 1]) as a two-class task, by default
  "digit < 5" vs "digit >= 5". This is the stand-in for the paper's CelebA
  gender task in the Table 1 reproduction (paper 000 §3.2).
* ``load_digits_classes``: the same digits as the 10-class task (label = digit).
* ``load_celeba_gender``: CelebA's gender attribute from a local copy of the
  aligned images (``img_align_celeba/`` and ``list_attr_celeba.txt``), when the
  user has one. Nothing is downloaded.

Images come back as float32 tensors ``[N, C, H, W]`` in [0, 1] and labels as
int64 ``[N]``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch


@dataclasses.dataclass
class ImageSplit:
    """A train/test split of an image-classification set."""

    x_train: torch.Tensor  # [N_train, C, H, W] float32 in [0, 1]
    y_train: torch.Tensor  # [N_train] int64
    x_test: torch.Tensor  # [N_test, C, H, W] float32 in [0, 1]
    y_test: torch.Tensor  # [N_test] int64
    class_names: tuple[str, ...]
    name: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def load_digits_binary(threshold: int = 5, test_fraction: float = 0.3, seed: int = 0) -> ImageSplit:
    """scikit-learn's 8x8 digits as the binary task ``digit >= threshold`` (label 1) vs ``< threshold`` (0).

    Args:
        threshold: digits below it are class 0, the others class 1 (1..9).
        test_fraction: share of images held out for testing, stratified by digit.
        seed: seed of the split.
    """
    from sklearn.datasets import load_digits

    if not 1 <= threshold <= 9:
        raise ValueError(
            f"load_digits_binary: threshold must be in 1..9 so both classes are non-empty, got {threshold}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits_binary: test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values 0..16 -> [0, 1]
    binary = (digits.target >= threshold).astype(np.int64)
    train, test = _stratified_split(digits.target, test_fraction, seed)  # stratify by digit, not only by class
    x = torch.from_numpy(images).unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.from_numpy(binary)
    return ImageSplit(
        x[train],
        y[train],
        x[test],
        y[test],
        class_names=(f"digit < {threshold}", f"digit >= {threshold}"),
        name="digits-binary",
    )


def load_digits_classes(test_fraction: float = 0.3, seed: int = 0) -> ImageSplit:
    """scikit-learn's 8x8 digits as the 10-class task (label = the digit), split stratified by digit.

    The same images and split as ``load_digits_binary`` with the same ``test_fraction`` and
    ``seed`` (the stand-in for MNIST in the thesis 004 Table 4.1 reproduction).
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits_classes: test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values 0..16 -> [0, 1]
    train, test = _stratified_split(digits.target, test_fraction, seed)
    x = torch.from_numpy(images).unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.from_numpy(digits.target.astype(np.int64))
    return ImageSplit(
        x[train], y[train], x[test], y[test], class_names=tuple(str(d) for d in range(10)), name="digits-10"
    )


def load_celeba_gender(
    root: str | Path, image_size: int = 32, limit: int | None = 20000, test_fraction: float = 0.2, seed: int = 0
) -> ImageSplit:
    """CelebA's "Male" attribute from a local folder (aligned images), centre-cropped and resized.

    ``root`` must hold ``img_align_celeba/`` (the JPEGs) and ``list_attr_celeba.txt``
    (the attribute table as distributed). The first ``limit`` images listed are
    used (all when ``None``). Class 0 is "female", class 1 "male".
    """
    from PIL import Image

    root = Path(root)
    attr_file = root / "list_attr_celeba.txt"
    image_dir = root / "img_align_celeba"
    if not attr_file.is_file() or not image_dir.is_dir():
        raise FileNotFoundError(
            f"load_celeba_gender: expected {attr_file} and the folder {image_dir} (CelebA's aligned images); "
            "nothing is downloaded, point --celeba-root at a local copy"
        )
    if image_size < 8:
        raise ValueError(f"load_celeba_gender: image_size must be >= 8, got {image_size}")
    lines = attr_file.read_text().splitlines()
    header = lines[1].split()
    if "Male" not in header:
        raise ValueError(f"load_celeba_gender: {attr_file} has no 'Male' column")
    male_column = header.index("Male") + 1  # +1: each row starts with the file name
    rows = [line.split() for line in lines[2:] if line.strip()]
    if limit is not None:
        rows = rows[:limit]
    images, labels = [], []
    for row in rows:
        with Image.open(image_dir / row[0]) as image:
            image = image.convert("RGB")
            width, height = image.size  # 178 x 218 for the aligned set: crop the central square
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.BILINEAR)
            images.append(np.asarray(image, dtype=np.float32) / 255.0)
        labels.append(1 if int(row[male_column]) > 0 else 0)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [N, 3, S, S]
    y = torch.tensor(labels, dtype=torch.int64)
    train, test = _stratified_split(y.numpy(), test_fraction, seed)
    return ImageSplit(x[train], y[train], x[test], y[test], class_names=("female", "male"), name="celeba-gender")
