"""``manifold_ext._training.train_loop``: the one training loop behind the library's model fits."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_ext._training import TrainingLog, cosine_schedule, train_loop


def _regression(seed: int = 0):
    """A linear least-squares problem and its step_loss (minibatches drawn from the generator passed in)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)

    def step_loss(step, generator):
        index = torch.randint(0, 256, (32,), generator=generator)
        residual = model(x[index]).squeeze(1) - y[index]
        return {"loss": residual.square().mean(), "max_abs_residual": residual.abs().max().detach()}

    return model, step_loss


def test_train_loop_fits_and_logs_every_step():
    model, step_loss = _regression()
    log = train_loop(model.parameters(), step_loss, steps=400, lr=0.05, seed=0, progress=False)
    assert isinstance(log, TrainingLog) and log.steps == 400
    assert len(log.loss) == 400 and len(log.metrics["max_abs_residual"]) == 400
    assert log.recent_mean() < 1e-3 < log.loss[0]
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[1.0, -2.0, 0.5]]), atol=0.02, rtol=0)


def test_train_loop_is_reproducible_from_its_seed():
    runs = []
    for _ in range(2):
        model, step_loss = _regression()
        runs.append(train_loop(model.parameters(), step_loss, steps=50, lr=0.05, seed=3, progress=False).loss)
    assert runs[0] == runs[1]
    model, step_loss = _regression()
    other = train_loop(model.parameters(), step_loss, steps=50, lr=0.05, seed=4, progress=False).loss
    assert other != runs[0]


def test_train_loop_checkpoint_hook_runs_every_k_steps_and_at_the_end():
    model, step_loss = _regression()
    calls = []
    train_loop(
        model.parameters(),
        step_loss,
        steps=25,
        lr=0.01,
        seed=0,
        progress=False,
        checkpoint=lambda step, optimiser: calls.append((step, type(optimiser).__name__)),
        checkpoint_every=10,
    )
    assert calls == [(10, "Adam"), (20, "Adam"), (25, "Adam")]


def test_train_loop_clips_gradients():
    weight = torch.nn.Parameter(torch.zeros(2))
    seen = []

    def step_loss(step, generator):
        return (1000.0 * weight).sum()

    def record(step, optimiser):
        seen.append(weight.grad.norm().item())

    train_loop([weight], step_loss, steps=1, lr=0.1, clip_grad_norm=1.0, progress=False, checkpoint=record)
    assert seen[0] == pytest.approx(1.0, rel=1e-5)


def test_cosine_schedule_with_and_without_warmup():
    for warmup in (0, 5):
        optimiser = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = cosine_schedule(optimiser, 20, min_lr_fraction=0.1, warmup_steps=warmup)
        rates = []
        for _ in range(20):
            rates.append(optimiser.param_groups[0]["lr"])
            optimiser.step()
            schedule.step()
        rates.append(optimiser.param_groups[0]["lr"])
        assert rates[-1] == pytest.approx(0.1, abs=1e-9)  # decays to min_lr_fraction of the rate
        if warmup:
            assert rates[0] == pytest.approx(0.2) and rates[4] == pytest.approx(
                0.5 * (1 + math.cos(math.pi * 4 / 20)) * 0.9 + 0.1
            )
        else:
            assert rates[0] == pytest.approx(1.0)


def test_train_loop_rejects_bad_arguments():
    model, step_loss = _regression()
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        train_loop(model.parameters(), step_loss, steps=0, lr=0.1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train_loop(model.parameters(), step_loss, steps=1, lr=-1.0)
    with pytest.raises(ValueError, match="seed or generator, not both"):
        train_loop(model.parameters(), step_loss, steps=1, lr=0.1, seed=0, generator=torch.Generator())
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_loop([frozen], step_loss, steps=1, lr=0.1)
