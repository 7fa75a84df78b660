"""Fine-tuning: artefacts, resume, block replacement, context 1, clipping, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import xarray as xr
from transformer_lens import HookedTransformer
from typer.testing import CliRunner

from cli.main import app
from dtlens.errors import DtlensError
from dtlens.model.backbones import random_backbone, save_backbone
from dtlens.model.checkpoint import load_model
from dtlens.model.config import MINI
from dtlens.train import loop
from dtlens.train.loop import train
from dtlens.train.run import Run
from tests.conftest import TINY, tiny_train_config

runner = CliRunner()


def test_tiny_run_writes_every_artefact(hopper_file, tmp_path):
    run = train(tiny_train_config(hopper_file), tmp_path / "run", progress=False)
    assert run.epochs() == [0, 1, 2]
    cfg = json.loads((run.path / "config.json").read_text())
    assert set(cfg) >= {"train", "model", "data", "dtlens_version"}
    assert len(cfg["data"]["state_mean"]) == 11
    ds = xr.open_dataset(run.path / "metrics.nc")
    assert ds.sizes == {"step": 6, "epoch": 2}
    for var in (
        "loss",
        "lr",
        "grad_norm",
        "clip_coef",
        "action_error",
        "return_mean",
        "score_mean",
    ):
        assert np.isfinite(ds[var].values).all(), var
    np.testing.assert_allclose(ds["lr"].values[:2], [5e-5, 1e-4])  # warm-up over 2 steps
    probe = run.probe_batch()
    assert probe.states.shape == (6, 4, 11)
    # Epoch 0 is the model before any update; later epochs differ.
    w0 = run.load_model(0).backbone.blocks[0].attn.W_Q
    w2 = run.load_model(2).backbone.blocks[0].attn.W_Q
    assert not torch.equal(w0, w2)


def test_resume_after_a_crash_equals_uninterrupted(hopper_file, tmp_path, monkeypatch):
    cfg = tiny_train_config(hopper_file, epochs=3, eval_episodes=0)
    full = train(cfg, tmp_path / "full", progress=False)

    calls = {"n": 0}
    real_save = loop._save_epoch

    def crash_in_epoch_3(out, model, *args, **kwargs):
        calls["n"] += 1
        real_save(out, model, *args, **kwargs)
        if calls["n"] == 2:  # epoch 2 written, then the process "dies" during epoch 3
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(loop, "_save_epoch", real_save)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)

    a, b = full.load_model(3).state_dict(), resumed.load_model(3).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    la = xr.open_dataset(full.path / "metrics.nc")["loss"].values
    lb = xr.open_dataset(resumed.path / "metrics.nc")["loss"].values
    np.testing.assert_array_equal(la, lb)


def count_backbone_builds(monkeypatch) -> list[int]:
    """A list that grows by one each time a HookedTransformer is constructed."""
    built: list[int] = []
    init = HookedTransformer.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(HookedTransformer, "__init__", counting_init)
    return built


def test_progress_off_a_terminal_is_a_line_per_epoch(hopper_file, tmp_path, capsys):
    cfg = tiny_train_config(hopper_file, epochs=2, eval_episodes=1, eval_every=2)
    cfg = cfg.replace(heldout="mini/hopper-medium-heldout")
    name = "a-run-whose-line-is-longer-than-eighty-columns"  # one line still: no wrapping
    train(cfg, tmp_path / name, progress=True)  # pytest's captured output is not a terminal
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith(f"{name}: ")]
    steps = cfg.steps_per_epoch
    assert len(lines) == 2
    assert lines[0].startswith(f"{name}: epoch 1/2 ({steps:,} steps) action error")
    assert "(held-out 0." in lines[0] and len(lines[0]) > 80
    assert "return" not in lines[0] and "return" in lines[1]


@pytest.mark.parametrize(
    "changes, most",
    [
        ({"init": "text"}, 1),  # the DT's own backbone, loading the file's weights
        ({"init": "random"}, 2),  # the random source, then the DT's
        ({"init": "random", "replace_block": 1, "donor": "text"}, 2),
    ],
)
def test_training_builds_the_backbone_at_most_twice(
    hopper_file, tmp_path, monkeypatch, changes, most
):
    """Sources give (spec, weights); the DT is built once and never saved and reloaded."""
    cfg = tiny_train_config(hopper_file, size=MINI, epochs=1, eval_episodes=0, **changes)
    built = count_backbone_builds(monkeypatch)
    train(cfg, tmp_path / "run", progress=False)
    assert len(built) <= most <= 2


def test_config_json_of_the_flat_layout_still_loads(hopper_file, tmp_path):
    """Runs written when TrainConfig held the DT options flat (max_ep_len, resid_dropout, ...
    at the top of config.json's "train") load, resume and compare as before."""
    cfg = tiny_train_config(hopper_file, epochs=1, eval_episodes=0, dt={"padding": "released"})
    run = train(cfg, tmp_path / "run", progress=False)
    config = json.loads((run.path / "config.json").read_text())
    flat = {k: v for k, v in config["train"].items() if k != "dt"}
    flat |= {k: v for k, v in config["train"]["dt"].items() if k not in ("action_tanh", "dt_init")}
    assert "resid_dropout" in flat and "padding" in flat
    (run.path / "config.json").write_text(json.dumps(config | {"train": flat}))
    assert Run(run.path).train_config == cfg
    resumed = train(cfg.replace(epochs=2), run.path, resume=True, progress=False)
    assert resumed.last_epoch() == 2


def test_replace_block_zero_really_replaces_block_zero(hopper_file, tmp_path):
    donor = random_backbone(TINY, seed=123)
    donor_path = save_backbone(donor, tmp_path / "donor.safetensors")
    cfg = tiny_train_config(hopper_file, replace_block=0, donor=str(donor_path), epochs=1)
    run = train(cfg, tmp_path / "swap", progress=False)
    dt0 = run.load_model(0)
    for name, p in donor.blocks[0].named_parameters():
        torch.testing.assert_close(dict(dt0.backbone.blocks[0].named_parameters())[name], p)
    base = random_backbone(TINY, seed=cfg.seed)
    torch.testing.assert_close(dt0.backbone.blocks[1].attn.W_Q, base.blocks[1].attn.W_Q)
    assert not torch.equal(dt0.backbone.blocks[1].attn.W_Q, donor.blocks[1].attn.W_Q)


def test_context_one_trains_on_single_timestep_windows(hopper_file, tmp_path, monkeypatch):
    seen = []
    real = loop.action_loss

    def spy(model, batch):
        seen.append(batch.states.shape[1])
        return real(model, batch)

    monkeypatch.setattr(loop, "action_loss", spy)
    train(tiny_train_config(hopper_file, context_len=1, epochs=1), tmp_path / "k1", progress=False)
    assert seen and set(seen) == {1}


def test_no_clip_leaves_gradients_unclipped_but_logs_the_norm(hopper_file, tmp_path, monkeypatch):
    grads = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads.append(
            torch.cat(
                [
                    p.grad.flatten()
                    for g in self.param_groups
                    for p in g["params"]
                    if p.grad is not None
                ]
            )
            .norm()
            .item()
        )
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    cfg = tiny_train_config(hopper_file, grad_clip=None, epochs=1, lr=1e-2)
    run = train(cfg, tmp_path / "noclip", progress=False)
    ds = xr.open_dataset(run.path / "metrics.nc")
    np.testing.assert_allclose(ds["grad_norm"].values, grads, rtol=1e-5)
    assert (ds["clip_coef"].values == 1).all()
    assert max(grads) > 0.25  # would have been clipped at the paper's 0.25

    grads.clear()
    run = train(
        tiny_train_config(hopper_file, epochs=1, lr=1e-2), tmp_path / "clip", progress=False
    )
    ds = xr.open_dataset(run.path / "metrics.nc")
    assert max(grads) <= 0.25 + 1e-5 and ds["grad_norm"].values.max() > 0.25


def test_cli_train_and_bad_input(hopper_file, tmp_path):
    args = [
        "train",
        "--dataset",
        str(hopper_file),
        "--epochs",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--context",
        "3",
        "--eval-episodes",
        "1",
        "--eval-max-steps",
        "5",
        "--layers",
        "1",
        "--d-model",
        "16",
        "--heads",
        "2",
    ]
    out = tmp_path / "cli"
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "normalized score" in res.output and "steps/s" in res.output
    before = (out / "checkpoints" / "epoch-0001.safetensors").read_bytes()

    cases = [
        ([*args, "--out", str(out)], "already exists"),
        ([*args, "--out", str(out), "--resume", "--seed", "1"], "another config"),
        ([*args, "--out", str(tmp_path / "x"), "--init", "nope"], "unknown init"),
        (
            [*args, "--out", str(tmp_path / "y"), "--replace-block", "5", "--donor", "random"],
            "out of range",
        ),
        (
            [*args, "--out", str(tmp_path / "z"), "--dataset", str(tmp_path / "missing.hdf5")],
            "missing.hdf5",
        ),
    ]
    for argv, message in cases:
        res = runner.invoke(app, argv)
        assert res.exit_code == 1, (argv, res.output)
        assert message in res.output and "Traceback" not in res.output, res.output
    assert (out / "checkpoints" / "epoch-0001.safetensors").read_bytes() == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".*"))  # no partial folder, lock or temporary file left


def test_dataset_that_does_not_fit_the_env(hopper_file, tmp_path):
    from dtlens.data import read_d4rl, write_d4rl

    arrays = read_d4rl(hopper_file).arrays()
    arrays["observations"] = arrays["observations"][:, :7]
    arrays.pop("next_observations", None)
    bad = write_d4rl(tmp_path / "bad.hdf5", arrays, {"env_id": "Hopper-v5"})
    with pytest.raises(DtlensError, match="observations"):
        train(tiny_train_config(bad), tmp_path / "run", progress=False)


def test_checkpoint_loading_checks_config(hopper_file, tmp_path):
    run = train(
        tiny_train_config(hopper_file, epochs=1, eval_episodes=0), tmp_path / "r", progress=False
    )
    other = run.dt_config.replace(act_dim=4)
    with pytest.raises(DtlensError, match="act_dim: 4 != 3"):
        load_model(run.checkpoint_path(1), expected=other)
    with pytest.raises(DtlensError, match=r"no checkpoint for epoch\(s\) \[7\]"):
        Run(run.path).load_model(7)


def test_config_differences_ignore_what_a_continued_run_may_change():
    from dtlens.train.config import TrainConfig

    base = TrainConfig()
    assert base.differences(base.replace(epochs=80, device="cuda")) == []
    assert base.differences(base.replace(seed=1, lr=3e-4)) == ["lr", "seed"]
    dt = dataclasses.replace(base.dt, dt_init="gpt2")
    assert base.differences(base.replace(dt=dt)) == ["dt_init"]


def test_heldout_windows_log_their_action_error_each_epoch(hopper_file, tmp_path):
    from dtlens.data import load_dataset
    from dtlens.data.windows import probe_batch

    cfg = tiny_train_config(hopper_file, heldout="mini/hopper-medium-heldout", eval_episodes=0)
    run = train(cfg, tmp_path / "run", progress=False)
    logged = xr.open_dataset(run.path / "metrics.nc").heldout_action_error.values
    assert logged.shape == (2,) and np.isfinite(logged).all()
    # the last epoch's value is the final model's error on the held-out windows, in eval mode
    dataset = load_dataset(hopper_file)
    windows = loop.heldout_windows(cfg, dataset)
    assert len(windows) == loop.HELDOUT_WINDOWS
    model = run.load_model(2).train()
    error = loop.heldout_error(model, windows, "cpu", chunk=100)
    assert error == pytest.approx(logged[-1], rel=1e-5)
    assert loop.heldout_error(model, windows, "cpu") == pytest.approx(error, rel=1e-5)  # no dropout
    assert model.training  # left as it was found
    own = probe_batch(dataset, loop.HELDOUT_WINDOWS, cfg.context_len, cfg.probe_seed)
    assert loop.heldout_error(model, own, "cpu") != pytest.approx(error, rel=1e-2)  # other data
    with pytest.raises(DtlensError, match="--heldout mini/halfcheetah-medium-heldout: HalfCheetah"):
        train(cfg.replace(heldout="mini/halfcheetah-medium-heldout"), tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
