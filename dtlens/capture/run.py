"""Captures of a run's checkpoints on its probe batch: `RUN/captures/epoch-NNNN.nc`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dtlens.capture.activations import DEFAULT_HOOKS
from dtlens.capture.store import capture_to_netcdf, load_capture
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.train.run import Run


def capture_path(run: Run, epoch: int, out: Path | None = None) -> Path:
    return (out or run.path / "captures") / f"epoch-{epoch:04d}.nc"


def run_batch(run: Run, samples: int | None = None) -> Batch:
    """The run's probe batch, its first `samples` rows, or, for more samples than it holds, that
    many windows drawn as the probe was (same dataset, seed and normalisation): the probe's rows
    come first."""
    if samples is not None and samples < 1:
        raise DtlensError(f"samples must be at least 1, got {samples}")
    probe = run.probe_batch()
    if samples is None or samples <= len(probe):
        return probe if samples is None else probe.index(slice(0, samples))
    from dtlens.data import load_dataset, probe_batch

    t, data = run.config["train"], run.config["data"]
    batch = probe_batch(
        load_dataset(t["dataset"]),
        n=samples,
        context_len=t["context_len"],
        seed=t["probe_seed"],
        rtg_scale=t["rtg_scale"],
        max_ep_len=t["max_ep_len"],
        state_mean=np.asarray(data["state_mean"]),
        state_std=np.asarray(data["state_std"]),
    )
    if not torch.equal(batch.states[: len(probe)], probe.states):
        raise DtlensError(f"{t['dataset']}: the dataset changed since {run.path} was trained")
    return batch


def capture_run(
    run: Run,
    epochs: Sequence[int] | None = None,
    hooks: Sequence[str] = DEFAULT_HOOKS,
    samples: int | None = None,
    out: Path | None = None,
    chunk: int = 256,
    batch_size: int = 256,
) -> list[Path]:
    """Capture `hooks` of each epoch's checkpoint (default: first and last; -1 = last) on the
    probe batch (see `run_batch`), streamed to `out/epoch-NNNN.nc` (default `RUN/captures`)."""
    epochs = [*run.epochs()[:1], -1] if epochs is None else list(epochs)
    epochs = list(dict.fromkeys(run.resolve_epochs(epochs)))
    batch = run_batch(run, samples)
    paths = []
    for epoch in epochs:
        attrs = {
            "run": run.name,
            "epoch": epoch,
            "init": run.config["train"]["init"],
            "dataset": run.config["train"]["dataset"],
        }
        path = capture_path(run, epoch, out)
        capture_to_netcdf(run.load_model(epoch), batch, path, hooks, chunk, batch_size, attrs)
        paths.append(path)
    return paths


def ensure_capture(run: Run, epoch: int, hooks: Sequence[str]) -> Path:
    """`RUN/captures/epoch-NNNN.nc` holding at least `hooks` (short names); captured on the probe
    batch (with the kinds it already held) if it is missing or lacks one."""
    path = capture_path(run, epoch)
    held: list[str] = []
    if path.is_file():
        with load_capture(path) as ds:
            held = ds.attrs.get("hooks", "").split(",")
    if not set(hooks) <= set(held):
        capture_run(run, [epoch], [h for h in dict.fromkeys([*held, *hooks]) if h])
    return path
