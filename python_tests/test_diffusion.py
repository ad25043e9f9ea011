"""The diffusion Python layer: schedules, models, training, log_likelihood (Eq. 15), samplers, demos."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from manifold_ext._checkpoint import read_checkpoint
from manifold_ext.diffusion import (
    CheckpointError,
    PointEpsNet,
    SmallUNet,
    TrainConfig,
    cosine_schedule,
    linear_schedule,
    load_checkpoint,
    log_likelihood,
    log_mean_exp,
    make_schedule,
    sample,
    save_checkpoint,
    time_tensor,
    train_eps_model,
)
from manifold_ext.diffusion.samplers import SamplerDivergenceWarning
from manifold_ext.diffusion.toy_data import point_set

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------
# Gaussian data with the exact noise predictor: everything has a closed form
# ---------------------------------------------------------------------------
DATA_STD = 0.5


class ExactGaussianEps(nn.Module):
    """eps*(x_t, t) = E[eps | x_t] for x_0 ~ N(0, s^2 I): sqrt(1 - abar) x_t / (abar s^2 + 1 - abar).

    Written to the documented contract: ``t`` is a ``[B]`` tensor, int64 step indices (float32 fractional
    times from the probability-flow sampler, read here at the step below).
    """

    def __init__(self, schedule, s=DATA_STD):
        super().__init__()
        self.schedule, self.s = schedule, s
        self.times_seen = set()

    def forward(self, x, t):
        assert isinstance(t, torch.Tensor) and t.shape == (x.shape[0],), t
        assert t.dtype == torch.int64 or t.dtype == torch.float32, t.dtype
        self.times_seen.add(t.dtype)
        abar = self.schedule.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return torch.sqrt(1 - abar) * x / (abar * self.s**2 + 1 - abar)


def expected_chain_nll(x0: torch.Tensor, schedule, dt: int, s: float = DATA_STD) -> torch.Tensor:
    """E over the forward chain of Eq. 15's -log q(x_0) estimate, for the exact Gaussian eps, per point ([N])."""
    a = schedule.alphas_cumprod
    x2 = x0.double().square()  # [N, D]
    total = torch.zeros_like(x2)
    for t in range(0, schedule.T, dt):
        at, an = a[t].item(), a[t + dt].item()
        var_q = 1 - an / at
        var_p = (at - an) * (1 - at) / (at * (1 - an)) if at < 1 else var_q
        r = math.sqrt(an / at)
        k = math.sqrt(1 - an) / (an * s**2 + 1 - an)
        g = math.sqrt(at / an) - (at - an) / (math.sqrt(at * an) * math.sqrt(1 - an)) * k  # Eq. 19 mean = g x_next
        residual = (1 - g * r) ** 2 * (at * x2 + 1 - at) + g**2 * var_q
        total += (
            -0.5 * (math.log(2 * math.pi * var_q) + 1) + 0.5 * math.log(2 * math.pi * var_p) + residual / (2 * var_p)
        )
    aT = a[-1].item()
    total += 0.5 * (math.log(2 * math.pi) + aT * x2 + 1 - aT)  # -log p(x_T)
    return total.sum(1)


def true_log_density(x0: torch.Tensor, s: float = DATA_STD) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi * s**2) + x0.double().square() / s**2)).sum(1)


@pytest.mark.parametrize("dt", [1, 5, 20])
def test_log_likelihood_matches_closed_form_expectation(dt):
    """Eq. 15 exactly: the mean over rounds equals its closed-form expectation (within Monte Carlo error)."""
    schedule = linear_schedule(100)
    model = ExactGaussianEps(schedule)
    x0 = torch.randn(6, 2, dtype=torch.float64) * DATA_STD
    log_p = log_likelihood(model, x0, schedule, dt=dt, rounds=400, generator=torch.Generator().manual_seed(dt))
    assert log_p.shape == (6, 400) and log_p.dtype == torch.float64
    mean, standard_error = log_p.mean(1), log_p.std(1) / 400**0.5
    expected = -expected_chain_nll(x0, schedule, dt)
    assert ((mean - expected).abs() < 4.5 * standard_error + 1e-3).all(), (mean, expected, standard_error)


def test_log_likelihood_is_consistent_across_dt_and_rounds():
    """log-mean-exp over rounds approaches the true log density for every dt (importance weighting)."""
    schedule = linear_schedule(100)
    model = ExactGaussianEps(schedule)
    x0 = torch.randn(150, 2, dtype=torch.float64) * DATA_STD
    truth = true_log_density(x0).mean().item()
    generator = torch.Generator().manual_seed(0)
    for dt in (1, 2, 5, 10):
        log_p = log_likelihood(model, x0, schedule, dt=dt, rounds=64, generator=generator, batch_size=4096)
        assert abs(log_mean_exp(log_p).mean().item() - truth) < 0.2, dt
        # more rounds never hurt: the estimate with 64 rounds is closer than the single-round mean
        assert abs(log_mean_exp(log_p).mean().item() - truth) < abs(log_p.mean().item() - truth)


def test_log_likelihood_options():
    schedule = linear_schedule(20)
    model = ExactGaussianEps(schedule)
    x0 = torch.randn(7, 2) * DATA_STD

    def run(**kw):
        return log_likelihood(model, x0, schedule, dt=2, rounds=3, generator=torch.Generator().manual_seed(1), **kw)

    fused = run()
    torch.testing.assert_close(run(fused=False), fused)  # same noise, same numbers
    torch.testing.assert_close(run(log10=True), fused / math.log(10))
    streamed = run(batch_size=4)  # 21 rows in 6 batches
    assert streamed.shape == (7, 3) and torch.isfinite(streamed).all()
    assert log_likelihood(model, x0[:0], schedule, rounds=2).shape == (0, 2)
    one_step = log_likelihood(model, x0, schedule, dt=20)  # dt = T: a single pair (0, T)
    assert one_step.shape == (7, 1) and torch.isfinite(one_step).all()


def test_log_likelihood_bad_arguments():
    schedule = linear_schedule(10)
    model = ExactGaussianEps(schedule)
    x0 = torch.randn(3, 2)
    with pytest.raises(ValueError, match="dt must be a positive integer dividing T = 10, got 3"):
        log_likelihood(model, x0, schedule, dt=3)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        log_likelihood(model, x0, schedule, rounds=0)


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,dt,kwargs,tolerance",
    [
        ("ddpm", 1, {}, 0.06),
        ("ddpm", 10, {}, 0.06),
        # the posterior variance (Eq. 12; DDIM eta = 1) under-disperses N(0, s^2) data by ~7% at T = 100
        ("large_step", 1, {}, 0.1),
        ("large_step", 2, {}, 0.15),
        ("ddim", 5, {"eta": 0.5}, 0.2),
        # the paper's RK4 with g = DDPM over-disperses at dt = 5 (measured std 0.62 for s = 0.5)
        ("rk4", 5, {"rk4_step": "ddpm"}, 0.3),
    ],
)
def test_stochastic_samplers_reproduce_gaussian_data(method, dt, kwargs, tolerance):
    """With the exact eps of N(0, s^2) data, samples have standard deviation close to s."""
    schedule = linear_schedule(100)
    model = ExactGaussianEps(schedule)
    x = sample(model, schedule, (4000, 2), method=method, dt=dt, generator=torch.Generator().manual_seed(0), **kwargs)
    assert x.shape == (4000, 2) and torch.isfinite(x).all()
    assert abs(x.std().item() - DATA_STD) < tolerance * DATA_STD, x.std().item()
    assert abs(x.mean().item()) < 0.05


def test_large_step_is_ddim_with_eta_one():
    schedule = linear_schedule(100)
    model = ExactGaussianEps(schedule)
    x_T = torch.randn(50, 2)
    a = sample(model, schedule, (50, 2), method="large_step", dt=5, x_T=x_T, generator=torch.Generator().manual_seed(3))
    b = sample(
        model, schedule, (50, 2), method="ddim", eta=1.0, dt=5, x_T=x_T, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(a, b)


def test_deterministic_samplers_follow_the_probability_flow_and_rk4_beats_ddim_at_large_steps():
    """For N(0, s^2) data the probability-flow ODE maps x_T linearly: x_0 = x_T s / sqrt(abar_T s^2 + 1 - abar_T)."""
    schedule = linear_schedule(100)
    model = ExactGaussianEps(schedule)
    x_T = torch.randn(2000, 2)
    abar_T = schedule.abar(100)
    exact = x_T * DATA_STD / math.sqrt(abar_T * DATA_STD**2 + 1 - abar_T)
    error = {}
    for method, dt in [("ddim", 1), ("ddim", 10), ("rk4", 1), ("rk4", 10), ("pf_ode", 1), ("pf_ode", 10)]:
        x = sample(model, schedule, (2000, 2), method=method, dt=dt, x_T=x_T)
        error[method, dt] = (x - exact).abs().mean().item()
    assert error["ddim", 1] < 0.02 and error["rk4", 1] < 0.02 and error["pf_ode", 1] < 0.01, error
    # measured: ddim 0.10, rk4 0.001, pf_ode 0.003 at dt = 10 (10 steps)
    assert error["rk4", 10] < 0.01 and error["pf_ode", 10] < 0.01 and error["ddim", 10] > 0.05, error
    again = sample(model, schedule, (2000, 2), method="ddim", dt=10, x_T=x_T)
    assert (again - exact).abs().mean().item() == error["ddim", 10]


def test_a_diverging_sampler_warns_and_a_converging_one_does_not():
    """Issue 20.4: RK4 with one step of dt = T returned RMS ~1000 samples, all finite, without a word."""
    schedule = linear_schedule(100)
    model = ExactGaussianEps(schedule)
    generator = torch.Generator().manual_seed(0)
    with pytest.warns(
        SamplerDivergenceWarning,
        match=r"sampler rk4 \(g = ddim\) at dt = 100 diverged: the samples' "
        r"RMS is .* more than 10 x the RMS .* of the starting noise x_T .*use a smaller dt",
    ):
        x = sample(model, schedule, (2000, 2), method="rk4", dt=100, generator=generator)
    assert torch.isfinite(x).all() and x.std() > 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method, dt in [("rk4", 10), ("ddim", 100), ("ddpm", 1), ("pf_ode", 10)]:
            sample(model, schedule, (500, 2), method=method, dt=dt, generator=generator)


def test_non_finite_samples_warn():
    schedule = linear_schedule(10)

    class Exploding(nn.Module):
        def forward(self, x, t):
            return torch.full_like(x, float("inf"))

    with pytest.warns(
        SamplerDivergenceWarning,
        match=r"sampler ddim at dt = 1 diverged: 8 of 8 sample values are "
        r"not finite",
    ):
        sample(Exploding(), schedule, (4, 2), method="ddim")


def test_sampler_bad_arguments():
    schedule = linear_schedule(10)
    model = ExactGaussianEps(schedule)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample(model, schedule, (3, 2), method="euler")
    with pytest.raises(ValueError, match="dt must be a positive integer dividing T = 10, got 4"):
        sample(model, schedule, (3, 2), dt=4)
    with pytest.raises(ValueError, match="unknown step function 'heun'"):
        sample(model, schedule, (3, 2), method="rk4", rk4_step="heun")


# ---------------------------------------------------------------------------
# Schedules, models, training
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("factory", [linear_schedule, cosine_schedule])
@pytest.mark.parametrize("T", [1, 10, 100, 1000])
def test_schedules(factory, T):
    schedule = factory(T)
    abar = schedule.alphas_cumprod
    assert abar.shape == (T + 1,) and abar.dtype == torch.float64 and abar[0] == 1.0
    assert (abar[1:] < abar[:-1]).all() and abar[-1] > 0
    if T >= 10:
        assert abar[-1] < 1e-3  # fully diffused
        for t in (1, T // 3, T - 1):
            assert abs(schedule.time_at_sigma(schedule.sigma(t)) - t) < 1e-6


def test_schedule_validation():
    from manifold_ext.diffusion import NoiseSchedule

    with pytest.raises(ValueError, match=r"every beta must be in \(0, 1\).*got beta_3 = 0.0"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 0.2, 0.0]))
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'"):
        make_schedule("sigmoid", 10)
    with pytest.raises(ValueError, match="time step 11 outside 0..T = 0..10"):
        linear_schedule(10).abar(11)


def test_point_eps_net_shared_and_per_sample_times_agree():
    torch.manual_seed(0)
    model = PointEpsNet(hidden=32, T=100)
    for p in model.output.parameters():  # zero-initialised; give it weights
        nn.init.normal_(p)
    x = torch.randn(9, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 37), model(x, torch.full((9,), 37.0)))
        torch.testing.assert_close(model(x, 37), model(x, torch.full((9,), 37.0)))
    with torch.inference_mode():
        torch.testing.assert_close(model(x, 37), model(x, torch.full((9,), 37.0)))
    with pytest.raises(ValueError, match=r"t must be a number or a \[B\] = \[9\] tensor"):
        model(x, torch.ones(3))


@pytest.mark.parametrize("size,mults", [(8, (1, 2)), (32, (1, 2, 2))])
def test_small_unet_shapes_and_gradients(size, mults):
    model = SmallUNet(channels=3, base=16, channel_mults=mults, T=100)
    x = torch.randn(2, 3, size, size)
    out = model(x, torch.tensor([3.0, 70.0]))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model(x, 5).shape == x.shape


def test_unet_trains_on_small_images(tmp_path):
    schedule = linear_schedule(20)
    data = torch.randn(64, 1, 8, 8) * 0.3 + torch.linspace(-1, 1, 8)  # smooth ramps plus noise
    model, losses = train_eps_model(
        SmallUNet(1, base=8, T=20), data, schedule, TrainConfig(steps=20, batch_size=8, lr=3e-3), progress=False
    )
    assert sum(losses[-5:]) < sum(losses[:5])
    x = sample(model, schedule, (2, 1, 8, 8), method="ddim", dt=5)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_training_is_seeded_and_resumes_from_an_atomic_checkpoint(tmp_path):
    schedule = linear_schedule(20)
    data = point_set("swiss_roll", 512)
    config = TrainConfig(steps=20, batch_size=64, checkpoint_every=10)

    def fresh():
        torch.manual_seed(0)
        return PointEpsNet(hidden=16, T=20)

    reference, losses = train_eps_model(fresh(), data, schedule, config, progress=False)
    again, _ = train_eps_model(fresh(), data, schedule, config, progress=False)
    for a, b in zip(reference.parameters(), again.parameters()):
        assert torch.equal(a, b)

    class Interrupt(Exception):
        pass

    class CrashesAtCall15(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls, self.config = inner, 0, inner.config

        def forward(self, x, t):
            self.calls += 1
            if self.calls == 15:
                raise Interrupt
            return self.inner(x, t)

    path = tmp_path / "ckpt.pt"
    crashing = CrashesAtCall15(fresh())
    with pytest.raises(Interrupt):
        train_eps_model(crashing, data, schedule, config, checkpoint=path, progress=False)
    assert path.exists() and not (tmp_path / "ckpt.pt.tmp").exists()
    assert read_checkpoint(path)[0]["step"] == 10
    resumed_wrapper = CrashesAtCall15(fresh())
    resumed_wrapper.calls = 100  # no more crashes
    resumed, resumed_losses = train_eps_model(resumed_wrapper, data, schedule, config, checkpoint=path, progress=False)
    assert resumed_losses == losses
    for a, b in zip(resumed.inner.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)

    saved = tmp_path / "model.pt"
    save_checkpoint(saved, reference, schedule)
    loaded, loaded_schedule, _ = load_checkpoint(saved)
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded(x, 3), reference(x, 3))
    assert torch.equal(loaded_schedule.alphas_cumprod, schedule.alphas_cumprod)


# ---------------------------------------------------------------------------
# Conventions and traps (issue 20 item 4, issue 13 items 8-9)
# ---------------------------------------------------------------------------
def test_eps_network_gets_an_int64_time_tensor_everywhere():
    """Training, likelihood and every sampler call model(x, t) with t an int64 [B] tensor
    (pf_ode: float32, its times lie between steps); ExactGaussianEps asserts the shape."""
    schedule = linear_schedule(10)
    model = ExactGaussianEps(schedule)
    log_likelihood(model, torch.randn(5, 2), schedule, rounds=2, seed=0)
    assert model.times_seen == {torch.int64}
    for method in ("ddpm", "ddim", "large_step", "rk4"):
        sample(model, schedule, (4, 2), method=method, dt=2)
    assert model.times_seen == {torch.int64}
    sample(model, schedule, (4, 2), method="pf_ode", dt=5)
    assert model.times_seen == {torch.int64, torch.float32}

    class Recorder(PointEpsNet):
        def forward(self, x, t):
            assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.shape == (x.shape[0],)
            return super().forward(x, t)

    train_eps_model(
        Recorder(hidden=8, T=10), torch.randn(64, 2), schedule, TrainConfig(steps=2, batch_size=16), progress=False
    )


def test_time_tensor_is_one_shared_value():
    from manifold_ext.diffusion.models import shared_time

    t = time_tensor(7, 5, "cpu")
    assert t.shape == (5,) and t.dtype == torch.int64 and t.tolist() == [7] * 5 and shared_time(t)
    assert time_tensor(3.5, 2, "cpu").dtype == torch.float32
    assert time_tensor(np.int64(4), 2, "cpu").tolist() == [4, 4]
    assert not shared_time(torch.tensor([1, 1]))
    with pytest.raises(TypeError, match="t must be an integer, got the bool True"):
        time_tensor(True, 2, "cpu")


def test_model_built_for_another_T_is_refused():
    schedule = linear_schedule(100)
    model = PointEpsNet(hidden=8, T=1000)
    message = r"built for T = 1000 steps \(PointEpsNet\(T=1000\)\) but the schedule has T = 100"
    with pytest.raises(ValueError, match=message):
        log_likelihood(model, torch.randn(3, 2), schedule)
    with pytest.raises(ValueError, match=message):
        sample(model, schedule, (3, 2))
    with pytest.raises(ValueError, match=message):
        train_eps_model(model, torch.randn(8, 2), schedule, TrainConfig(steps=1, batch_size=4), progress=False)
    with pytest.raises(ValueError, match=message):
        save_checkpoint("unused.ckpt", model, schedule)


def test_sampling_device_follows_the_model():
    from manifold_ext.diffusion.models import model_device

    model = PointEpsNet(hidden=8, T=10)
    assert model_device(model) == torch.device("cpu") and model_device(nn.Identity()) == torch.device("cpu")
    x = sample(model, linear_schedule(10), (3, 2), dt=5)
    assert x.device == torch.device("cpu")


def test_schedule_prints_short_and_errors_show_full_precision():
    schedule = linear_schedule(100)
    text = repr(schedule)
    assert len(text) < 120 and "T=100" in text and "linear(T=100)" in text, text
    assert str(schedule) == text
    from manifold_ext.diffusion import NoiseSchedule

    # A beta that vanishes in 1 - beta leaves abar constant: the message prints both values exactly.
    with pytest.raises(ValueError, match=r"got abar_2 = 0\.9 >= abar_1 = 0\.9 \(beta_2 = 1e-17 is lost"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 1e-17], dtype=torch.float64))
    abar = torch.tensor([1.0, 0.9, 0.9000000000000001], dtype=torch.float64)
    bad = NoiseSchedule(betas=torch.tensor([0.1, 1e-16], dtype=torch.float64), alphas_cumprod=abar)
    with pytest.raises(ValueError, match=r"abar_2 = 0\.9000000000000001 >= abar_1 = 0\.9"):
        bad.validate()


def test_integer_arguments_reject_bools_and_floats_accept_numpy_ints():
    schedule = linear_schedule(10)
    assert schedule.check_dt(np.int64(5)) == [0, 5, 10] and schedule.abar(np.int32(3)) == schedule.abar(3)
    with pytest.raises(TypeError, match=r"dt \(a positive integer dividing T = 10\) must be an integer, got the bool"):
        schedule.check_dt(True)
    with pytest.raises(TypeError, match=r"must be an integer, got 2\.0 \(float\)"):
        schedule.check_dt(2.0)
    with pytest.raises(TypeError, match="time step t must be an integer, got the bool False"):
        schedule.abar(False)
    model = ExactGaussianEps(schedule)
    x0 = torch.randn(3, 2)
    assert log_likelihood(model, x0, schedule, rounds=np.int64(2), batch_size=np.int64(4), seed=0).shape == (3, 2)
    with pytest.raises(TypeError, match="rounds must be an integer, got the bool True"):
        log_likelihood(model, x0, schedule, rounds=True)
    with pytest.raises(TypeError, match=r"batch_size must be an integer, got 2\.5"):
        log_likelihood(model, x0, schedule, batch_size=2.5)
    with pytest.raises(TypeError, match="T must be an integer"):
        linear_schedule(10.0)
    with pytest.raises(TypeError, match="hidden must be an integer"):
        PointEpsNet(hidden=True)


def test_log_likelihood_refuses_integer_points():
    schedule = linear_schedule(10)
    with pytest.raises(TypeError, match=r"x0 must be a floating-point tensor .* got dtype torch\.int64"):
        log_likelihood(ExactGaussianEps(schedule), torch.ones(3, 2, dtype=torch.int64), schedule)
    with pytest.raises(ValueError, match=r"x0 must be \[N, \*\] with a batch dimension, got shape \[3\]"):
        log_likelihood(ExactGaussianEps(schedule), torch.ones(3), schedule)


def test_reduce_gives_the_estimate_or_the_bounds():
    schedule = linear_schedule(20)
    model = ExactGaussianEps(schedule)
    x0 = torch.randn(6, 2, dtype=torch.float64) * DATA_STD
    bounds = log_likelihood(model, x0, schedule, rounds=8, seed=3)
    assert bounds.shape == (6, 8)
    estimate = log_likelihood(model, x0, schedule, rounds=8, seed=3, reduce="logmeanexp")
    assert estimate.shape == (6,)
    torch.testing.assert_close(estimate, log_mean_exp(bounds), rtol=0, atol=0)
    torch.testing.assert_close(log_likelihood(model, x0, schedule, rounds=8, seed=3, reduce="mean"), bounds.mean(1))
    torch.testing.assert_close(
        log_likelihood(model, x0, schedule, rounds=8, seed=3, reduce="logmeanexp", log10=True), estimate / math.log(10)
    )
    assert (estimate >= bounds.mean(1)).all()  # Jensen: log-mean-exp >= mean
    with pytest.raises(ValueError, match="reduce must be one of 'none', 'logmeanexp', 'mean', got 'sum'"):
        log_likelihood(model, x0, schedule, reduce="sum")


def test_noise_depends_on_seed_and_position_not_on_batching():
    """The forward noise of a row comes from its block's generator: batch_size cannot change it. (The
    values agree to float64 rounding: the ops' SIMD loops and scalar tails may round the last bit
    differently when a row moves between them, 1e-13 here.)"""
    from manifold_ext.diffusion.likelihood import _BlockNoise

    schedule = linear_schedule(20)
    model = ExactGaussianEps(schedule)
    x0 = torch.randn(700, 2, dtype=torch.float64)
    reference = log_likelihood(model, x0, schedule, dt=2, rounds=3, seed=11, batch_size=4096)
    for batch_size in (1, 7, 1000, 1024, 2100):
        torch.testing.assert_close(
            log_likelihood(model, x0, schedule, dt=2, rounds=3, seed=11, batch_size=batch_size),
            reference,
            rtol=1e-12,
            atol=1e-12,
        )
    whole = _BlockNoise(11, 0, 2100, (2,), torch.float64, "cpu")
    draws = [whole() for _ in range(3)]
    for start, stop in [(0, 1), (5, 700), (1023, 1025), (2000, 2100)]:
        part = _BlockNoise(11, start, stop, (2,), torch.float64, "cpu")
        for draw in draws:
            assert torch.equal(part(), draw[start:stop])  # the noise itself: bit for bit
    other_seed = log_likelihood(model, x0, schedule, dt=2, rounds=3, seed=12)
    assert not torch.equal(other_seed, reference)
    # A seeded generator still gives reproducible results (it draws the seed).
    a = log_likelihood(model, x0, schedule, rounds=2, generator=torch.Generator().manual_seed(5))
    b = log_likelihood(model, x0, schedule, rounds=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # A prefix of the data gets the same noise: a row's noise depends on its index only.
    prefix = log_likelihood(model, x0[:300], schedule, dt=2, rounds=3, seed=11)
    torch.testing.assert_close(prefix, reference[:300], rtol=1e-12, atol=1e-12)


def test_likelihood_from_a_checkpoint_path_equals_the_module(tmp_path):
    schedule = linear_schedule(20)
    torch.manual_seed(0)
    model = PointEpsNet(hidden=16, T=20).eval()
    nn.init.normal_(model.output.weight, std=0.1)
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model, schedule)
    x0 = torch.randn(50, 2)
    direct = log_likelihood(model, x0, schedule, rounds=3, seed=1)
    assert torch.equal(log_likelihood(str(path), x0, rounds=3, seed=1), direct)
    with pytest.raises(CheckpointError, match=r"schedule\.T differs: the file has 20, this call has 10"):
        log_likelihood(path, x0, linear_schedule(10))
    with pytest.raises(TypeError, match="needs the model as a checkpoint path"):
        log_likelihood(model, x0, schedule, executor=object())
    with pytest.raises(TypeError, match="schedule is required"):
        log_likelihood(model, x0)


@pytest.mark.parametrize("rows", [1, 63, 1024, 1500, 5000])
def test_point_mlp_fast_path_equals_the_eager_layers(rows):
    """The chunked, oneDNN-backed shared-time path gives the eager layers' bits (or, where oneDNN's
    summation order differs from MKL's, agrees to float rounding)."""
    from manifold_ext.diffusion import _mlp

    torch.manual_seed(0)
    model = PointEpsNet(hidden=128, T=100).eval()
    nn.init.normal_(model.output.weight, std=0.1)
    x = torch.randn(rows, 2) * 1.5
    t = time_tensor(37, rows, "cpu")
    with torch.enable_grad():  # the eager path (the fast path is inference-only)
        eager = model(x, t).detach()
    with torch.inference_mode():
        fast = model(x, t)
    if _mlp.onednn_linear() is not None and rows > 1:
        assert torch.equal(fast, eager)
    else:
        torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, model(x, torch.full((rows,), 37.0)).detach(), rtol=1e-5, atol=1e-6)
