"""Verified checkpoints (manifold_ext._checkpoint) and the resumes built on them (issue 13 items 6 and 9).

Every failure must raise one CheckpointError naming the file and what is wrong, and leave the file on
disk and the caller's objects exactly as they were.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from manifold_ext import _checkpoint as ckpt
from manifold_ext._checkpoint import CheckpointError
from manifold_ext.diffusion import (
    PointEpsNet,
    TrainConfig,
    linear_schedule,
    load_checkpoint,
    save_checkpoint,
    train_eps_model,
)
from manifold_ext.diffusion.toy_data import point_set

pytestmark = pytest.mark.usefixtures("one_thread")


def _file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state_copy(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_untouched(module: nn.Module, before: dict) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# ---------------------------------------------------------------------------
# The container: what every corrupted or foreign file gives
# ---------------------------------------------------------------------------
def _written(tmp_path):
    path = tmp_path / "c.ckpt"
    ckpt.write_checkpoint(path, {"weights": torch.arange(1000.0), "note": "hello"}, {"kind": "test", "n": 3})
    return path


def test_round_trip_and_header(tmp_path):
    path = _written(tmp_path)
    payload, meta = ckpt.read_checkpoint(path)
    assert torch.equal(payload["weights"], torch.arange(1000.0)) and payload["note"] == "hello"
    assert meta == {"kind": "test", "n": 3}
    assert ckpt.read_meta(path) == meta
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("where", ["payload", "header", "magic"])
def test_a_flipped_byte_is_refused(tmp_path, where):
    path = _written(tmp_path)
    blob = bytearray(path.read_bytes())
    header_end = len(ckpt.MAGIC) + 8 + int.from_bytes(blob[len(ckpt.MAGIC) : len(ckpt.MAGIC) + 8], "little")
    position = {"payload": len(blob) - 3000, "header": header_end - 5, "magic": 2}[where]
    blob[position] ^= 0x01
    path.write_bytes(bytes(blob))
    before = _file_digest(path)
    expected = {
        "payload": "content hash mismatch",
        "header": "content hash mismatch|unreadable header",
        "magic": "not a manifold_ext checkpoint",
    }[where]
    with pytest.raises(CheckpointError, match=expected) as error:
        ckpt.read_checkpoint(path)
    assert str(path) in str(error.value)
    assert _file_digest(path) == before


@pytest.mark.parametrize("keep", [0, 5, 30, 60, -1])
def test_truncated_and_empty_files(tmp_path, keep):
    path = _written(tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[:keep] if keep >= 0 else blob[:-1])
    expected = "empty" if keep == 0 else "truncated"
    with pytest.raises(CheckpointError, match=expected):
        ckpt.read_checkpoint(path)


def test_foreign_and_missing_files(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"ema": {}}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a manifold_ext checkpoint.*plain torch\.save"):
        ckpt.read_checkpoint(plain)
    text = tmp_path / "notes.txt"
    text.write_text("just some text that is long enough\n")
    with pytest.raises(CheckpointError, match="not a manifold_ext checkpoint: it starts with b'just"):
        ckpt.read_checkpoint(text)
    with pytest.raises(CheckpointError, match="no such file"):
        ckpt.read_checkpoint(tmp_path / "absent.ckpt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        ckpt.read_checkpoint(tmp_path)
    # Trailing bytes after a valid file: refused too.
    path = _written(tmp_path)
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(CheckpointError, match="5 unexpected bytes after the payload"):
        ckpt.read_checkpoint(path)


def test_payload_must_be_plain_data(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['fn'\] is a builtin_function_or_method; only tensors"):
        ckpt.write_checkpoint(tmp_path / "x.ckpt", {"fn": print}, {"kind": "test"})
    with pytest.raises(TypeError, match="no NaN/inf"):
        ckpt.write_checkpoint(tmp_path / "x.ckpt", {}, {"kind": "test", "v": float("nan")})
    assert not (tmp_path / "x.ckpt").exists()


def test_require_match_names_the_differing_field(tmp_path):
    saved = {"model": {"config": {"hidden": 128, "layers": 3}}, "schedule": {"betas": [0.1, 0.2, 0.3]}}
    ckpt.require_match("f.ckpt", saved, {"model": {"config": {"hidden": 128, "layers": 3}}})
    with pytest.raises(
        CheckpointError,
        match=r"f\.ckpt: model\.config\.hidden differs: the file has 128, "
        r"this call has 64",
    ):
        ckpt.require_match("f.ckpt", saved, {"model": {"config": {"hidden": 64, "layers": 3}}})
    with pytest.raises(CheckpointError, match=r"schedule\.betas\[1\] differs: the file has 0\.2, this call has 0\.25"):
        ckpt.require_match("f.ckpt", saved, {"schedule": {"betas": [0.1, 0.25, 0.3]}})
    with pytest.raises(CheckpointError, match=r"schedule\.betas \(length\) differs: the file has 3, this call has 2"):
        ckpt.require_match("f.ckpt", saved, {"schedule": {"betas": [0.1, 0.2]}})
    with pytest.raises(CheckpointError, match=r"differs: the file has True, this call has 1"):
        ckpt.require_match("f.ckpt", {"flag": True}, {"flag": 1})


def test_require_fields_match_compares_only_the_named_fields_of_one_section():
    meta = {"model": {"class": "Net", "config": {"hidden": 128}, "parameters": 10}, "kind": "train"}
    run = {"model": {"class": "Net", "config": {"hidden": 128}, "parameters": 99}}
    ckpt.require_fields_match("f.ckpt", meta, run, "model", ("class", "config"), "start afresh")  # count ignored
    run["model"]["config"] = {"hidden": 64}
    with pytest.raises(CheckpointError, match=r"model\.config\.hidden differs: the file has 128, .*; start afresh"):
        ckpt.require_fields_match("f.ckpt", meta, run, "model", ("class", "config"), "start afresh")
    with pytest.raises(CheckpointError, match=r"schedule\.T differs: the file has None, this call has 10"):
        ckpt.require_fields_match("f.ckpt", meta, {"schedule": {"T": 10}}, "schedule", ("T",))


def test_state_dict_check_runs_before_anything_is_copied(tmp_path):
    """PyTorch's load_state_dict copies matching tensors, then raises: ours refuses first."""
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 3))
    before = _state_copy(model)
    other = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 5)).state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"model weight '1.weight' is \[5, 4\] torch.float32 in the file, "
        r"\[3, 4\] torch.float32 in this model",
    ):
        ckpt.load_weights("f.ckpt", model, other)
    _assert_untouched(model, before)
    with pytest.raises(CheckpointError, match=r"missing \['1.bias'\]"):
        ckpt.load_weights("f.ckpt", model, {k: v for k, v in model.state_dict().items() if k != "1.bias"})
    _assert_untouched(model, before)


class MyEps(nn.Module):
    """A user's own eps-network: no .config."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t.float()[:, None] / 10], 1))


def test_save_checkpoint_of_a_users_own_model(tmp_path):
    """save_checkpoint accepts any module; loading needs an instance (the file cannot rebuild it)."""
    schedule = linear_schedule(10)
    model = MyEps()
    path = tmp_path / "mine.ckpt"
    save_checkpoint(path, model, schedule, note="mine")
    with pytest.raises(
        CheckpointError,
        match=r"holds a MyEps without a manifold_ext constructor config.*"
        r"pass model=<a MyEps instance>",
    ):
        load_checkpoint(path)
    fresh = MyEps()
    loaded, loaded_schedule, payload = load_checkpoint(path, model=fresh)
    assert loaded is fresh and payload["note"] == "mine"
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(loaded_schedule.betas, schedule.betas)
    wider = MyEps(width=16)
    before = _state_copy(wider)
    with pytest.raises(CheckpointError, match=r"model weight 'net.0.weight' is \[8, 3\]"):
        load_checkpoint(path, model=wider)
    _assert_untouched(wider, before)
    with pytest.raises(CheckpointError, match=r"model\.class differs"):
        load_checkpoint(path, model=PointEpsNet(hidden=8, T=10))


def test_load_checkpoint_checks_model_and_schedule_before_loading(tmp_path):
    schedule = linear_schedule(10)
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, PointEpsNet(hidden=16, T=10), schedule)
    other = PointEpsNet(hidden=32, T=10)
    before = _state_copy(other)
    with pytest.raises(CheckpointError, match=r"model\.config\.hidden differs: the file has 16, this call has 32"):
        load_checkpoint(path, model=other)
    _assert_untouched(other, before)
    with pytest.raises(CheckpointError, match=r"schedule\.T differs: the file has 10, this call has 20"):
        load_checkpoint(path, schedule=linear_schedule(20))
    with pytest.raises(CheckpointError, match=r"schedule\.betas\[0\] differs"):
        load_checkpoint(path, schedule=linear_schedule(10, beta_start=2e-4))
    with pytest.raises(CheckpointError, match="holds a 'test' checkpoint, not a diffusion model"):
        load_checkpoint(_written(tmp_path))


# ---------------------------------------------------------------------------
# Resuming diffusion training: refuse anything that is not this run
# ---------------------------------------------------------------------------
@pytest.fixture()
def finished_run(tmp_path):
    schedule = linear_schedule(20)
    data = point_set("swiss_roll", 256)
    config = TrainConfig(steps=12, batch_size=32, checkpoint_every=6)
    path = tmp_path / "train.ckpt"
    torch.manual_seed(0)
    model, losses = train_eps_model(
        PointEpsNet(hidden=16, T=20), data, schedule, config, checkpoint=path, progress=False
    )
    return path, schedule, data, config, model, losses


def _fresh(hidden=16, T=20):
    torch.manual_seed(1)
    return PointEpsNet(hidden=hidden, T=T)


@pytest.mark.parametrize(
    "change,message",
    [
        ("architecture", r"model\.config\.hidden differs: the file has 16, this call has 24"),
        ("schedule", r"schedule\.betas\[0\] differs"),
        ("schedule_T", r"model\.config\.T differs: the file has 20, this call has 10"),
        ("fewer_steps", r"train\.steps differs: the file has 12, this call has 6"),
        ("more_steps", r"train\.steps differs: the file has 12, this call has 30"),
        ("lr", r"train\.lr differs: the file has 0\.002, this call has 0\.001"),
        ("seed", r"train\.seed differs: the file has 0, this call has 5"),
        ("data", r"data\.sha256 differs"),
        ("data_size", r"data\.shape\[0\] differs: the file has 256, this call has 128"),
    ],
)
def test_resume_refuses_a_different_run_and_touches_nothing(finished_run, change, message):
    path, schedule, data, config, _, _ = finished_run
    kwargs = dict(schedule=schedule, data=data, config=config, model=_fresh())
    if change == "architecture":
        kwargs["model"] = _fresh(hidden=24)
    elif change == "schedule":
        kwargs["schedule"] = linear_schedule(20, beta_start=2e-4)
    elif change == "schedule_T":
        kwargs["schedule"], kwargs["model"] = linear_schedule(10), _fresh(T=10)
    elif change == "fewer_steps":
        kwargs["config"] = TrainConfig(steps=6, batch_size=32)
    elif change == "more_steps":
        kwargs["config"] = TrainConfig(steps=30, batch_size=32)
    elif change == "lr":
        kwargs["config"] = TrainConfig(steps=12, batch_size=32, lr=1e-3)
    elif change == "seed":
        kwargs["config"] = TrainConfig(steps=12, batch_size=32, seed=5)
    elif change == "data":
        kwargs["data"] = data + 0.001
    elif change == "data_size":
        kwargs["data"] = data[:128]
    before_file, before_model = _file_digest(path), _state_copy(kwargs["model"])
    with pytest.raises(CheckpointError, match=message) as error:
        train_eps_model(
            kwargs["model"], kwargs["data"], kwargs["schedule"], kwargs["config"], checkpoint=path, progress=False
        )
    assert str(path) in str(error.value) and "new checkpoint path" in str(error.value)
    assert _file_digest(path) == before_file
    _assert_untouched(kwargs["model"], before_model)


def test_resume_of_a_corrupted_file_touches_nothing(finished_run):
    path, schedule, data, config, _, _ = finished_run
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x10
    path.write_bytes(bytes(blob))
    before_file = _file_digest(path)
    model = _fresh()
    before_model = _state_copy(model)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        train_eps_model(model, data, schedule, config, checkpoint=path, progress=False)
    assert _file_digest(path) == before_file
    _assert_untouched(model, before_model)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(path)


def test_same_run_returns_the_finished_model_and_checkpoint_every_may_change(finished_run):
    path, schedule, data, config, model, losses = finished_run
    again, again_losses = train_eps_model(
        _fresh(), data, schedule, TrainConfig(steps=12, batch_size=32), checkpoint=path, progress=False
    )
    assert again_losses == losses
    for a, b in zip(again.parameters(), model.parameters()):
        assert torch.equal(a, b)
    loaded, _, _ = load_checkpoint(path)  # a training state loads as its EMA model
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_a_model_checkpoint_is_not_a_training_state(finished_run, tmp_path):
    _, schedule, data, config, model, _ = finished_run
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, model, schedule)
    with pytest.raises(CheckpointError, match="holds a 'diffusion.model' checkpoint, not a training state"):
        train_eps_model(_fresh(), data, schedule, config, checkpoint=path, progress=False)


# ---------------------------------------------------------------------------
# Hierarchical flows: the same rules for fit(checkpoint=...)
# ---------------------------------------------------------------------------
def test_hierarchical_fit_refuses_a_different_run(tmp_path):
    from manifold_ext.flows import HierarchicalFlow, fit

    data = torch.rand(64, 1, 8, 8)
    path = tmp_path / "hflow.ckpt"

    def small(**overrides):
        torch.manual_seed(0)
        return HierarchicalFlow(
            **{**dict(levels=2, latent_channels=2, ae_hidden=8, flow_steps=1, flow_hidden=8), **overrides}
        )

    kwargs = dict(autoencoder_steps=6, flow_steps=4, batch_size=16, checkpoint=path, progress=False)
    fit(small(), data, **kwargs)
    cases = [
        (dict(model=small(ae_hidden=12)), r"model\.config\.ae_hidden differs: the file has 8, this call has 12"),
        (dict(batch_size=8), r"fit\.batch_size differs: the file has 16, this call has 8"),
        (dict(data=data * 0.5), r"data\.sha256 differs"),
        (dict(autoencoder_steps=5), r"autoencoder_steps differs: the file finished the autoencoder phase after 6"),
        (dict(flow_steps=3), r"flow_steps differs: the file is at flow step 4, this call asks for 3 \(fewer"),
    ]
    for change, message in cases:
        model = change.pop("model", small())
        before_file, before_model = _file_digest(path), _state_copy(model)
        with pytest.raises(CheckpointError, match=message):
            fit(model, change.pop("data", data), **{**kwargs, **change})
        assert _file_digest(path) == before_file
        _assert_untouched(model, before_model)
    # A longer flow phase continues the same run (no learning-rate schedule depends on the length).
    longer = fit(small(), data, **{**kwargs, "flow_steps": 6})
    assert len(longer.flow_losses) == 6


def test_hierarchical_checkpoint_rebuilds_the_model(tmp_path):
    from manifold_ext.flows import HierarchicalFlow, fit
    from manifold_ext.flows.evaluate import load_model

    data = torch.rand(32, 1, 8, 8)
    path = tmp_path / "hflow.ckpt"
    torch.manual_seed(0)
    model = HierarchicalFlow(levels=2, latent_channels=2, ae_hidden=8, flow_steps=1, flow_hidden=8)
    fit(model, data, autoencoder_steps=3, flow_steps=2, batch_size=16, checkpoint=path, progress=False)
    rebuilt = load_model(path)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.log_prob(x), model.log_prob(x))
