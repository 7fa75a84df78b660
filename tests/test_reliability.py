"""Reliability: one writer per run folder, options checked before anything is written, no
half-made folders, checked resumes, no leftover temporary files, captures checked against what
they were made from."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from cli.common import user_errors
from dtlens.capture import capture_run, ensure_capture, load_capture
from dtlens.errors import DtlensError
from dtlens.io import save_json, temp_path
from dtlens.locks import HOST, folder_lock, lock_path
from dtlens.model.checkpoint import save_model
from dtlens.train import loop
from dtlens.train.loop import train
from dtlens.train.run import Run
from tests.conftest import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
HOLD_LOCK = """
import sys, time
from dtlens.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    return int(proc.stdout)


def fast(hopper_file, **changes):
    return tiny_train_config(hopper_file, **({"eval_episodes": 0, "epochs": 1} | changes))


# -- one writer per folder -----------------------------------------------------------------------
def test_second_training_into_a_locked_folder_fails_in_one_line(hopper_file, tmp_path):
    out = tmp_path / "run"
    with folder_lock(out):
        with pytest.raises(DtlensError) as e:
            train(fast(hopper_file), out, progress=False)
    message = str(e.value)
    assert message.startswith(f"{out} is being written by pid {os.getpid()} since ")
    assert "wait for it to finish" in message and "\n" not in message
    assert not out.exists() and not lock_path(out).exists()
    assert train(fast(hopper_file), out, progress=False).epochs() == [0, 1]  # the lock is gone


def test_lock_of_a_live_process_refuses_and_of_a_killed_one_is_taken_over(hopper_file, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DtlensError, match=f"being written by pid {holder.pid} since"):
            train(fast(hopper_file), out, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    stale = json.loads(lock_path(out).read_text())  # SIGKILL left the lock file behind
    assert stale["pid"] == holder.pid and stale["host"] == HOST
    assert train(fast(hopper_file), out, progress=False).epochs() == [0, 1]
    assert not lock_path(out).exists()


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    out = tmp_path / "not-yet"
    pid = dead_pid()
    lock_path(out).write_text(json.dumps({"pid": pid, "host": HOST, "since": "yesterday"}))
    with folder_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(DtlensError, match=f"pid {os.getpid()}"):  # still exclusive
            with folder_lock(out):
                pass
    assert not lock.exists() and not out.exists()


# -- options checked before anything is written ---------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": -1.0}, "--lr must be > 0, got -1.0"),
        ({"weight_decay": -0.1}, "--weight-decay must be >= 0, got -0.1"),
        ({"warmup_steps": -1}, "--warmup must be >= 0, got -1"),
        ({"eval_every": 0}, "--eval-every must be >= 1, got 0"),
        ({"eval_episodes": -1}, "--eval-episodes must be >= 0, got -1"),
        ({"eval_max_steps": 0}, "--eval-max-steps must be >= 1, got 0"),
        ({"grad_clip": 0.0}, "--clip must be > 0 (--no-clip for none), got 0.0"),
        ({"dt": {"resid_dropout": 1.0}}, "--resid-dropout must be in [0, 1), got 1.0"),
        ({"dt": {"attn_dropout": -0.1}}, "--attn-dropout must be in [0, 1), got -0.1"),
        ({"dt": {"embed_dropout": 2.0}}, "--embed-dropout must be in [0, 1), got 2.0"),
        ({"rtg_scale": 0.0}, "--rtg-scale must be > 0, got 0.0"),
        ({"dt": {"max_ep_len": 0}}, "--max-ep-len must be >= 1, got 0"),
        ({"context_len": 0}, "--context must be >= 1, got 0"),
        ({"steps_per_epoch": 0}, "--steps must be >= 1, got 0"),
        ({"lr": float("nan")}, "--lr must be > 0, got nan"),
        ({"device": "foo"}, "--device must be cpu, cuda, cuda:N, mps or auto, got 'foo'"),
    ],
)
def test_bad_option_is_one_line_naming_its_flag(hopper_file, changes, message):
    with pytest.raises(DtlensError) as e:
        tiny_train_config(hopper_file, **changes)
    assert str(e.value) == message


def test_good_options_pass():
    from dtlens.train.config import TrainConfig, flag, help_text

    cfg = TrainConfig(grad_clip=None, eval_episodes=0, warmup_steps=0, device="cuda:1")
    assert cfg.device == "cuda:1" and cfg.grad_clip is None
    assert flag("context_len") == "--context" and flag("grad_clip") == "--clip"
    assert all(help_text(f) for f in cfg.to_dict())


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_unavailable_device_fails_before_any_folder_exists(
    hopper_file, tmp_path, monkeypatch, device
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DtlensError) as e:
        train(fast(hopper_file, device=device), tmp_path / "run", progress=False)
    kind = "MPS" if device == "mps" else "CUDA"
    assert str(e.value).startswith(f"--device {device}: {kind} is not available here")
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "-1"], "--lr must be > 0, got -1.0"),
        (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
        (["--device", "foo"], "--device must be cpu, cuda, cuda:N, mps or auto"),
    ],
)
def test_cli_bad_option_is_one_line_and_writes_nothing(hopper_file, tmp_path, flags, message):
    from cli.main import app

    out = tmp_path / "run"
    argv = ["train", "--dataset", str(hopper_file), "--out", str(out), "--epochs", "1", *flags]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert list(tmp_path.iterdir()) == []


# -- no half-made run folders ---------------------------------------------------------------------
def test_failure_in_the_first_epoch_leaves_nothing(hopper_file, tmp_path, monkeypatch):
    def boom(model, batch):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(loop, "action_loss", boom)
    with pytest.raises(RuntimeError):
        train(fast(hopper_file), tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_leftover_partial_folder_is_removed_by_the_next_attempt(hopper_file, tmp_path):
    partial = tmp_path / f".run.partial-{dead_pid()}"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "probe.safetensors").write_bytes(b"half")
    run = train(fast(hopper_file), tmp_path / "run", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert run.epochs() == [0, 1] and run.config["train"]["epochs"] == 1


def test_disk_full_is_one_line_and_leaves_no_partial_folder(hopper_file, tmp_path, monkeypatch):
    def full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(loop, "save_json", full)
    out = tmp_path / "run"
    with pytest.raises(DtlensError) as e:
        train(fast(hopper_file), out, progress=False)
    assert str(e.value).startswith(f"cannot write {out}: No space left on device (")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_destination_is_one_line(hopper_file, tmp_path):
    dest = tmp_path / "ro"
    dest.mkdir()
    dest.chmod(0o500)
    try:
        with pytest.raises(DtlensError, match=f"cannot write {dest / 'run'}: Permission denied"):
            train(fast(hopper_file), dest / "run", progress=False)
        assert list(dest.iterdir()) == []
    finally:
        dest.chmod(0o700)


def test_read_only_file_system_is_one_line(hopper_file, tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr("dtlens.locks.os.open", read_only)
    out = tmp_path / "run"
    with pytest.raises(DtlensError) as e:
        train(fast(hopper_file), out, progress=False)
    assert str(e.value) == f"cannot write {out}: Read-only file system ({lock_path(out)})"
    assert list(tmp_path.iterdir()) == []


def test_cli_turns_os_errors_into_one_line():
    app = typer.Typer()

    @app.command()
    @user_errors
    def write() -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "/data/run/config.json")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert result.output.strip() == "error: /data/run/config.json: Permission denied"


def test_folder_that_is_not_a_run_is_refused(hopper_file, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(DtlensError, match="exists and is not a dtlens run"):
        train(fast(hopper_file), tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


# -- resume checks everything before writing -------------------------------------------------------
def test_resume_with_fewer_epochs_is_refused_and_config_unchanged(hopper_file, tmp_path):
    cfg = fast(hopper_file, epochs=2)
    out = train(cfg, tmp_path / "run", progress=False).path
    before = (out / "config.json").read_bytes()
    with pytest.raises(DtlensError) as e:
        train(cfg.replace(epochs=1), out, resume=True, progress=False)
    assert str(e.value) == (
        f"{out}: --epochs 1 is fewer than the 2 epochs already done; pass --epochs 2 or more"
    )
    with pytest.raises(DtlensError, match="another config"):
        train(cfg.replace(epochs=3, seed=1), out, resume=True, progress=False)
    assert (out / "config.json").read_bytes() == before
    assert Run(out).epochs() == [0, 1, 2]


def test_failed_resume_leaves_config_alone_and_a_good_one_updates_it(
    hopper_file, tmp_path, monkeypatch
):
    cfg = fast(hopper_file, epochs=1)
    out = train(cfg, tmp_path / "run", progress=False).path
    before = (out / "config.json").read_bytes()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DtlensError, match="CUDA is not available"):
        train(cfg.replace(epochs=2, device="cuda"), out, resume=True, progress=False)
    assert (out / "config.json").read_bytes() == before
    run = train(cfg.replace(epochs=2), out, resume=True, progress=False)
    assert run.epochs() == [0, 1, 2] and run.config["train"]["epochs"] == 2


# -- temporary files of killed writes --------------------------------------------------------------
def test_stale_temp_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "config.json"
    stale = temp_path(target, pid=dead_pid())
    stale.write_bytes(b"x" * 1000)
    alive = temp_path(target, pid=os.getppid())  # a write still under way: left alone
    alive.write_bytes(b"y")
    other = temp_path(tmp_path / "other.json", pid=dead_pid())  # another target's
    other.write_bytes(b"z")
    save_json({"a": 1}, target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert not stale.exists() and alive.exists() and other.exists()
    assert not temp_path(target).exists()


# -- captures checked against what they were made from ---------------------------------------------
@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_capture_names_what_it_was_made_from(run):
    [path] = capture_run(run, [2], ["resid_post"])
    with load_capture(path) as ds:
        attrs = ds.attrs
    sha = hashlib.sha256(run.checkpoint_path(2).read_bytes()).hexdigest()
    assert attrs["checkpoint_sha256"] == sha and attrs["epoch"] == 2
    assert attrs["run_path"] == str(run.path.resolve()) and attrs["samples"] == 6
    assert attrs["hooks"] == "resid_post"


def test_ensure_capture_recaptures_other_samples_checkpoint_or_truncation(run):
    heard: list[str] = []
    capture_run(run, [2], ["resid_post"], samples=4)
    path = ensure_capture(run, 2, ["resid_post"], log=heard.append)
    assert heard == [f"{path}: it holds 4 samples, 6 asked: capturing it again"]
    with load_capture(path) as ds:
        assert ds.sizes["sample"] == 6
    ensure_capture(run, 2, ["resid_post"], log=heard.append)
    assert len(heard) == 1  # now it matches: nothing captured

    model = run.load_model(2)
    with torch.no_grad():
        model.backbone.blocks[0].attn.W_Q.add_(1.0)
    save_model(model, run.checkpoint_path(2), epoch=2)
    ensure_capture(run, 2, ["resid_post"], log=heard.append)
    assert heard[-1].endswith(
        "it was made from another checkpoint (the file changed since): capturing it again"
    )

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DtlensError) as e:
        load_capture(path)
    assert str(e.value) == f"{path} is unreadable (truncated?): delete it or run capture again"
    ensure_capture(run, 2, ["resid_post", "tokens"], log=heard.append)
    assert "unreadable (truncated?)" in heard[-1]
    with load_capture(path) as ds:
        assert {"resid_post", "tokens"} <= set(ds.data_vars) and ds.sizes["sample"] == 6


CONCURRENT_READS = """
import sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np, xarray as xr
from dtlens.io import open_netcdf, save_netcdf
paths = [
    save_netcdf(xr.Dataset({f"v{j}": ("x", np.arange(50.0) + j) for j in range(40)}),
                f"{sys.argv[1]}/f{i}.nc")
    for i in range(4)
]
def read(k):
    with open_netcdf(paths[k % 4]) as ds:
        return float(ds.load()["v3"].sum())
with ThreadPoolExecutor(8) as pool:
    assert set(pool.map(read, range(200))) == {float(np.arange(50.0).sum() + 150)}
print("read")
"""


def test_netcdf_files_open_from_many_threads_at_once(tmp_path):
    """The explorer's request threads open results concurrently: unguarded, netCDF-C/HDF5 crash
    the process (segmentation fault, bus error) within a few hundred opens; `open_netcdf` holds
    one lock. In a subprocess, so that a crash fails this test instead of killing the worker."""
    done = subprocess.run(
        [sys.executable, "-c", CONCURRENT_READS, str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "read", done.stderr[-2000:]
