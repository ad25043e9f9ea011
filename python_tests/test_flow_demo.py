"""The ``manifold-ext demo flow`` reproduction (quick mode) and the local image-set loaders."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from manifold_ext.cli import main
from manifold_ext.datasets import find_local_image_set, load_celeba_folder, load_cifar10_folder

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_flow_demo_quick(tmp_path):
    assert main(["demo", "flow", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for name in ("loglik_hist", "samples", "superres", "training"):
        assert (tmp_path / f"flow_{name}.png").stat().st_size > 10_000
    assert (tmp_path / "hierarchical.pt").exists()
    in_name = summary["in_distribution"]
    # Real outcomes, even after a short run: uniform noise is far less likely than digits
    # under every score, and the in-distribution test set scores highest on average.
    glow = summary["glow"]
    assert 1.0 < glow["bits_per_dim"][in_name] < 6.0
    assert glow["ood_auroc_log_p"]["uniform noise"] > 0.95
    hier = summary["hierarchical"]
    for quantity in ("log p(z)", "log p(y)", "log p(x)"):
        assert hier["ood_auroc"][quantity]["uniform noise"] > 0.95
        means = hier["mean_nats"][quantity]
        assert means[in_name] == max(means.values())
    assert hier["final_autoencoder_mse"] < 0.03
    # The hierarchical super-resolution keeps the low-resolution input (its decoder is conditioned on it).
    sr = summary["super_resolution"]
    assert sr["hierarchical"]["mse_of_downsampled_to_input"] < sr["bilinear_upsampling"]["mse_of_downsampled_to_input"]
    # Fig. 2 rows: one AUROC per model, quantity and OOD set (the paper shows histograms only: paper = None)
    rows = {row["id"]: row for row in summary["paper_comparison"]}
    assert rows["000-fig2-hierarchical-log-pz-uniform-noise"]["ours"] == hier["ood_auroc"]["log p(z)"]["uniform noise"]
    assert rows["000-fig2-glow-log-px-held-out-classes"]["ours"] == glow["ood_auroc_log_p"]["held-out classes"]
    assert len(rows) == 4 * 4 and all(row["paper"] is None for row in rows.values())
    assert summary["run"]["seconds"] > 0


def test_flow_demo_needs_the_local_folder_for_real_images(tmp_path):
    with pytest.raises(SystemExit, match="--dataset cifar10: not found under --data-root"):
        main(["demo", "flow", "--quick", "--dataset", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path)])


def test_local_loaders_read_cifar10_pickles_and_image_folders(tmp_path):
    from PIL import Image

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (7, 3072), dtype=np.uint8)
    with open(cifar / "test_batch", "wb") as handle:
        pickle.dump({b"data": data, b"labels": list(range(7))}, handle)
    faces = tmp_path / "img_align_celeba"
    faces.mkdir()
    for k in range(3):
        Image.fromarray(np.full((218, 178, 3), 40 * k, dtype=np.uint8)).save(faces / f"{k:06d}.jpg")

    assert find_local_image_set(tmp_path, "cifar10") == cifar
    assert find_local_image_set(tmp_path, "celeba") == faces
    assert find_local_image_set(tmp_path / "nothing", "celeba") is None
    images = load_cifar10_folder(tmp_path, "test")
    assert images.shape == (7, 3, 32, 32)
    assert torch.equal(images[0].flatten().to(torch.uint8), torch.from_numpy(data[0]))
    celeba = load_celeba_folder(tmp_path, size=16)
    assert celeba.shape == (3, 3, 16, 16) and celeba.min() >= 0 and celeba.max() <= 255
    assert abs(celeba[2].mean().item() - 80) < 2  # JPEG of a flat image stays flat
    with pytest.raises(FileNotFoundError, match="expected the CIFAR-10 python batches"):
        load_cifar10_folder(tmp_path, "train")


def test_bench_glow_quick_runs_ours_and_eager(tmp_path):
    assert (
        main(
            [
                "bench",
                "glow",
                "--quick",
                "--impls",
                "eager,ours",
                "--rounds",
                "1",
                "--out",
                str(tmp_path),
                "--machine",
                "test",
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "test.json").read_text())["results"]
    assert {r["family"] for r in rows} == {"glow"} and len(rows) == 3
    for row in rows:
        assert row["ms"]["ours"] > 0 and row["ms"]["eager"] > 0
