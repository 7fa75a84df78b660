"""Captures of a run's checkpoints on its probe batch: `RUN/captures/epoch-NNNN.nc`.

A run's capture names what it was made from (attrs `run_path`, `epoch`, `checkpoint_sha256`,
`probe_hash`, `samples`, `hooks`); `ensure_capture` captures again whatever no longer matches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from dtlens.capture.activations import DEFAULT_HOOKS, batch_hash
from dtlens.capture.store import capture_to_netcdf, load_capture
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.io import file_sha256
from dtlens.train.run import Run

logger = logging.getLogger(__name__)


def capture_path(run: Run, epoch: int, out: Path | None = None) -> Path:
    return (out or run.path / "captures") / f"epoch-{epoch:04d}.nc"


def run_batch(run: Run, samples: int | None = None) -> Batch:
    """The run's probe batch, or `samples` windows drawn like it (see `Run.windows`)."""
    return run.windows(samples)


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
            "run_path": str(run.path.resolve()),
            "epoch": epoch,
            "checkpoint_sha256": file_sha256(run.checkpoint_path(epoch)),
            "init": run.config["train"]["init"],
            "dataset": run.config["train"]["dataset"],
        }
        path = capture_path(run, epoch, out)
        capture_to_netcdf(run.load_model(epoch), batch, path, hooks, chunk, batch_size, attrs)
        paths.append(path)
    return paths


def ensure_capture(
    run: Run,
    epoch: int,
    hooks: Sequence[str],
    samples: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """`RUN/captures/epoch-NNNN.nc` (-1 = last epoch) holding at least `hooks` (short names) of
    the epoch's checkpoint as it is now, on `run_batch(run, samples)`. Captured (with the kinds
    it already held) if it is missing, unreadable, lacks a hook, or was made from another
    checkpoint or other samples; `log` (default: a logging warning) hears why."""
    [epoch] = run.resolve_epochs([epoch])
    path = capture_path(run, epoch)
    batch = run_batch(run, samples)
    expected = {
        "epoch": epoch,
        "checkpoint_sha256": file_sha256(run.checkpoint_path(epoch)),
        "samples": len(batch),
        "probe_hash": batch_hash(batch),
    }
    held: list[str] = []
    if not path.is_file():
        reason = None
    else:
        try:
            with load_capture(path) as ds:
                held = [h for h in ds.attrs.get("hooks", "").split(",") if h]
                reason = _mismatch(dict(ds.attrs), expected, hooks)
        except DtlensError:  # truncated, or not a capture: what we write replaces it
            reason = "it is unreadable (truncated?) or not a dtlens capture"
        if reason is None:
            return path
        (log or logger.warning)(f"{path}: {reason}: capturing it again")
    capture_run(run, [epoch], list(dict.fromkeys([*held, *hooks])), samples=samples)
    return path


def _mismatch(attrs: dict, expected: dict, hooks: Sequence[str]) -> str | None:
    """Why a capture with `attrs` is not the one `expected` with `hooks`; None if it is."""
    if "checkpoint_sha256" not in attrs or "samples" not in attrs:
        return "it names no checkpoint or sample count (made by an older dtlens)"
    if attrs["epoch"] != expected["epoch"]:
        return f"it holds epoch {attrs['epoch']}, not {expected['epoch']}"
    if attrs["checkpoint_sha256"] != expected["checkpoint_sha256"]:
        return "it was made from another checkpoint (the file changed since)"
    if attrs["samples"] != expected["samples"]:
        return f"it holds {attrs['samples']} samples, {expected['samples']} asked"
    if attrs["probe_hash"] != expected["probe_hash"]:
        return "it holds other samples than the probe batch"
    if missing := [h for h in hooks if h not in attrs.get("hooks", "").split(",")]:
        return f"it lacks {', '.join(missing)}"
    return None
