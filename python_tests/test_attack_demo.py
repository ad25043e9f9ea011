"""`manifold-ext demo attack`: Table 1 of paper 000 on the shipped 8x8 digits, end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from manifold_ext.cli import main
from manifold_ext.datasets import load_celeba_gender, load_digits_binary


def test_attack_demo_quick_shows_collapse_and_recovery(tmp_path):
    previous = torch.get_num_threads()
    try:
        assert main(["demo", "attack", "--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(previous)  # the demo runs single-threaded on CPU
    summary = json.loads((tmp_path / "summary.json").read_text())
    acc = summary["accuracy_percent"]
    # Real outcomes (Table 1's pattern): a good classifier, collapsed by a 9-pixel patch,
    # restored by ELBO purification, which leaves clean accuracy nearly intact.
    assert acc["clean"] > 90
    for attack in ("patch_pgd", "patch_nag"):
        assert acc[attack] < acc["clean"] - 30, acc
        assert acc[f"purified_{attack}"] > acc[attack] + 20, acc
        elbo = summary["mean_elbo_nats"][attack]
        assert elbo["after"] > elbo["before"] + 100, elbo
    assert acc["purified_clean"] > acc["clean"] - 5
    assert summary["patch"]["pixels"] == 9 and summary["test_images"] == 200
    assert "| this run |" in summary["table_markdown"]
    for figure in ("table1.png", "examples_patch_pgd.png", "examples_patch_nag.png"):
        assert (tmp_path / figure).stat().st_size > 10_000


def test_digits_binary_split():
    data = load_digits_binary(threshold=5, seed=0)
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_train.dtype == torch.float32
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert set(data.y_test.tolist()) == {0, 1}
    assert abs(data.y_train.float().mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="threshold must be in 1..9"):
        load_digits_binary(threshold=0)


def test_celeba_loader_reads_a_local_folder(tmp_path):
    """The CelebA loader on a tiny folder in CelebA's layout (never downloads)."""
    from PIL import Image

    images = tmp_path / "img_align_celeba"
    images.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(10):
        name = f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)).save(images / name)
        rows.append(f"{name} -1 {'1' if i % 2 else '-1'}")  # Smiling, Male
    (tmp_path / "list_attr_celeba.txt").write_text("10\nSmiling Male\n" + "\n".join(rows) + "\n")
    data = load_celeba_gender(tmp_path, image_size=16, test_fraction=0.2)
    assert data.x_train.shape == (8, 3, 16, 16) and data.x_test.shape == (2, 3, 16, 16)
    assert data.y_train.sum() + data.y_test.sum() == 5
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_celeba_gender(tmp_path / "missing")
