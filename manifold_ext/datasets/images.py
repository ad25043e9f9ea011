"""Image sets for the flow demos: scikit-learn's bundled 8x8 digits with generated
out-of-distribution variants, and CIFAR-10 / CelebA read from a local folder.

Images are returned as integer *levels* (``float32`` tensors holding
``0 .. n_bins - 1``, shape ``[N, C, H, W]``) together with ``n_bins``, so that
models can dequantise them and report bits per dimension.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_BINS = 17  # scikit-learn's digits hold the counts 0..16 of a 4x4 block of pixels


def digits_levels() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 bundled 8x8 digits: ``(levels [N, 1, 8, 8] in 0..16, labels [N])``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(digits.target)


def ood_digit_sets(
    in_test: torch.Tensor, held_out: torch.Tensor, n_bins: int = DIGITS_BINS, noise_std: float = 0.1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Continuous out-of-distribution inputs in ``[-1/2, 1/2]`` built from dequantised
    digits ``in_test`` / ``held_out`` (continuous, same scale) or generated:

    * ``held-out classes``: digits of classes never seen in training;
    * ``flipped``: in-distribution test digits flipped upside down;
    * ``noised``: in-distribution test digits plus Gaussian noise (``noise_std``), clipped;
    * ``uniform noise``: every pixel uniform on ``[-1/2, 1/2)``.
    """
    generator = torch.Generator().manual_seed(seed)
    noised = in_test + noise_std * torch.randn(in_test.shape, generator=generator)
    return {
        "held-out classes": held_out,
        "flipped": torch.flip(in_test, dims=[2]),
        "noised": noised.clamp(-0.5, 0.5 - 1e-6),
        "uniform noise": torch.rand(in_test.shape, generator=generator) - 0.5,
    }


def load_cifar10_folder(root: str | Path, split: str = "test", limit: int | None = None) -> torch.Tensor:
    """CIFAR-10 from the official python pickles under ``root`` (the folder
    ``cifar-10-batches-py`` or its parent): ``[N, 3, 32, 32]`` levels in 0..255."""
    root = Path(root)
    folder = root if (root / "test_batch").exists() else root / "cifar-10-batches-py"
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    arrays = []
    for name in names:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"load_cifar10_folder: {path} not found (expected the CIFAR-10 python batches)")
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        arrays.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        if limit is not None and sum(len(a) for a in arrays) >= limit:
            break
    images = torch.from_numpy(np.concatenate(arrays)).float()
    return images[:limit] if limit is not None else images


def load_celeba_folder(root: str | Path, size: int = 32, limit: int | None = 5000) -> torch.Tensor:
    """Aligned CelebA (or any folder of face crops) from ``root`` (the folder
    ``img_align_celeba`` or its parent): centre 148x148 crop (as is usual for
    CelebA), area-resized to ``size``; ``[N, 3, size, size]`` levels in 0..255."""
    from PIL import Image

    root = Path(root)
    folder = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"load_celeba_folder: no .jpg/.png images in {folder}")
    files = files[:limit] if limit is not None else files
    out = []
    for path in files:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
        height, width = array.shape[:2]
        crop = min(148, height, width)
        top, left = (height - crop) // 2, (width - crop) // 2
        tensor = torch.from_numpy(array[top : top + crop, left : left + crop]).permute(2, 0, 1).unsqueeze(0)
        out.append(F.interpolate(tensor, size=(size, size), mode="area").round().clamp(0, 255))
    return torch.cat(out)


def find_local_image_set(root: str | Path | None, name: str) -> Path | None:
    """Where ``name`` (``"cifar10"`` or ``"celeba"``) lives under ``root``, or ``None``."""
    if root is None:
        return None
    root = Path(root)
    candidates = {
        "cifar10": [root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py", root / "cifar10"],
        "celeba": [root / "img_align_celeba", root / "celeba" / "img_align_celeba", root / "celeba"],
    }[name]
    for path in candidates:
        if name == "cifar10" and (path / "test_batch").exists():
            return path
        if name == "celeba" and path.is_dir() and (any(path.glob("*.jpg")) or any(path.glob("*.png"))):
            return path
    return None
