"""Threshold-aware white-box attack (thesis 004 §4.8.5, Eq. 4.9) and fooling attack (§4.8.6, Eq. 4.10)
on the GMM classifier with rejection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manifold_ext.attacks import fooling_attack, patch_mask, threshold_aware_attack, whitebox_objective, whitebox_terms
from manifold_ext.vae.rae import GMMClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

OFFSET = 0.5  # the decoder's bias: g(0) is a mid-grey image


def _linear_model(*, calibrated: bool = True, seed: int = 0) -> GMMClassifier:
    """A 2-class GMM classifier on 8x8 images with a linear manifold: g(z) = W z + 0.5 and
    f(x) = W^+ (x - 0.5), so g(f(x)) is the projection of x onto the decoder's range and the
    reconstruction error is the squared distance to it. Centres (2, 0) and (0, 2); |W| is small
    enough that g maps the centres inside the pixel range [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(64, 2, generator=generator) / 16
    decoder = nn.Sequential(nn.Linear(2, 64), nn.Unflatten(1, (1, 8, 8)))
    decoder[0].weight.data.copy_(weight)
    decoder[0].bias.data.fill_(OFFSET)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    encoder[1].weight.data.copy_(torch.linalg.pinv(weight))
    encoder[1].bias.data.copy_(-torch.linalg.pinv(weight) @ torch.full((64,), OFFSET))
    centres = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    model = GMMClassifier((1, 8, 8), 2, centres=centres, likelihood="gaussian", encoder=encoder, decoder=decoder)
    if calibrated:
        model.precision.copy_(torch.tensor([[[2.0, 0.5], [0.5, 1.0]], [[1.0, -0.3], [-0.3, 3.0]]]))
        model.tau_enc, model.tau_dec = 3.0, 0.05
    return model.eval()


def _images_of(model: GMMClassifier, codes: list[list[float]], noise: float = 0.0, seed: int = 1) -> torch.Tensor:
    with torch.no_grad():
        images = model.decode_mean(torch.tensor(codes))
    generator = torch.Generator().manual_seed(seed)
    return (images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def test_whitebox_terms_and_objective_match_a_hand_computation():
    model = _linear_model()
    x = _images_of(model, [[1.8, 0.3], [0.4, 2.5], [1.0, 1.0]], noise=0.05)
    target = torch.tensor([1, 1, 0])
    recon_term, latent_term = whitebox_terms(model, x, target)
    # by hand, in float64: f(x) = W^+ (x - 0.5), g(z) = W z + 0.5
    weight = model.decoder[0].weight.detach().double()
    flat = x.flatten(1).double()
    codes = (flat - OFFSET) @ torch.linalg.pinv(weight).T
    error = (flat - (codes @ weight.T + OFFSET)).square().sum(1)
    expected_r = error / 0.05
    expected_m = []
    for code, t in zip(codes, target.tolist()):
        diff = model.centres[t].double() - code
        expected_m.append(diff @ model.precision[t].double() @ diff / 3.0)  # Sigma_t^{-1}, not Sigma_t
    torch.testing.assert_close(recon_term.double(), expected_r, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(latent_term.double(), torch.stack(expected_m), rtol=1e-4, atol=1e-6)
    assert expected_r.min() > 0.5  # the noise makes the reconstruction term non-trivial
    # the terms are the ones predict() thresholds: with the predicted class as target they agree
    verdict = model.predict(x)
    r_pred, m_pred = whitebox_terms(model, x, verdict["label"])
    torch.testing.assert_close(r_pred, verdict["recon_error"] / model.tau_dec)
    torch.testing.assert_close(m_pred, verdict["mahalanobis2"] / model.tau_enc)
    # Eq. 4.9 and Eq. 4.10
    eta = torch.full_like(x, 0.1)
    torch.testing.assert_close(
        whitebox_objective(model, x, target, eta=eta, a=3.0, b=1.5), recon_term.pow(3) + latent_term.pow(1.5) + 0.64
    )  # ||eta||^2 = 64 * 0.1^2
    torch.testing.assert_close(whitebox_objective(model, x, target), recon_term.square() + latent_term.square())


def test_threshold_aware_attack_lowers_its_objective_and_reaches_the_target():
    model = _linear_model()
    x = _images_of(model, [[2.0, 0.0], [1.8, 0.2], [0.1, 2.1], [0.0, 1.9]])
    target = torch.tensor([1, 1, 0, 0])
    assert model.predict(x)["label"].tolist() == [0, 0, 1, 1] and not model.predict(x)["rejected"].any()
    result = threshold_aware_attack(model, x, target, steps=300, lr=0.01, progress=False)
    assert (result.objective < result.objective_start).all()
    assert result.history[-1] < 0.1 * result.history[0]
    torch.testing.assert_close(result.objective_start, whitebox_objective(model, x, target, eta=torch.zeros_like(x)))
    torch.testing.assert_close(result.objective, whitebox_objective(model, result.x, target, eta=result.x - x))
    # on a linear manifold the attack stays on it and crosses over: every image fools and passes
    assert result.success.all() and result.fooled.all() and not result.rejected.any()
    assert (result.recon_term <= 1).all() and (result.latent_term <= 1).all()
    assert torch.equal(result.label, model.predict(result.x)["label"])
    torch.testing.assert_close(result.eta_l2, (result.x - x).flatten(1).norm(dim=1))
    assert torch.equal(result.start, x) and torch.equal(result.target, target)
    assert not any(p.grad is not None for p in model.parameters())  # only eta is optimised
    # the images are independent problems: the batch size changes nothing but rounding (which Adam's
    # normalised steps amplify where a gradient is near zero; a step is lr = 0.01)
    one_by_one = threshold_aware_attack(model, x, target, steps=300, lr=0.01, batch_size=1, progress=False)
    torch.testing.assert_close(one_by_one.x, result.x, atol=1e-3, rtol=0)
    empty = threshold_aware_attack(model, x[:0], target[:0], steps=3, progress=False)
    assert empty.x.shape == (0, 1, 8, 8) and empty.success.shape == (0,) and empty.eta_l2.shape == (0,)


def test_threshold_aware_attack_respects_mask_range_and_linf_budget():
    model = _linear_model()
    x = _images_of(model, [[2.0, 0.0], [0.0, 2.0], [1.5, 0.5]], noise=0.3, seed=3)
    target = torch.tensor([1, 0, 1])
    mask = patch_mask((8, 8), 2, 3, 3, 4)
    patched = threshold_aware_attack(model, x, target, steps=100, lr=0.05, mask=mask, progress=False)
    assert torch.equal(patched.x[:, :, ~mask], x[:, :, ~mask])  # outside the patch: exactly unchanged
    assert (patched.x[:, :, mask] != x[:, :, mask]).any()
    assert patched.x.min() >= 0 and patched.x.max() <= 1
    assert (patched.objective < patched.objective_start).all()
    bounded = threshold_aware_attack(model, x, target, steps=100, lr=0.05, eps=0.02, progress=False)
    assert (bounded.x - x).abs().max() <= 0.02 + 1e-6 and bounded.eta_linf.max() <= 0.02 + 1e-6
    assert bounded.x.min() >= 0 and bounded.x.max() <= 1
    both = threshold_aware_attack(model, x, target, steps=100, lr=0.05, eps=0.03, mask=mask, progress=False)
    assert torch.equal(both.x[:, :, ~mask], x[:, :, ~mask]) and (both.x - x).abs().max() <= 0.03 + 1e-6
    narrow = (0.3, 0.7)  # another pixel range: the images stay inside it
    inside = x.clamp(*narrow)
    ranged = threshold_aware_attack(model, inside, target, steps=100, lr=0.05, clip=narrow, progress=False)
    assert ranged.x.min() >= 0.3 - 1e-7 and ranged.x.max() <= 0.7 + 1e-7
    per_image = mask.expand(3, 1, 8, 8).clone()
    per_image[1] = patch_mask((8, 8), 0, 0, 2, 2)  # a different patch for the second image
    varied = threshold_aware_attack(model, x, target, steps=50, lr=0.05, mask=per_image, progress=False)
    assert torch.equal(varied.x[~per_image], x[~per_image])


def test_fooling_attack_starts_from_seeded_uniform_noise_and_is_deterministic():
    model = _linear_model()
    target = torch.tensor([0, 1, 0, 1, 1])
    first = fooling_attack(model, target, seed=7, steps=150, lr=0.05, progress=False)
    expected_start = torch.rand((5, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.start, expected_start)  # U(0, 1) noise from the seeded generator
    again = fooling_attack(model, target, seed=7, steps=150, lr=0.05, progress=False)
    assert torch.equal(again.x, first.x) and torch.equal(again.start, first.start)
    chunked = fooling_attack(model, target, seed=7, steps=150, lr=0.05, batch_size=2, progress=False)
    assert torch.equal(chunked.start, first.start)  # the noise is drawn before chunking
    torch.testing.assert_close(chunked.x, first.x, atol=1e-3, rtol=0)
    other = fooling_attack(model, target, seed=8, steps=150, lr=0.05, progress=False)
    assert not torch.equal(other.start, first.start)
    # Eq. 4.10 (no distance term) is lowered; uniform noise is far off the 2-D manifold, so it is rejected at
    # first and the attack pulls it onto the manifold near the target centre
    assert (first.objective < first.objective_start).all()
    torch.testing.assert_close(first.objective, whitebox_objective(model, first.x, target))
    assert model.predict(first.start)["rejected"].all()
    assert first.success.all() and torch.equal(first.label, target)
    assert first.x.min() >= 0 and first.x.max() <= 1
    torch.testing.assert_close(first.eta_l2, (first.x - first.start).flatten(1).norm(dim=1))
    init = torch.full((2, 1, 8, 8), 0.5)
    given = fooling_attack(model, torch.tensor([0, 1]), init=init, steps=20, progress=False)
    assert torch.equal(given.start, init)


def test_whitebox_attacks_bad_input_raises_clear_errors():
    model = _linear_model()
    x = _images_of(model, [[2.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([1, 0])
    uncalibrated = _linear_model(calibrated=False)
    with pytest.raises(
        ValueError,
        match=r"threshold_aware_attack: the model is not calibrated \(tau_enc = inf.*"
        r"call model.calibrate",
    ):
        threshold_aware_attack(uncalibrated, x, target, progress=False)
    with pytest.raises(ValueError, match="fooling_attack: the model is not calibrated"):
        fooling_attack(uncalibrated, target, progress=False)
    with pytest.raises(TypeError, match="must be a GMM classifier with rejection.*lacks"):
        threshold_aware_attack(nn.Linear(64, 2), x, target, progress=False)
    with pytest.raises(ValueError, match="exponent a must be a finite number > 1.*got 1.0"):
        threshold_aware_attack(model, x, target, a=1.0, progress=False)
    with pytest.raises(ValueError, match="exponent b must be a finite number > 1.*got 0.5"):
        fooling_attack(model, target, b=0.5, progress=False)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        threshold_aware_attack(model, x, target, steps=0, progress=False)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        threshold_aware_attack(model, x, target, lr=-0.1, progress=False)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        threshold_aware_attack(model, x, target, eps=-0.1, progress=False)
    with pytest.raises(ValueError, match=r"target must be \[B\] = \[2\].*got shape \(3,\)"):
        threshold_aware_attack(model, x, torch.tensor([0, 1, 1]), progress=False)
    with pytest.raises(ValueError, match=r"target must be \[B\] = \[2\].*got shape \(2, 1\)"):
        threshold_aware_attack(model, x, target[:, None], progress=False)
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        threshold_aware_attack(model, x, target.float(), progress=False)
    with pytest.raises(ValueError, match=r"target classes must be in 0..1, got values in \[0, 2\]"):
        threshold_aware_attack(model, x, torch.tensor([2, 0]), progress=False)
    with pytest.raises(ValueError, match="mask of shape \\(7, 8\\) does not fit"):
        threshold_aware_attack(model, x, target, mask=torch.ones(7, 8, dtype=torch.bool), progress=False)
    with pytest.raises(ValueError, match="mask selects no pixel"):
        threshold_aware_attack(model, x, target, mask=torch.zeros(8, 8, dtype=torch.bool), progress=False)
    with pytest.raises(ValueError, match=r"x must be a batch of images \[B, 1, 8, 8\].*got shape \(2, 1, 4, 16\)"):
        threshold_aware_attack(model, x.reshape(2, 1, 4, 16), target, progress=False)
    with pytest.raises(ValueError, match="outside the pixel range"):
        threshold_aware_attack(model, x + 2, target, progress=False)
    with pytest.raises(ValueError, match=r"fooling_attack: target must be \[N\] class indices"):
        fooling_attack(model, torch.tensor(1), progress=False)
    with pytest.raises(ValueError, match="init has 2 images but target has 3 entries"):
        fooling_attack(model, torch.tensor([0, 1, 0]), init=x, progress=False)
