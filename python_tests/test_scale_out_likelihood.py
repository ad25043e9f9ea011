"""Likelihood evaluation on a real Dask cluster (issue 19 items 2, 3, 5): a LocalCluster with 2 process
workers on loopback, started and closed by the fixture. Workers load the model from a checkpoint path;
the result equals the in-process run bit for bit, whatever the number of workers or tasks."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from manifold_ext._checkpoint import CheckpointError
from manifold_ext._distributed import local_cluster
from manifold_ext.cli import main
from manifold_ext.diffusion import PointEpsNet, linear_schedule, log_likelihood, save_checkpoint

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_client():
    with local_cluster(2) as client:
        yield client


@pytest.fixture(scope="module")
def eps_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = PointEpsNet(hidden=32, T=20).eval()
    nn.init.normal_(model.output.weight, std=0.1)
    path = tmp_path_factory.mktemp("scale_out") / "eps.ckpt"
    save_checkpoint(path, model, linear_schedule(20))
    return path


def test_likelihood_on_dask_equals_the_in_process_run(dask_client, eps_checkpoint):
    x0 = torch.randn(300, 2)
    kwargs = dict(rounds=4, seed=7, batch_size=256)
    local = log_likelihood(str(eps_checkpoint), x0, **kwargs)
    executor = dask_client.get_executor()
    for task_rows in (256, 512, 10_000):  # 5, 3 and 1 tasks over the 2 workers
        remote = log_likelihood(str(eps_checkpoint), x0, executor=executor, task_rows=task_rows, **kwargs)
        assert torch.equal(remote, local), task_rows
    estimate = log_likelihood(eps_checkpoint, x0, executor=executor, reduce="logmeanexp", dt=5, **kwargs)
    assert torch.equal(estimate, log_likelihood(eps_checkpoint, x0, reduce="logmeanexp", dt=5, **kwargs))
    assert len(dask_client.nthreads()) == 2


def test_dask_workers_refuse_a_changed_checkpoint(dask_client, tmp_path):
    torch.manual_seed(0)
    schedule = linear_schedule(10)
    path = tmp_path / "eps.ckpt"
    save_checkpoint(path, PointEpsNet(hidden=8, T=10), schedule)
    from manifold_ext.diffusion.likelihood import _Grid, _likelihood_task

    grid = _Grid(points=2, rounds=1, batch_rows=2, dt=1, seed=0, fused=True)
    task = {
        "checkpoint": str(path),
        "sha256": "0" * 64,
        "grid": grid,
        "row_start": 0,
        "row_stop": 2,
        "first_point": 0,
        "points": torch.randn(2, 2),
    }
    future = dask_client.submit(_likelihood_task, task, pure=False)
    with pytest.raises(CheckpointError, match="differs on this worker from the driver's file"):
        future.result()


def test_flow_log_prob_over_a_dataset_on_dask(dask_client, tmp_path):
    from manifold_ext.flows import HierarchicalFlow
    from manifold_ext.flows.evaluate import log_prob_dataset, save_model

    torch.manual_seed(0)
    model = HierarchicalFlow(levels=2, latent_channels=2, ae_hidden=8, flow_steps=1, flow_hidden=8).eval()
    with torch.no_grad():  # initialise ActNorm as a first training batch would
        model.flow_log_py(torch.rand(16, 1, 8, 8))
    path = tmp_path / "flow.ckpt"
    save_model(path, model)
    data = torch.rand(40, 1, 8, 8)
    local = log_prob_dataset(model, data, batch_size=8, autoencoder_logdet=False)
    with torch.no_grad():
        torch.testing.assert_close(local, model.log_prob(data, autoencoder_logdet=False).double())
    remote = log_prob_dataset(
        str(path), data, batch_size=8, executor=dask_client.get_executor(), task_rows=16, autoencoder_logdet=False
    )
    assert torch.equal(remote, local)
    with pytest.raises(TypeError, match="needs the model as a checkpoint path"):
        log_prob_dataset(model, data, executor=dask_client.get_executor())


def test_cli_likelihood_on_a_scheduler(dask_client, eps_checkpoint, tmp_path):
    out = tmp_path / "summary.json"
    args = [
        "likelihood",
        str(eps_checkpoint),
        "--data",
        "moons",
        "--points",
        "200",
        "--rounds",
        "3",
        "--seed",
        "1",
        "--batch-size",
        "128",
        "--task-rows",
        "256",
        "--out",
        str(out),
    ]
    assert main([*args, "--scheduler", dask_client.scheduler.address]) == 0
    remote = json.loads(out.read_text())
    assert main(args) == 0
    local = json.loads(out.read_text())
    assert remote["mean_log_p_bound"] == local["mean_log_p_bound"]
    assert remote["mean_log_p_estimate"] == local["mean_log_p_estimate"]
    assert remote["engine"].startswith("dask") and local["engine"] == "in-process"


def test_cli_scheduler_without_dask_says_how_to_install(eps_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'manifold_ext\[distributed\]'"):
        main(["likelihood", str(eps_checkpoint), "--points", "10", "--scheduler", "tcp://127.0.0.1:1"])


def test_cli_likelihood_on_a_local_process_pool(eps_checkpoint, tmp_path):
    out = tmp_path / "summary.json"
    values = tmp_path / "values.npy"
    args = [
        "likelihood",
        str(eps_checkpoint),
        "--data",
        "circle",
        "--points",
        "40",
        "--rounds",
        "2",
        "--seed",
        "3",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main([*args, "--workers", "1", "--values", str(values)]) == 0
    pooled = json.loads(out.read_text())
    assert main(args) == 0
    assert json.loads(out.read_text())["mean_log_p_estimate"] == pooled["mean_log_p_estimate"]
    assert pooled["engine"] == "process pool (1 workers)" and pooled["points"] == 40
    import numpy as np

    assert np.load(values).shape == (40, 2)
    with pytest.raises(ValueError, match="--workers must be >= 1, got 0"):
        main([*args, "--workers", "0"])
