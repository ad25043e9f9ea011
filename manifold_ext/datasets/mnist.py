"""MNIST from a local folder. manifold_ext never downloads data: point ``root``
at a folder holding MNIST in one of the usual layouts.

Recognised layouts (searched in ``root``, ``root/MNIST/raw`` and ``root/raw``):

* the original IDX files, plain or gzipped: ``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]`` (also what torchvision stores under ``MNIST/raw``);
* ``mnist.npz`` with arrays ``x_train, y_train, x_test, y_test`` (Keras' file).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _candidate_folders(root: Path) -> list[Path]:
    return [root, root / "MNIST" / "raw", root / "raw"]


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (unsigned-byte data, as MNIST ships), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX data is supported, got type code {data[2]:#x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {array.size} values")
    return array.reshape(shape)


def load_mnist(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: images ``[N, 28, 28]`` float32 in [0, 1], labels ``[N]`` int64.

    Raises FileNotFoundError, naming the places searched, when no MNIST copy is found.
    """
    if split not in _IDX_NAMES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    image_name, label_name = _IDX_NAMES[split]
    for folder in _candidate_folders(root):
        image_path, label_path = _find(folder, image_name), _find(folder, label_name)
        if image_path and label_path:
            images, labels = read_idx(image_path), read_idx(label_path)
            break
        npz = folder / "mnist.npz"
        if npz.is_file():
            with np.load(npz) as archive:
                suffix = "train" if split == "train" else "test"
                images, labels = archive[f"x_{suffix}"], archive[f"y_{suffix}"]
            break
    else:
        searched = ", ".join(str(f) for f in _candidate_folders(root))
        raise FileNotFoundError(
            f"MNIST ({split}) not found: looked for {image_name}[.gz] + {label_name}[.gz] or mnist.npz in "
            f"{searched}. manifold_ext does not download data; put a local MNIST copy there, or use the "
            "bundled scikit-learn digits (manifold_ext.datasets.two_digit_digits)."
        )
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(
            f"MNIST {split}: expected images [N, H, W] and N labels, got {images.shape} and {labels.shape}"
        )
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))
