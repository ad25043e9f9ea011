"""manifold_ext.vae (GridVAE, grid prior, RAE, GMM classifier), the two-digit datasets and the gridvae demo."""

from __future__ import annotations

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from manifold_ext.cli import main
from manifold_ext.datasets import load_mnist, two_digit_digits, two_digit_mnist
from manifold_ext.ops import closest_centre_kl
from manifold_ext.vae import (
    ConvDecoder,
    ConvEncoder,
    GridPrior,
    GridVAE,
    cluster_report,
    dimension_control,
    majority_map,
    purity,
    train_grid_vae,
)
from manifold_ext.vae.rae import RAE, ExPostGMM, GMMClassifier, train_autoencoder

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# Grid prior (Eq. 24)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_factorised_log_prob_equals_the_k_component_mixture(dim):
    prior = GridPrior(dim)
    z = torch.randn(200, dim) * 2 + 0.5
    torch.testing.assert_close(prior.log_prob(z), prior.log_prob_components(z), rtol=1e-5, atol=1e-5)
    assert prior.num_components == 6**dim and prior.centres().shape == (6**dim, dim)


def test_prior_grid_helpers():
    prior = GridPrior(2)
    assert (prior.spacing, prior.low, prior.high, prior.sigma) == (1.0, -2.0, 3.0, 1 / 3)
    z = torch.tensor([[-9.0, 0.4], [2.6, 3.49]])
    index = prior.nearest_index(z)
    assert index.tolist() == [[0, 2], [5, 5]]
    assert prior.coordinates(index).tolist() == [[-2.0, 0.0], [3.0, 3.0]]
    assert torch.equal(prior.centres()[prior.component_index(index)], prior.coordinates(index))
    samples = prior.sample(5000, torch.Generator().manual_seed(0))
    assert samples.shape == (5000, 2)
    assert (prior.nearest_index(samples).flatten().bincount(minlength=6) > 600).all()  # every row/column used
    with pytest.raises(ValueError, match="evenly spaced and increasing"):
        GridPrior(2, axis=(0, 1, 3))
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        GridPrior(2, sigma=0.0)
    with pytest.raises(ValueError, match=r"grid indices must be in 0..5"):
        prior.coordinates(torch.tensor([6]))


# ---------------------------------------------------------------------------
# GridVAE
# ---------------------------------------------------------------------------
def test_closest_kl_is_the_op_on_the_prior_grid():
    model = GridVAE((1, 8, 16), 2, kl="closest")
    mu, logvar = torch.randn(9, 2) * 2, torch.randn(9, 2) - 2
    expected, _ = closest_centre_kl(mu, logvar, sigma0=1 / 3, spacing=1.0, offset=-2.0, low=-2.0, high=3.0)
    torch.testing.assert_close(model.kl_divergence(mu, logvar), expected)
    target = torch.tensor([[1.0, -2.0]]).repeat(9, 1)
    expected_guided, _ = closest_centre_kl(mu, logvar, sigma0=1 / 3, target=target)
    torch.testing.assert_close(model.kl_divergence(mu, logvar, target=target), expected_guided)


def test_mc_kl_agrees_with_closest_centre_kl_near_a_centre():
    """Near a centre, the mixture is its one component weighted 1/K (neighbours weigh
    e^-4.5), so the Monte-Carlo estimate of Eq. 25 averages to Eq. 27's closed form + log K."""
    mc, closest = GridVAE((1, 8, 16), 2, kl="mc"), GridVAE((1, 8, 16), 2, kl="closest")
    mu = torch.tensor([[1.02, -0.99]]).repeat(20000, 1)
    logvar = torch.full_like(mu, math.log(0.1**2))
    z = mu + 0.1 * torch.randn_like(mu)
    estimate = mc.kl_divergence(mu, logvar, z).mean()
    exact = closest.kl_divergence(mu[:1], logvar[:1])[0] + math.log(36)
    assert -0.1 < exact - estimate < 0.1  # the neighbours add ~0.05 nats of prior mass
    # guided: the single component of the target, exactly as the op computes it
    target = torch.tensor([[1.0, 0.0]]).repeat(20000, 1)
    estimate = mc.kl_divergence(mu, logvar, z, target=target).mean()
    exact = closest.kl_divergence(mu[:1], logvar[:1], target=target[:1])[0]
    assert abs(estimate - exact) < 0.02 * exact


@pytest.mark.parametrize("kl", ["closest", "mc"])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_loss_backpropagates_to_encoder_and_decoder(kl, net):
    model = GridVAE((1, 8, 16), 2, kl=kl, net=net, hidden=8)
    x = torch.rand(4, 1, 8, 16)
    target, mask = torch.tensor([[0.0, 1.0]]).repeat(4, 1), torch.tensor([True, False])
    for kwargs in ({}, dict(target=target), dict(target=target, mask=mask)):
        out = model(x, **kwargs)
        assert out["recon"].shape == (4,) and out["kl"].shape == (4,) and torch.isfinite(out["loss"])
        model.zero_grad()
        out["loss"].backward()
        for part in (model.encoder, model.decoder):
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in part.parameters())


def test_traverse_sample_and_shapes():
    model = GridVAE((1, 28, 28), 3, net="conv", hidden=8)
    assert model.encode(torch.rand(2, 1, 28, 28))[0].shape == (2, 3)
    images = model.traverse(torch.zeros(3), dim=1, values=[-2, -1, 0, 1, 2, 3])
    assert images.shape == (6, 1, 28, 28) and (images >= 0).all() and (images <= 1).all()
    assert model.sample_at(torch.zeros(4, 3), per_centre=2).shape == (4, 2, 1, 28, 28)
    assert model.sample(5).shape == (5, 1, 28, 28)
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvEncoder((1, 8, 10), 4)
    with pytest.raises(ValueError, match="kl must be 'closest'"):
        GridVAE(kl="full")
    assert ConvDecoder(2, (1, 8, 16))(torch.zeros(3, 2)).shape == (3, 1, 8, 16)


def test_guided_training_places_attributes_on_their_centres():
    """Guided GridVAE (§4.2.2): the latent mean of each image sits in its attributes' grid cell."""
    train = two_digit_digits("train", per_class=40)
    test = two_digit_digits("test", per_class=15)
    torch.manual_seed(0)
    model = GridVAE(train.image_shape, 2, net="mlp", hidden=16)
    train_grid_vae(model, train.images, steps=500, lr=2e-3, attributes=train.attributes, progress=False)
    index = model.eval().cluster(test.images)
    assert (index == test.attributes).all(1).float().mean() > 0.6  # 36 classes: chance 0.028


def test_unsupervised_training_beats_chance_clustering_by_a_wide_margin():
    train = two_digit_digits("train", per_class=80)
    test = two_digit_digits("test", per_class=30)
    torch.manual_seed(0)
    model = GridVAE(train.image_shape, 2, net="mlp", hidden=16)
    train_grid_vae(model, train.images, steps=600, lr=2e-3, warmup_steps=60, progress=False)
    model.eval()
    tr, te = model.cluster(train.images), model.cluster(test.images)
    report = cluster_report(
        model.prior.component_index(tr), train.labels, model.prior.component_index(te), test.labels, 36
    )
    assert report["accuracy"] > 6 * report["chance_accuracy"], report
    assert report["nmi"] > 0.35, report


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------
def test_two_digit_digits():
    train, test = two_digit_digits("train", per_class=10), two_digit_digits("test", per_class=4)
    assert train.images.shape == (360, 1, 8, 16) and test.images.shape == (144, 1, 8, 16)
    assert train.images.min() >= 0 and train.images.max() <= 1
    assert torch.equal(train.labels.bincount(), torch.full((36,), 10))
    assert train.attributes.shape == (360, 2) and train.labels.max() == 35
    # each half is a real digit image of its label, and train and test halves never share an image
    digits = load_digits()
    bank = {
        tuple((img / 16.0).astype(np.float32).round(6).ravel()): label
        for img, label in zip(digits.images, digits.target)
    }
    halves = {}
    for split, data in (("train", train), ("test", test)):
        keys = set()
        for image, first, second in zip(data.images[:, 0].numpy(), data.first, data.second):
            left, right = tuple(image[:, :8].round(6).ravel()), tuple(image[:, 8:].round(6).ravel())
            assert bank[left] == first and bank[right] == second
            keys |= {left, right}
        halves[split] = keys
    assert not halves["train"] & halves["test"]
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        two_digit_digits("val")


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_from_a_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not download"):
        load_mnist(tmp_path)
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 60), ("t10k", 30)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    images, labels = load_mnist(tmp_path, "test")
    assert images.shape == (30, 28, 28) and images.max() <= 1 and labels.tolist() == [i % 10 for i in range(30)]
    pairs = two_digit_mnist(tmp_path, "train", per_class=2)
    assert pairs.images.shape == (72, 1, 28, 56) and pairs.labels.bincount().tolist() == [2] * 36


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def test_metrics_on_known_assignments():
    clusters, labels = [0, 0, 0, 1, 1, 2], [5, 5, 4, 3, 3, 3]
    assert majority_map(clusters, labels) == {0: 5, 1: 3, 2: 3}
    assert purity(clusters, labels) == pytest.approx(5 / 6)
    report = cluster_report(clusters, labels, [0, 1, 7], [5, 4, 3], num_classes=6)
    assert report["accuracy"] == pytest.approx(1 / 3) and report["occupied_centres"] == 3
    factors = torch.tensor([[a, b] for a in range(6) for b in range(6)] * 3)
    control = dimension_control(factors, factors, factors, factors)  # index = factors: perfect control
    assert control["best_dimension"] == [0, 1]
    assert control["accuracy"][0][0] == 1.0 and control["accuracy"][0][1] == pytest.approx(1 / 6)


# ---------------------------------------------------------------------------
# RAE with ex-post GMM, GMM classifier with rejection (thesis 004 ch. 3-4)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single_digits():
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_rae_ex_post_gmm_density_and_samples(single_digits):
    x_train, _, x_test, _ = single_digits
    torch.manual_seed(0)
    rae = RAE((1, 8, 8), 8, net="mlp", hidden=16)
    losses = train_autoencoder(rae, x_train, steps=400, progress=False)
    assert np.mean(losses[-50:]) < 0.7 * np.mean(losses[:50])
    gmm = ExPostGMM(n_components=10).fit(rae.embed(x_train))
    noise = torch.rand(200, 1, 8, 8)
    assert gmm.log_prob(rae.embed(x_test)).mean() > gmm.log_prob(rae.embed(noise)).mean() + 5
    samples = rae.decode_mean(gmm.sample(16))
    assert samples.shape == (16, 1, 8, 8) and (samples >= 0).all() and (samples <= 1).all()
    for regulariser in ("gp", "none"):
        out = RAE((1, 8, 8), 4, net="mlp", hidden=8, regulariser=regulariser)(x_train[:8])
        out["loss"].backward()
        assert torch.isfinite(out["loss"])


def test_gmm_classifier_classifies_and_rejects_noise(single_digits):
    x_train, y_train, x_test, y_test = single_digits
    torch.manual_seed(0)
    clf = GMMClassifier((1, 8, 8), 10, net="mlp", hidden=16)
    train_autoencoder(clf, x_train, y_train, steps=500, progress=False)
    thresholds = clf.calibrate(x_train, y_train, quantile=0.997)
    assert thresholds["tau_enc"] == pytest.approx(26.61, abs=0.02)  # chi-square 0.997 quantile, 10 dof
    clean = clf.predict(x_test)
    assert (clean["label"] == y_test).float().mean() > 0.85
    assert clean["rejected"].float().mean() < 0.35
    noise = clf.predict(torch.rand(300, 1, 8, 8))
    assert noise["rejected"].float().mean() > 0.95
    # The calibration (thresholds and class covariances) travels with the state_dict.
    reloaded = GMMClassifier((1, 8, 8), 10, net="mlp", hidden=16)
    assert not reloaded.calibrated
    reloaded.load_state_dict(clf.state_dict())
    assert reloaded.calibrated and reloaded.tau_enc == clf.tau_enc and reloaded.tau_dec == clf.tau_dec
    assert torch.equal(reloaded.predict(x_test)["rejected"], clean["rejected"])
    with pytest.raises(ValueError, match="one row per class"):
        GMMClassifier((1, 8, 8), 3, centres=torch.zeros(2, 2))


# ---------------------------------------------------------------------------
# GMM classifier: reclassification by decoder inversion (thesis 004 §4.7, Eq. 4.8)
# ---------------------------------------------------------------------------
class _ConstantCode(nn.Module):
    """An encoder fooled for every input: it always returns the same code."""

    def __init__(self, code: torch.Tensor):
        super().__init__()
        self.register_buffer("code", code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code.expand(x.shape[0], -1)


class _DoubleWellDecoder(nn.Module):
    """g(z) = f(z_1) v with f(s) = (s^2 - 4)^2 / 16 + 0.3 s: a local minimum of f near s = +2
    (f ~ 0.6) and the global one near s = -2 (f ~ -0.6), so Eq. 4.8 for the image
    f_min * v is solved exactly from s = -3 but gets stuck near s = +2 from s = +3."""

    def __init__(self):
        super().__init__()
        self.register_buffer("v", torch.linspace(0.2, 1.0, 64).view(1, 1, 8, 8))

    @staticmethod
    def f(s: torch.Tensor) -> torch.Tensor:
        return (s.square() - 4).square() / 16 + 0.3 * s

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.f(z[:, 0]).view(-1, 1, 1, 1) * self.v


def _linear_gmm(seed: int = 0) -> GMMClassifier:
    """Two classes, centres (3, 0) and (0, 3), a linear Gaussian decoder g(z) = W z (so Eq. 4.8 is
    least squares) and an encoder that always answers class 0's centre."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(64, 2, generator=generator) / 4
    decoder = nn.Sequential(nn.Linear(2, 64, bias=False), nn.Unflatten(1, (1, 8, 8)))
    decoder[0].weight.data.copy_(weight)
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    return GMMClassifier(
        (1, 8, 8), 2, centres=centres, likelihood="gaussian", encoder=_ConstantCode(centres[0]), decoder=decoder
    )


def test_reclassify_solves_least_squares_for_a_linear_decoder():
    model = _linear_gmm()
    weight = model.decoder[0].weight.detach()  # [64, 2]
    codes = torch.tensor([[2.6, 0.3], [0.2, 3.4], [4.0, -1.0], [-0.5, 2.0]])
    x = (codes @ weight.T).view(-1, 1, 8, 8) + 0.02 * torch.randn(4, 1, 8, 8)
    out = model.reclassify(x, steps=400, lr=0.05, reject=False, progress=False)
    exact = torch.linalg.lstsq(weight, x.flatten(1).T).solution.T  # argmin_z ||W z - x||^2
    torch.testing.assert_close(out["z"], exact, atol=2e-3, rtol=0)
    assert out["label"].tolist() == [0, 1, 0, 1]  # the nearest centre of z*, not the encoder's answer
    expected_error = (exact @ weight.T - x.flatten(1)).square().sum(1)
    torch.testing.assert_close(out["recon_error"], expected_error, atol=1e-4, rtol=1e-3)
    # the error is the one scores() reports and tau_dec thresholds: ||g(z*) - x||^2 of the decoder's mean
    torch.testing.assert_close(out["recon_error"], (model.decode_mean(out["z"]) - x).flatten(1).square().sum(1))
    # chunks are independent problems: the batch size changes the answer only by rounding
    one_by_one = model.reclassify(x, steps=400, lr=0.05, reject=False, batch_size=1, progress=False)
    torch.testing.assert_close(one_by_one["z"], out["z"], atol=1e-4, rtol=0)
    assert not any(p.grad is not None for p in model.parameters())  # only z is optimised
    empty = model.reclassify(x[:0], steps=3, reject=False, progress=False)
    assert empty["z"].shape == (0, 2) and empty["label"].shape == (0,) and empty["rejected"].shape == (0,)


def test_reclassify_multi_start_keeps_the_lowest_error_start():
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    decoder = _DoubleWellDecoder()
    model = GMMClassifier(
        (1, 8, 8), 2, centres=centres, likelihood="gaussian", encoder=_ConstantCode(centres[0]), decoder=decoder
    )
    grid = torch.linspace(-3, 3, 60001)
    f_min = decoder.f(grid).min()
    x = (f_min * decoder.v).repeat(3, 1, 1, 1)
    runs = {i: model.reclassify(x, starts=centres[i : i + 1], reject=False, progress=False) for i in range(2)}
    assert runs[0]["z"][:, 0].sub(2).abs().max() < 0.3  # stuck in the local minimum near +2 ...
    assert runs[0]["label"].eq(0).all() and runs[0]["recon_error"].min() > 1.0
    assert runs[1]["recon_error"].max() < 1e-4 and runs[1]["label"].eq(1).all()  # ... the other start is exact
    both = model.reclassify(x, reject=False, progress=False)  # default: every class centre
    assert both["start"].eq(1).all() and both["label"].eq(1).all()
    torch.testing.assert_close(both["recon_error"], torch.minimum(runs[0]["recon_error"], runs[1]["recon_error"]))
    torch.testing.assert_close(both["z"], runs[1]["z"])


def test_reclassify_rejection_semantics():
    model = _linear_gmm()
    weight = model.decoder[0].weight.detach()
    with pytest.raises(ValueError, match="not calibrated.*call calibrate"):
        model.reclassify(torch.zeros(2, 1, 8, 8), progress=False)
    model.tau_enc, model.tau_dec = 4.0, 0.5  # precision: identity, so mahalanobis2 = ||z* - mu||^2
    on_manifold = (torch.tensor([[3.5, 0.5], [0.0, 2.0]]) @ weight.T).view(-1, 1, 8, 8)
    far_code = (torch.tensor([[9.0, 0.0]]) @ weight.T).view(-1, 1, 8, 8)  # ||z* - mu_0||^2 = 36 > 4
    orthogonal = torch.randn(1, 64)
    orthogonal -= (orthogonal @ torch.linalg.pinv(weight).T) @ weight.T  # orthogonal to the decoder's range
    # g(mu_0) plus a norm-3 offset no code can explain: z* = mu_0 (accepted), error 9 > 0.5 (rejected)
    off_range = (model.centres[:1] @ weight.T + 3 * orthogonal / orthogonal.norm()).view(1, 1, 8, 8)
    x = torch.cat([on_manifold, far_code, off_range])
    out = model.reclassify(x, steps=400, progress=False)
    assert out["rejected_latent"].tolist() == [False, False, True, False]
    assert out["rejected_recon"].tolist() == [False, False, False, True]
    assert out["rejected"].tolist() == [False, False, True, True]
    assert out["label"].tolist() == [0, 1, 0, 0]
    assert out["mahalanobis2"][2] == pytest.approx(36.0, abs=0.05)
    assert out["recon_error"][3] == pytest.approx(9.0, abs=1e-3)
    kept = model.reclassify(x, steps=400, reject=False, progress=False)  # coverage: label everything (§4.7)
    assert not kept["rejected"].any() and not kept["rejected_latent"].any() and not kept["rejected_recon"].any()
    assert kept["label"].tolist() == out["label"].tolist()


def test_predict_with_defence_rejects_reclassifies_and_rejects_fooling_samples():
    model = _linear_gmm()
    weight = model.decoder[0].weight.detach()
    with pytest.raises(ValueError, match="predict_with_defence: the model is not calibrated"):
        model.predict_with_defence(torch.zeros(1, 1, 8, 8), progress=False)
    model.tau_enc, model.tau_dec = 4.0, 0.5
    class_0 = (model.centres[:1] @ weight.T).view(1, 1, 8, 8)  # the encoder is right: accepted as is
    class_1 = (torch.tensor([[0.3, 3.2]]) @ weight.T).view(1, 1, 8, 8)  # the encoder says 0: g(mu_0) is far
    fooling = torch.full((1, 1, 8, 8), 1.0)  # no code decodes to it
    x = torch.cat([class_0, class_1, fooling])
    assert (model.predict(x)["label"] == 0).all()
    out = model.predict_with_defence(x, steps=400, progress=False)
    assert out["initial_label"].tolist() == [0, 0, 0]
    assert out["rejected_initially"].tolist() == [False, True, True]
    assert out["reclassified"].tolist() == [False, True, True]
    assert out["label"][:2].tolist() == [0, 1]
    assert out["label_changed"][:2].tolist() == [False, True]
    assert out["rejected"].tolist() == [False, False, True]  # the fooling sample stays rejected
    covered = model.predict_with_defence(x, steps=400, reject_fooling=False, progress=False)
    assert covered["rejected"].tolist() == [False, False, False]
    every = model.predict_with_defence(x, steps=400, reclassify_all=True, progress=False)
    assert every["reclassified"].all() and every["label"][:2].tolist() == [0, 1]


def test_reclassify_bad_input_raises_clear_errors():
    model = _linear_gmm()
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        model.reclassify(x, steps=0, reject=False)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        model.reclassify(x, lr=0.0, reject=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        model.reclassify(x, batch_size=0, reject=False)
    with pytest.raises(ValueError, match=r"x must be a batch of images \[B, 1, 8, 8\].*got shape \(2, 64\)"):
        model.reclassify(x.flatten(1), reject=False)
    with pytest.raises(ValueError, match=r"x must be a batch of images .*got shape \(1, 8, 8\)"):
        model.reclassify(x[0], reject=False)
    with pytest.raises(TypeError, match="floating-point dtype"):
        model.reclassify(x.long(), reject=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.reclassify(torch.full_like(x, float("nan")), reject=False)
    with pytest.raises(ValueError, match=r"starts must be codes \[S, 2\]"):
        model.reclassify(x, starts=torch.zeros(2, 3), reject=False)
    with pytest.raises(ValueError, match="predict_with_defence: x must be a batch of images"):
        model.predict_with_defence(x[:, 0])


def test_gmm_logits_rank_like_nearest_centre(single_digits):
    x_train, y_train, x_test, _ = single_digits
    clf = GMMClassifier((1, 8, 8), 10, net="mlp", hidden=8)
    train_autoencoder(clf, x_train, y_train, steps=50, progress=False)
    logits = clf.logits(x_test[:64])
    assert logits.shape == (64, 10) and logits.requires_grad
    assert torch.equal(logits.argmax(1), clf.scores(x_test[:64])["label"])


# ---------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------
def test_gridvae_demo_quick(tmp_path):
    # quick mode with the fused closest-centre KL (Eq. 27); the full-mixture default needs the full run
    assert main(["demo", "gridvae", "--quick", "--kl", "closest", "--steps", "1000", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "grid_vae.png").stat().st_size > 20_000
    clusters = summary["clusters"]
    assert clusters["accuracy"] > 6 * clusters["chance_accuracy"]
    control = summary["dimension_control"]
    # each digit is predicted far above chance by some single latent dimension
    accuracy = control["accuracy[digit][dimension]"]
    assert max(accuracy[0]) > 2 * control["chance_accuracy"] and max(accuracy[1]) > 2 * control["chance_accuracy"]


def test_gridvae_demo_partial_guidance_compares_with_fig16(tmp_path):
    """§4.2's partially guided GridVAE (dimension 1 guided by the first digit, dimension 2 free): the summary says
    whether the free dimension learned the omitted second digit, i.e. whether Fig. 16's claim holds here."""
    assert (
        main(
            [
                "demo",
                "gridvae",
                "--quick",
                "--kl",
                "closest",
                "--guidance",
                "first",
                "--steps",
                "800",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    comparison = summary["fig16_comparison"]
    accuracy = summary["dimension_control"]["accuracy[digit][dimension]"]
    assert comparison["second_digit_accuracy_from_free_dimension"] == pytest.approx(accuracy[1][1], abs=1e-4)
    learned = comparison["free_dimension_learned_the_omitted_factor"]
    chance = summary["dimension_control"]["chance_accuracy"]
    assert learned == ("no" if accuracy[1][1] <= 1.5 * chance else "yes")  # no unsupervised reference in this run
    assert ("does NOT hold" in comparison["verdict"]) == (learned == "yes")
    assert accuracy[0][0] > 0.6  # the guided dimension carries the first digit
    ids = {row["id"] for row in summary["paper_comparison"]}
    assert ids == {
        "000-gridvae-partial-cluster-accuracy",
        "000-gridvae-partial-dim1-first-digit",
        "000-gridvae-partial-dim2-second-digit",
        "000-gridvae-partial-cell-second-digit",
    }
    # The cell refines dimension 2, but both accuracies are of majority maps on held-out images, so the cell's
    # is not bounded below by the dimension's (in this 800-step run both sit at chance, 1/6, and which is larger
    # flips with the last bits of training). What the summary must get right is the sentence it adds:
    from_cell = comparison["second_digit_accuracy_from_the_cell"]
    assert 0.0 <= from_cell <= 1.0
    locally = from_cell > 2 * max(accuracy[1][1], chance) and learned != "yes"
    assert ("Read from the grid cell" in comparison["verdict"]) == locally
    assert summary["run"]["seconds"] > 0
    assert (tmp_path / "grid_vae.png").stat().st_size > 20_000


@pytest.mark.parametrize("free, expected", [(0.2, "no"), (0.33, "partly"), (0.6, "yes")])
def test_fig16_verdict_is_graded_against_chance_and_the_unsupervised_model(free, expected):
    from manifold_ext.demos.grid_vae import _fig16_comparison

    def run(accuracy):
        return {
            "dimension_control": {
                "accuracy[digit][dimension]": accuracy,
                "chance_accuracy": 1 / 6,
                "accuracy[digit]_from_the_cell": [0.9, 0.8],
            }
        }

    comparison = _fig16_comparison(run([[0.9, 0.2], [0.3, free]]), run([[0.2, 0.7], [0.9, 0.17]]))
    assert comparison["free_dimension_learned_the_omitted_factor"] == expected
    assert comparison["second_digit_accuracy_unsupervised_best_dimension"] == 0.9
    assert ("does NOT hold" in comparison["verdict"]) == (expected == "yes")
    assert ("locally" in comparison["verdict"]) == (expected != "yes")  # the cell still carries the digit (0.8)
