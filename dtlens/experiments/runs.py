"""Run specs and their execution: in this process, or as tasks on dask.distributed.

Where runs go (`choose_cluster`): an existing cluster when a scheduler address is given; on
`--device cuda` with several GPUs, a dask-cuda `LocalCUDACluster` (one worker per GPU, the
optional `gpu` extra); on CPU, a `LocalCluster` of single-threaded processes; one worker runs
in this process.

A finished run (its last epoch checkpointed) is skipped; an interrupted one is resumed. A run that
fails is reported with its error and does not stop the others.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from dtlens.errors import DtlensError
from dtlens.train.config import TrainConfig
from dtlens.train.loop import train
from dtlens.train.run import Run


@dataclass(frozen=True)
class RunSpec:
    name: str
    cfg: TrainConfig


@dataclass(frozen=True)
class RunOutcome:
    name: str
    path: str
    status: str  # "done" (already finished), "trained", "failed"
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class Cluster:
    """Where runs go: "process" (this one), "local" (dask LocalCluster of `workers` processes),
    "cuda" (dask-cuda LocalCUDACluster, one worker per GPU) or "scheduler" (an existing one)."""

    kind: str
    workers: int = 1


def default_cpu_workers() -> int:
    return min(2, os.cpu_count() or 1)


def choose_cluster(device: str, workers: int | None, scheduler: str | None, gpus: int) -> Cluster:
    """The cluster for runs on `device` given `workers` (None: one per GPU on cuda, one on
    cuda:N, else `default_cpu_workers()`), a `scheduler` address and the visible `gpus`."""
    if scheduler:
        return Cluster("scheduler", 0)
    if workers is not None and workers < 1:
        raise DtlensError(f"--workers must be at least 1, got {workers}")
    if device == "cuda":  # every GPU
        n = gpus if workers is None else min(workers, gpus)
        return Cluster("cuda", n) if n > 1 else Cluster("process")
    if workers is None:  # "cuda:N" names one GPU: its runs share it only when asked to
        workers = 1 if device.startswith("cuda:") else default_cpu_workers()
    return Cluster("local", workers) if workers > 1 else Cluster("process")


def local_cuda_cluster(workers: int):
    """A dask-cuda LocalCUDACluster of `workers` workers, one GPU each."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise DtlensError(
            "one worker per GPU needs dask-cuda: pip install 'dtlens[gpu]' "
            "(or --workers 1, or --scheduler ADDRESS of a running cluster)"
        ) from None
    return LocalCUDACluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)


def run_status(path: Path, cfg: TrainConfig) -> str:
    """'done' if the run's last epoch is checkpointed, 'partial' if it was started, else 'new'.
    A folder holding a run of another config is an error, never reused."""
    if not (path / "config.json").is_file():
        return "new"
    run = Run(path)
    saved = run.train_config
    if diff := saved.differences(cfg):
        raise DtlensError(f"{path}: holds a run of another config (differs in {diff})")
    epochs = run.epochs()
    state = path / "state.safetensors"
    return "done" if epochs and epochs[-1] >= cfg.epochs and state.is_file() else "partial"


def execute_one(spec: RunSpec, root: str, threads: int = 0) -> RunOutcome:
    """Train one run (resuming a partial one). Runs inside a dask worker or this process."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    path = Path(root) / spec.name
    t0 = time.perf_counter()
    try:
        status = run_status(path, spec.cfg)
        if status == "done":
            return RunOutcome(spec.name, str(path), "done")
        train(spec.cfg, path, resume=status == "partial", progress=False)
    except Exception as e:  # reported per run; the other runs go on
        detail = str(e) if isinstance(e, DtlensError) else traceback.format_exc(limit=3)
        return RunOutcome(spec.name, str(path), "failed", time.perf_counter() - t0, detail)
    return RunOutcome(spec.name, str(path), "trained", time.perf_counter() - t0)


def execute(
    specs: Iterable[RunSpec],
    root: str | Path,
    workers: int | None = 1,
    scheduler: str | None = None,
    on_done=None,
) -> list[RunOutcome]:
    """Run every spec where `choose_cluster` says (from the specs' device): `workers` > 1 starts
    a dask LocalCluster of that many single-threaded processes on CPU, a LocalCUDACluster of up
    to that many GPUs on cuda; `scheduler` connects to an existing cluster instead (its workers
    must see the data paths and `root`). `on_done(outcome)` is called as each run finishes."""
    specs = list(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DtlensError(f"duplicate run names: {names}")
    root = str(Path(root).resolve())
    device = specs[0].cfg.device if specs else "cpu"
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    choice = choose_cluster(device, workers, scheduler, gpus)
    if choice.kind == "process":
        outcomes = []
        for spec in specs:
            outcomes.append(execute_one(spec, root))
            if on_done:
                on_done(outcomes[-1])
        return outcomes
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if choice.kind == "cuda":
        cluster = local_cuda_cluster(choice.workers)
    elif choice.kind == "local":
        # dask's nannies set MALLOC_TRIM_THRESHOLD_, which also turns off glibc's dynamic mmap
        # threshold: every large tensor is then mmap'ed afresh and a training step is ~2.6x
        # slower. Workers get one thread each and the default allocator.
        environ = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(
                n_workers=choice.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
    try:
        with Client(scheduler or cluster) as client:
            futures = {
                client.submit(execute_one, s, root, 1, key=f"run-{s.name}", pure=False): s
                for s in specs
            }
            done: dict[str, RunOutcome] = {}
            for fut in as_completed(futures):
                spec = futures[fut]
                try:
                    outcome = fut.result()
                except Exception as e:  # the worker itself died
                    outcome = RunOutcome(spec.name, f"{root}/{spec.name}", "failed", error=repr(e))
                done[spec.name] = outcome
                if on_done:
                    on_done(outcome)
    finally:
        if cluster is not None:
            cluster.close()
    return [done[n] for n in names]
