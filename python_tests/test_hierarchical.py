"""Hierarchical autoencoders + flows (paper 000 §2.1, Eq. 1-8): the log-likelihood terms,
the non-square Jacobian volume factor, training order, checkpoints, generation."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_ext._checkpoint import read_checkpoint
from manifold_ext.flows import HierarchicalFlow, dequantize, fit, jacobian_log_volume, log_volume_factor
from manifold_ext.flows.hierarchical import downsample, downsample_log_volume, total_log_prob

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _small_model(**overrides) -> HierarchicalFlow:
    config = dict(levels=3, latent_channels=2, ae_hidden=8, flow_steps=2, flow_hidden=8)
    config.update(overrides)
    return HierarchicalFlow(**config)


def test_log_volume_factor_is_log_det_for_square_and_half_log_det_jjt_for_wide():
    square = torch.randn(3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(log_volume_factor(square), torch.linalg.slogdet(square).logabsdet)
    wide = torch.randn(3, 4, 9, dtype=torch.float64)
    expected = 0.5 * torch.logdet(wide @ wide.transpose(1, 2))
    torch.testing.assert_close(log_volume_factor(wide), expected)
    torch.testing.assert_close(log_volume_factor(wide), torch.linalg.svdvals(wide).log().sum(-1))
    torch.testing.assert_close(log_volume_factor(wide.float()), expected.float(), rtol=1e-5, atol=1e-4)
    rank_deficient = wide.clone()
    rank_deficient[:, 1] = rank_deficient[:, 0]
    assert torch.all(log_volume_factor(rank_deficient) < -20)  # -inf or a tiny singular value's log


def test_downsampling_log_volume_closed_form_matches_the_jacobian():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    generic = jacobian_log_volume(downsample, x)
    closed = downsample_log_volume(3 * 4 * 4)  # -D log 2 with D coarse values
    torch.testing.assert_close(generic, torch.full((2,), closed, dtype=torch.float64))


def test_encoder_log_volume_matches_autograd_jacobian():
    model = _small_model().double()
    ae = model.autoencoders[0]
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    values = jacobian_log_volume(ae.encode, x)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda xb: ae.encode(xb.unsqueeze(0)).flatten(), x[b]).reshape(32, 64)
        torch.testing.assert_close(values[b], 0.5 * torch.logdet(jac @ jac.T), rtol=1e-9, atol=1e-9)


def test_log_prob_terms_follow_eq_5_to_8():
    torch.manual_seed(0)
    model = _small_model().double().eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) - 0.5
    terms = model.log_prob_terms(x)
    pyramid = model.pyramid(x)
    assert [tuple(p.shape[2:]) for p in pyramid] == [(8, 8), (4, 4), (2, 2)]
    for i, t in enumerate(terms):
        y = model.autoencoders[i].encode(pyramid[i])
        cond = pyramid[i + 1] if i + 1 < model.levels else None
        latents, _ = model.flows[i](y, cond)
        z = torch.cat([latent.flatten(1) for latent in latents], 1)
        d = y[0].numel()
        assert z.shape[1] == d
        # Eq. 6 as printed: 1/2 log 2 pi + ||z||^2 / (2 d), the per-dimension NLL.
        torch.testing.assert_close(t.nll_per_dim, 0.5 * math.log(2 * math.pi) + z.square().sum(1) / (2 * d))
        torch.testing.assert_close(t.log_pz, -d * t.nll_per_dim)
        # Eq. 5: log p_Y(y) = log p_Z(z) + log|det J_g|, the flow's exact density.
        torch.testing.assert_close(t.log_py, model.flows[i].log_prob(y, cond).detach())
        # Eq. 7: + the encoder's volume factor.
        torch.testing.assert_close(t.log_px, t.log_py + jacobian_log_volume(model.autoencoders[i].encode, pyramid[i]))
        assert t.down_logdet == (0.0 if i == 0 else -pyramid[i][0].numel() * math.log(2))
    # Eq. 8: the sum over levels with the downsampling terms for j > 1.
    expected = sum(t.log_px for t in terms) - (16 + 4) * math.log(2)
    torch.testing.assert_close(total_log_prob(terms), expected)
    torch.testing.assert_close(model.log_prob(x), expected)
    no_ae = model.log_prob_terms(x, autoencoder_logdet=False)
    assert all(torch.all(t.ae_logdet == 0) for t in no_ae)


def test_generation_reconstruction_super_resolution_shapes():
    model = _small_model().eval()
    x = torch.rand(5, 1, 8, 8) - 0.5
    assert model.sample(3, temperature=0.7).shape == (3, 1, 8, 8)
    assert model.reconstruct(x).shape == (5, 1, 8, 8)
    assert model.super_resolve(downsample(x)).shape == (5, 1, 8, 8)
    assert model.super_resolve(downsample(downsample(x))).shape == (5, 1, 8, 8)
    generator = torch.Generator().manual_seed(3)
    a = model.super_resolve(downsample(x), temperature=0.0)
    b = model.super_resolve(downsample(x), temperature=0.0, generator=generator)
    torch.testing.assert_close(a, b)  # temperature 0: the mode of each level, deterministic


def test_bad_input_names_the_problem():
    model = _small_model()
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 1, 8, 8\], got \(2, 3, 8, 8\)"):
        model.log_prob(torch.randn(2, 3, 8, 8))
    with pytest.raises(
        ValueError, match=r"low-resolution size 3 must be image_size / 2\^k = 8 / 2\^k for 1 <= k < levels = 3"
    ):
        model.super_resolve(torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"low-resolution size 8 must be image_size / 2\^k"):
        model.super_resolve(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"image_size 12 must be divisible by 2\*\*levels = 8"):
        HierarchicalFlow(image_size=12, levels=3)


def test_fit_trains_in_order_with_atomic_resumable_checkpoints(tmp_path):
    """Autoencoders first (Eq. 4 MSE falls), then flows (the per-dimension NLL falls),
    checkpoints written atomically, and a second call resumes where the first stopped."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    levels = torch.tensor(load_digits().images[:512], dtype=torch.float32).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    prepare = lambda batch: dequantize(batch, 17, generator)  # noqa: E731
    model = _small_model()
    path = tmp_path / "hflow.pt"
    first = fit(
        model,
        levels,
        autoencoder_steps=100,
        flow_steps=30,
        batch_size=64,
        dequantize_fn=prepare,
        checkpoint=path,
        checkpoint_every=20,
        progress=False,
    )
    assert len(first.autoencoder_losses) == 100 and len(first.flow_losses) == 30
    assert sum(first.autoencoder_losses[-10:]) < 0.5 * sum(first.autoencoder_losses[:10])
    assert sum(first.flow_losses[-10:]) < sum(first.flow_losses[:10]) - 1.0
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    saved = read_checkpoint(path)[0]
    assert saved["phase"] == "done" and saved["step"] == 30
    # The autoencoders were frozen while the flows trained: their weights are those saved after phase 1.
    resumed = _small_model()
    second = fit(
        resumed,
        levels,
        autoencoder_steps=100,
        flow_steps=40,
        batch_size=64,
        dequantize_fn=prepare,
        checkpoint=path,
        progress=False,
    )
    assert second.autoencoder_losses == first.autoencoder_losses  # phase 1 not repeated
    assert second.flow_losses[:30] == first.flow_losses and len(second.flow_losses) == 40
    for a, b in zip(resumed.autoencoders.parameters(), model.autoencoders.parameters()):
        torch.testing.assert_close(a, b)


class _Interrupted(Exception):
    pass


def test_fit_resumes_after_interruptions_in_either_phase(tmp_path):
    """Interrupted during the autoencoder phase, then during the flow phase before its first
    checkpoint: each call resumes from the last atomic checkpoint and training completes."""
    from sklearn.datasets import load_digits

    levels = torch.tensor(load_digits().images[:256], dtype=torch.float32).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)

    def interrupting(after_calls: int):
        calls = {"n": 0}

        def prepare(batch):
            calls["n"] += 1
            if calls["n"] > after_calls:
                raise _Interrupted
            return dequantize(batch, 17, generator)

        return prepare

    path = tmp_path / "hflow.pt"
    kwargs = dict(
        autoencoder_steps=30, flow_steps=20, batch_size=32, checkpoint=path, checkpoint_every=10, progress=False
    )
    with pytest.raises(_Interrupted):
        fit(_small_model(levels=2), levels, dequantize_fn=interrupting(15), **kwargs)
    saved = read_checkpoint(path)[0]
    assert (saved["phase"], saved["step"], len(saved["autoencoder_losses"])) == ("autoencoder", 10, 10)
    # 20 more autoencoder steps, the flows' ActNorm initialisation, then 5 flow steps.
    with pytest.raises(_Interrupted):
        fit(_small_model(levels=2), levels, dequantize_fn=interrupting(20 + 1 + 5), **kwargs)
    saved = read_checkpoint(path)[0]
    assert (saved["phase"], saved["step"], saved["optimiser"]) == ("flow", 0, None)
    model = _small_model(levels=2)
    result = fit(model, levels, dequantize_fn=interrupting(10**6), **kwargs)
    assert len(result.autoencoder_losses) == 30 and len(result.flow_losses) == 20
    assert read_checkpoint(path)[0]["phase"] == "done"
    assert all(bool(m.initialized) for m in model.modules() if hasattr(m, "initialized"))
