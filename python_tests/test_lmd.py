"""Lift, Map, Detect (paper 001_…, Liu, Zhou and Weinberger): masks, inpainting, scores, demo."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from manifold_ext.analysis import checkerboard_mask, inpaint, lmd_scores
from manifold_ext.cli import main
from manifold_ext.diffusion import linear_schedule

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


class ExactGaussianEps(nn.Module):
    """The exact eps-prediction for data ~ N(mean, s^2 I): E[eps | x_t] (no training needed)."""

    def __init__(self, schedule, mean: torch.Tensor, std: float):
        super().__init__()
        self.abar = schedule.alphas_cumprod.float()
        self.register_buffer("mean", mean)
        self.std = std

    def forward(self, x, t):  # t: int64 [B] (the eps-net contract, manifold_ext.diffusion.models)
        a = self.abar.to(x.device)[t].view(-1, *[1] * (x.dim() - 1))
        var = a * self.std**2 + (1 - a)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mean) / var


def test_checkerboard_masks_alternate_and_cover_half():
    mask = checkerboard_mask(8, 8, 4)
    assert mask.dtype == torch.bool and mask.shape == (8, 8)
    assert mask.sum() == 32
    assert not mask[0, 0] and not mask[1, 1] and mask[0, 2] and mask[2, 0]  # 2x2 patches, top-left masked
    assert torch.equal(checkerboard_mask(8, 8, 4, flip=True), ~mask)
    assert checkerboard_mask(8, 8, 8).sum() == 32  # one-pixel patches
    with pytest.raises(ValueError, match="not divisible into 3x3 patches"):
        checkerboard_mask(8, 8, 3)
    with pytest.raises(ValueError, match="patches must be a positive integer"):
        checkerboard_mask(8, 8, 0)


def test_inpaint_keeps_known_pixels_and_fills_from_the_model():
    schedule = linear_schedule(20)
    mean = torch.full((1, 4, 4), 0.7)
    model = ExactGaussianEps(schedule, mean, std=0.05)
    images = torch.randn(6, 1, 4, 4)
    known = checkerboard_mask(4, 4, 2)
    generator = torch.Generator().manual_seed(0)
    out = inpaint(model, schedule, images, known, generator=generator)
    assert torch.equal(out[..., known], images[..., known])  # the last step merges the originals exactly
    # The unknown pixels are drawn from the model's data distribution N(0.7, 0.05^2).
    filled = out[..., ~known]
    assert (filled - 0.7).abs().mean() < 0.1
    # Reproducible with the same generator; other dt and resampling run.
    again = inpaint(model, schedule, images, known, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)
    coarse = inpaint(model, schedule, images, known, dt=5, resample=2, generator=generator)
    assert torch.equal(coarse[..., known], images[..., known])
    assert (coarse[..., ~known] - 0.7).abs().mean() < 0.1


def test_lmd_scores_separate_in_from_out_of_distribution():
    schedule = linear_schedule(20)
    mean = torch.zeros(1, 4, 4)
    model = ExactGaussianEps(schedule, mean, std=0.1)
    generator = torch.Generator().manual_seed(0)
    in_dist = 0.1 * torch.randn(16, 1, 4, 4, generator=generator)
    out_dist = in_dist + 1.0  # shifted off the model's manifold
    scores_in, dist_in = lmd_scores(model, schedule, in_dist, attempts=3, patches=2, generator=generator, batch_size=5)
    scores_out, _ = lmd_scores(model, schedule, out_dist, attempts=3, patches=2, generator=generator)
    assert dist_in.shape == (16, 3) and scores_in.shape == (16,)
    torch.testing.assert_close(scores_in, dist_in.quantile(0.5, dim=1))
    assert scores_out.min() > scores_in.max()
    _, _, recons = lmd_scores(model, schedule, in_dist[:2], attempts=2, patches=2, return_reconstructions=True)
    assert recons.shape == (2, 2, 1, 4, 4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, s, x: inpaint(m, s, x, checkerboard_mask(4, 4, 2).float()), "must be a bool mask"),
        (lambda m, s, x: inpaint(m, s, x, torch.ones(3, 3, dtype=torch.bool)), "does not broadcast"),
        (lambda m, s, x: inpaint(m, s, x, checkerboard_mask(4, 4, 2), dt=3), "dt must be a positive integer dividing"),
        (lambda m, s, x: inpaint(m, s, x, checkerboard_mask(4, 4, 2), resample=0), "resample must be"),
        (lambda m, s, x: lmd_scores(m, s, x[:, 0]), "images must be \\[N, C, H, W\\]"),
        (lambda m, s, x: lmd_scores(m, s, x, attempts=0), "attempts must be"),
        (lambda m, s, x: lmd_scores(m, s, x, patches=3), "not divisible"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    schedule = linear_schedule(20)
    model = ExactGaussianEps(schedule, torch.zeros(1, 4, 4), 0.1)
    with pytest.raises(ValueError, match=match):
        call(model, schedule, torch.zeros(2, 1, 4, 4))


def test_liftmap_demo_quick(tmp_path):
    assert main(["demo", "liftmap", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "liftmap.png").stat().st_size > 20_000
    lmd, log_p = summary["auroc"]["lmd"], summary["auroc"]["log_p"]
    assert set(lmd) == {"held-out classes", "flipped", "noised", "uniform noise"}
    # Even a barely trained model separates: uniform noise perfectly by both, and the
    # digit-like OOD sets above chance by LMD.
    assert lmd["uniform noise"] > 0.95 and log_p["uniform noise"] > 0.95
    assert lmd["held-out classes"] > 0.6 and lmd["flipped"] > 0.6
    rows = {row["id"]: row for row in summary["paper_comparison"]}
    assert rows["001-lmd-lmd-uniform-noise"]["ours"] == lmd["uniform noise"]
    assert rows["001-lmd-logp-held-out-classes"]["ours"] == log_p["held-out classes"]
    assert len(rows) == 8 and summary["run"]["seconds"] > 0
