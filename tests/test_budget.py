"""Budgets, narrowing, checkpoint retention, the dry run's projections, and the GPU options'
logic (cluster choice, the missing-CUDA line, autocast and determinism), all on CPU."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from dtlens.diagnostics.contract import RunKey
from dtlens.errors import DtlensError
from dtlens.experiments import presets
from dtlens.experiments.budget import BUDGETS, apply_budget, get_budget
from dtlens.experiments.dry_run import FLOAT32, PlannedRun, StepTime
from dtlens.experiments.reproduce import plan
from dtlens.experiments.runs import Cluster, RunSpec, choose_cluster, local_cuda_cluster
from dtlens.model.config import PAPER_RANDOM
from dtlens.train.config import TrainConfig
from dtlens.train.device import check_device, cuda_missing_reason
from dtlens.train.loop import prune_checkpoints, train
from dtlens.train.precision import apply_determinism, autocast, autocast_dtype
from dtlens.train.run import Run
from tests.conftest import tiny_train_config

runner = CliRunner()


def paper_preset():
    return presets.paper("gpt2-dir", "imagegpt-dir", "d4rl-dir")


# -- budgets -------------------------------------------------------------------------------------
def test_full_budget_is_the_preset_itself():
    assert apply_budget(paper_preset(), get_budget("full")) == paper_preset()
    assert apply_budget(presets.mini(), BUDGETS["full"]) == presets.mini()


def test_smoke_budget_keeps_the_plan_and_shrinks_its_cost():
    full, smoke = paper_preset(), apply_budget(paper_preset(), get_budget("smoke"))
    t = smoke.train
    assert (t.epochs, t.steps_per_epoch, t.batch_size) == (1, 3, 4)
    assert (t.eval_episodes, t.eval_max_steps, t.eval_every) == (1, 10, 1)
    assert (t.context_len, t.lr, t.grad_clip) == (full.train.context_len, 1e-4, 0.25)
    assert smoke.attention_epochs == (0, 1) and smoke.gradient_epoch == 1
    assert smoke.block_swap_blocks == (0, 11)  # first and last of GPT-2's 12 blocks
    assert smoke.block_swap_epochs == {"hopper": 1, "halfcheetah": 1, "walker2d": 1}
    assert (smoke.probe_size, smoke.mi_samples, smoke.mi_seeds) == (8, 32, 1)
    assert (smoke.gradient_samples, smoke.gradient_confusion_samples) == (2, 2)
    assert smoke.inits == full.inits and smoke.datasets == full.datasets
    assert smoke.block_swap_size == full.block_swap_size


def test_budget_never_raises_a_preset_above_its_own_values():
    tiny = dataclasses.replace(presets.mini(), probe_size=5, mi_samples=10)
    smoke = apply_budget(tiny, BUDGETS["smoke"])
    assert (smoke.probe_size, smoke.mi_samples) == (5, 10)


def test_unknown_budget_is_one_clear_error():
    with pytest.raises(DtlensError, match="unknown budget 'huge'.*full, smoke"):
        get_budget("huge")


# -- the plan under a budget: every role, the checkpoints each run keeps -------------------------
def test_smoke_plan_has_every_role_and_keeps_what_diagnostics_read():
    preset = presets.narrow(apply_budget(paper_preset(), BUDGETS["smoke"]), ["hopper"], [666])
    (p,) = plan(preset)
    assert set(p.main) == {RunKey(w, 666) for w in ("random", "language", "image")}
    assert set(p.no_context) == {RunKey(w, 666, k) for w in ("random", "language") for k in (1, 20)}
    assert set(p.no_clip) == {RunKey("image", 666)}
    assert {k.role for k in p.block_swap} == {"random", "block 0", "block 11", "donor"}
    # at one epoch, block swap's all-donor run is no-context's language K=1 run
    assert (
        p.block_swap[RunKey("donor", 666, 1)].name == p.no_context[RunKey("language", 666, 1)].name
    )
    assert len(p.specs()) == 9
    for spec in p.main.values():
        assert spec.cfg.keep_epochs == (0, 1)
    assert p.no_context[RunKey("random", 666, 1)].cfg.keep_epochs == (0, 1)
    assert p.no_clip[RunKey("image", 666)].cfg.keep_epochs == ()
    assert p.block_swap[RunKey("block 0", 666, 1)].cfg.keep_epochs == ()
    assert p.block_swap[RunKey("donor", 666, 1)].cfg.keep_epochs == (0, 1)


def test_full_paper_plan_keeps_gradient_and_attention_epochs_only():
    (p, *_) = plan(paper_preset())
    assert p.main[RunKey("language", 666)].cfg.keep_epochs == (0, 1)
    assert p.no_context[RunKey("language", 666, 1)].cfg.keep_epochs == (0, 1, 4, 10, 40)
    assert p.block_swap[RunKey("block 5", 42, 1)].cfg.keep_epochs == ()


def test_a_run_shared_by_roles_keeps_the_union_of_their_epochs():
    # mini: block swap's all-random K=1 run is also no-context's random K=1 run
    (p,) = plan(presets.mini())
    shared = p.block_swap[RunKey("random", 666, 1)]
    assert shared.name == p.no_context[RunKey("random", 666, 1)].name
    assert shared.cfg.keep_epochs == (0, 1, 2, 4, 5)
    assert {s.name: s for s in p.specs()}[shared.name].cfg.keep_epochs == (0, 1, 2, 4, 5)


# -- narrowing -----------------------------------------------------------------------------------
def test_narrow_to_tasks_and_seeds():
    p = presets.narrow(paper_preset(), ["walker2d"], [42])
    assert list(p.datasets) == ["walker2d"] and p.seeds == (42,)
    assert presets.narrow(paper_preset()) == paper_preset()
    with pytest.raises(DtlensError, match="--tasks ant.*hopper, halfcheetah, walker2d"):
        presets.narrow(paper_preset(), ["ant"])
    with pytest.raises(DtlensError, match="--seeds"):
        presets.narrow(paper_preset(), seeds=[])


def test_paper_inputs_are_checked_for_the_chosen_tasks_only(tmp_path):
    for name in ("gpt2", "imagegpt"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    d4rl = tmp_path / "d4rl"
    d4rl.mkdir()
    (d4rl / "hopper-medium-v2.hdf5").write_bytes(b"")
    args = ("paper", str(tmp_path / "gpt2"), str(tmp_path / "imagegpt"), str(d4rl), "cpu")
    chosen = presets.get(*args, tasks=["hopper"], seeds=[1], precision="bf16")
    assert list(chosen.datasets) == ["hopper"] and chosen.seeds == (1,)
    assert chosen.train.precision == "bf16" and chosen.train.device == "cpu"
    with pytest.raises(DtlensError, match="missing walker2d-medium-v2.hdf5"):
        presets.get(*args, tasks=["hopper", "walker2d"])
    with pytest.raises(DtlensError, match="--tasks ant"):
        presets.get(*args, tasks=["ant"])


# -- checkpoint retention ------------------------------------------------------------------------
def test_prune_keeps_listed_epochs_and_the_latest(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for e in range(5):
        (folder / f"epoch-{e:04d}.safetensors").write_bytes(b"x")
    assert prune_checkpoints(tmp_path, None, latest=4) == []
    assert prune_checkpoints(tmp_path, (0, 1), latest=4) == [2, 3]
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch-0000.safetensors",
        "epoch-0001.safetensors",
        "epoch-0004.safetensors",
    ]


@pytest.mark.slow
def test_training_keeps_its_epochs_and_resumes_from_the_latest(hopper_file, tmp_path):
    cfg = tiny_train_config(hopper_file, epochs=3, eval_episodes=0, keep_epochs=[1])
    run = train(cfg, tmp_path / "run", progress=False)
    assert run.epochs() == [1, 3]
    assert run.train_config.keep_epochs == (1,)  # JSON list -> tuple
    run = train(cfg.replace(epochs=4), tmp_path / "run", resume=True, progress=False)
    assert Run(run.path).epochs() == [1, 4]  # resumed from 3, which is then not the latest


def test_keep_epochs_and_where_a_run_goes_may_change_when_it_continues():
    a = TrainConfig(keep_epochs=[4, 0, 4])
    assert a.keep_epochs == (0, 4)
    b = a.replace(keep_epochs=None, device="auto", deterministic=True, epochs=50)
    assert a.differences(b) == []
    assert a.differences(a.replace(precision="bf16")) == ["precision"]
    assert TrainConfig.from_dict(a.to_dict() | {"keep_epochs": [0, 4]}) == a
    with pytest.raises(DtlensError, match="--precision must be fp32, tf32 or bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(DtlensError, match="--keep-epochs"):
        TrainConfig(keep_epochs=(-1,))


# -- the dry run's projections -------------------------------------------------------------------
def planned(keep, roles="main language", epochs=40) -> PlannedRun:
    cfg = TrainConfig(
        epochs=epochs,
        steps_per_epoch=10,
        eval_every=1,
        eval_episodes=2,
        eval_max_steps=100,
        probe_size=5,
        context_len=20,
        keep_epochs=keep,
    )
    t = StepTime(PAPER_RANDOM, 20, params=1000, step_s=0.5, eval_forward_s=0.01)
    return PlannedRun("hopper", RunSpec("r", cfg), roles, t)


def test_dry_run_projects_time_and_disk_of_a_run():
    r = planned((0, 1, 4, 10, 40))
    assert r.checkpoints == [0, 1, 4, 10, 40] and r.cfg.evaluations == 40
    assert r.seconds == pytest.approx(40 * 10 * 0.5 + 40 * 100 * 0.01)
    captures = 2 * 5 * (12 + 1) * 60 * 768 * FLOAT32  # CKA: epochs 0 and last, 13 sites
    assert r.disk_bytes == 5 * 1000 * FLOAT32 + 2 * 1000 * FLOAT32 + captures
    only_latest = planned((), roles="block-swap block 3")
    assert only_latest.checkpoints == [40]
    assert only_latest.disk_bytes == 3 * 1000 * FLOAT32
    assert planned(None, roles="no-clip image", epochs=3).checkpoints == [0, 1, 2, 3]


@pytest.mark.slow
def test_dry_run_cli_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["reproduce", "--preset", "mini", "--budget", "smoke", "--dry-run", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--seeds", "7", "--workers", "1"])
    assert result.exit_code == 0, result.output
    (p,) = plan(presets.narrow(apply_budget(presets.mini(), BUDGETS["smoke"]), seeds=[7]))
    for spec in p.specs():
        assert spec.name in result.output
    assert "projected" in result.output and "GB" in result.output and "s / step" in result.output
    # the three inits and the three controls
    assert "diagnostics: cka x6, mutual_info x6, weights x6, gradients x6, attention x2" in (
        result.output
    )
    assert list(tmp_path.iterdir()) == []


def test_reproduce_needs_out_unless_dry_run():
    result = runner.invoke(app, ["reproduce", "--preset", "mini", "--device", "cpu"])
    assert result.exit_code == 1 and "--out is required" in result.output


# -- GPUs: the logic, on CPU ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "workers", "scheduler", "gpus", "expected"),
    [
        ("cpu", None, None, 0, Cluster("local", min(2, os.cpu_count() or 1))),
        ("cpu", 1, None, 0, Cluster("process")),
        ("cpu", 3, None, 0, Cluster("local", 3)),
        ("cuda", None, None, 4, Cluster("cuda", 4)),  # one worker per GPU
        ("cuda", 2, None, 4, Cluster("cuda", 2)),
        ("cuda", 8, None, 4, Cluster("cuda", 4)),
        ("cuda", None, None, 1, Cluster("process")),
        ("cuda:1", None, None, 4, Cluster("process")),
        ("cuda", None, "tcp://host:8786", 4, Cluster("scheduler", 0)),
    ],
)
def test_cluster_choice(device, workers, scheduler, gpus, expected):
    if expected.kind == "local" and expected.workers == 1:
        expected = Cluster("process")
    assert choose_cluster(device, workers, scheduler, gpus) == expected


RUN_COMMANDS = [
    ["capture"],
    ["cka"],
    ["weights"],
    ["gradients", "--samples", "2", "--confusion-samples", "2"],
    ["mutual-info", "--seeds", "1", "--null-shuffles", "0"],
    ["attention", "--context", "4"],
    ["attribution"],
    ["patching"],
    ["action-lens"],
    ["probe"],
    ["attention-view"],
]


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=lambda c: c[0])
def test_every_run_command_takes_a_device(tiny_run, command, monkeypatch):
    """--device cpu computes; --device cuda where CUDA is missing is one line, exit 1, and
    nothing is written."""
    before = sorted(p.relative_to(tiny_run.path) for p in tiny_run.path.rglob("*"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = runner.invoke(app, [command[0], str(tiny_run.path), *command[1:], "--device", "cuda"])
    assert missing.exit_code == 1
    assert missing.output.startswith("error: --device cuda: CUDA is not available here")
    assert len(missing.output.strip().splitlines()) == 1
    assert sorted(p.relative_to(tiny_run.path) for p in tiny_run.path.rglob("*")) == before
    ok = runner.invoke(app, [command[0], str(tiny_run.path), *command[1:], "--device", "cpu"])
    assert ok.exit_code == 0, ok.output


def test_run_loads_checkpoints_on_its_device(tiny_run):
    assert Run(tiny_run.path).load_model(-1).device == torch.device("cpu")
    assert Run(tiny_run.path, "meta").load_model(-1).device.type == "meta"  # moved, not loaded
    if not torch.backends.mps.is_available():
        with pytest.raises(DtlensError, match="--device mps: MPS is not available"):
            Run(tiny_run.path, "mps")


def test_missing_dask_cuda_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails
    with pytest.raises(DtlensError, match=r"dask-cuda: pip install 'dtlens\[gpu\]'"):
        local_cuda_cluster(2)


def test_missing_cuda_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(
        DtlensError, match=r"--device cuda: CUDA is not available here: this torch .* without CUDA"
    ):
        check_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "finds no GPU (CUDA_VISIBLE_DEVICES='')" in cuda_missing_reason()
    with pytest.raises(DtlensError, match="--device cuda"):
        presets.get("mini", device="cuda")


def test_autocast_dtype_on_cpu():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    for precision in ("fp32", "tf32"):
        with autocast("cpu", precision):
            assert layer(x).dtype == torch.float32
    assert autocast_dtype("bf16") == torch.bfloat16 and autocast_dtype("fp32") is None
    with pytest.raises(DtlensError, match="--precision"):
        autocast_dtype("fp8")


def test_determinism_is_applied_and_undone():
    try:
        apply_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        apply_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow
def test_bf16_training_on_cpu(hopper_file, tmp_path):
    cfg = tiny_train_config(hopper_file, epochs=1, precision="bf16")
    run = train(cfg, tmp_path / "run", progress=False)
    assert run.epochs() == [0, 1]
    assert next(iter(run.load_model(1).parameters())).dtype == torch.float32
