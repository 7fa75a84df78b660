"""The fine-tuning loop, top to bottom: data, model, optimiser, epochs, checkpoints, resume.

A run killed after its first epoch continues from its last checkpoint (`resume=True`) and, on
CPU with the same seed, ends with the same weights as an uninterrupted run: the sampler's and
torch's RNG states and the optimiser state are saved with every epoch. One killed in its first
epoch leaves no run folder (only a partial one, removed by the next attempt) and starts again.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

import dtlens
from dtlens.data import load_dataset
from dtlens.data.dataset import OfflineDataset
from dtlens.data.scores import target_return as default_target_return
from dtlens.data.windows import Batch, WindowSampler, probe_batch, save_batch
from dtlens.errors import DtlensError
from dtlens.io import load_tensors, open_netcdf, save_json, save_netcdf, save_tensors
from dtlens.locks import folder_lock
from dtlens.model.backbones import read_header
from dtlens.model.checkpoint import load_model, save_model
from dtlens.model.config import DTConfig
from dtlens.model.dt import DecisionTransformer
from dtlens.model.inits import resolve_backbone
from dtlens.model.surgery import replace_block
from dtlens.train.config import TrainConfig
from dtlens.train.device import check_device
from dtlens.train.evaluate import evaluate
from dtlens.train.precision import apply_determinism, apply_precision, autocast
from dtlens.train.run import CHECKPOINT, Run

#: Fixed windows of the `--heldout` dataset whose action error is logged each epoch.
HELDOUT_WINDOWS = 1024


@dataclass
class StepLog:
    loss: list[float]
    lr: list[float]
    grad_norm: list[float]
    clip_coef: list[float]


def build_model(cfg: TrainConfig, state_dim: int, act_dim: int) -> DecisionTransformer:
    """The DT at epoch 0: `init`'s backbone, with block `replace_block` donated by `donor` (a
    donor block of another kind makes a mixed backbone), combined as (spec, weights) and then
    built once, inside the DT."""
    backbone = resolve_backbone(
        cfg.init, size=cfg.size, seed=cfg.seed, imagegpt_norm=cfg.imagegpt_norm
    )
    if cfg.replace_block is not None:
        donor = resolve_backbone(cfg.donor, size=cfg.size, imagegpt_norm=cfg.imagegpt_norm)
        backbone = replace_block(backbone, donor, cfg.replace_block)
    dt_cfg = DTConfig(state_dim=state_dim, act_dim=act_dim, backbone=backbone.cfg, **asdict(cfg.dt))
    return DecisionTransformer(dt_cfg, backbone=backbone, seed=cfg.seed)


def action_loss(model: DecisionTransformer, batch) -> torch.Tensor:
    """Mean squared action error over real (unpadded) steps."""
    pred = model(
        batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.attention_mask
    )
    mask = batch.attention_mask.bool()
    return ((pred - batch.actions) ** 2)[mask].mean()


def heldout_windows(cfg: TrainConfig, dataset: OfflineDataset) -> Batch | None:
    """`HELDOUT_WINDOWS` windows of `cfg.heldout` drawn with `cfg.probe_seed`, normalised with the
    training data's state statistics as the model sees them (None without a held-out dataset)."""
    if cfg.heldout is None:
        return None
    heldout = load_dataset(cfg.heldout)
    shapes = (heldout.observations.shape[1], heldout.actions.shape[1])
    if heldout.env_id != dataset.env_id or shapes != (
        dataset.observations.shape[1],
        dataset.actions.shape[1],
    ):
        raise DtlensError(
            f"--heldout {cfg.heldout}: {heldout.env_id} data, but the run trains on "
            f"{dataset.env_id} ({cfg.dataset})"
        )
    return probe_batch(
        heldout,
        n=HELDOUT_WINDOWS,
        context_len=cfg.context_len,
        seed=cfg.probe_seed,
        rtg_scale=cfg.rtg_scale,
        max_ep_len=cfg.dt.max_ep_len,
        state_mean=dataset.state_mean,
        state_std=dataset.state_std,
    )


def heldout_error(
    model: DecisionTransformer, windows: Batch, device: str, chunk: int = 256
) -> float:
    """The action MSE over the real steps of `windows`, in evaluation mode (no dropout); the
    model is left in the mode it came in."""
    training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), chunk):
            batch = windows.index(slice(start, start + chunk)).to(device)
            steps = int(batch.attention_mask.sum())
            total += action_loss(model, batch).item() * steps
            count += steps
    model.train(training)
    return total / count


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then constant (as the DT reference code)."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def train_step(
    model: DecisionTransformer,
    optimizer: torch.optim.Optimizer,
    batch,
    cfg: TrainConfig,
    lr: float,
    device: str,
) -> tuple[float, float]:
    """One update at learning rate `lr` in `cfg.precision`, the gradient norm clipped to
    `cfg.grad_clip`; returns the loss and the gradient norm before clipping."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(device, cfg.precision):
        loss = action_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    optimizer.step()
    return loss.item(), norm


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Run:
    """Fine-tune a DT as `cfg` says and write the run folder `out`.

    Only one process writes `out` at a time (`dtlens.locks.folder_lock`). A new run is built in
    `.NAME.partial-PID` beside `out` and renamed to `out` once epoch 1 is complete, so `out` never
    holds a half-made run (resuming from epoch 0 is starting again). Everything is checked before
    anything is written; a file system error (read-only, disk full) becomes one DtlensError line.
    """
    out = Path(out)
    device = check_device(cfg.device)
    apply_precision(cfg.precision)
    apply_determinism(cfg.deterministic)
    dataset = load_dataset(cfg.dataset, env_id=cfg.env_id)
    if dataset.env_id is None:
        raise DtlensError(f"{cfg.dataset}: the dataset does not name its environment (pass env_id)")
    if cfg.eval_episodes > 0 and cfg.env_id is None:
        dataset.check_env(dataset.env_id)
    heldout = heldout_windows(cfg, dataset)
    try:
        with folder_lock(out):
            _remove_partials(out)
            try:
                _train(cfg, out, dataset, heldout, device, resume, progress)
            finally:
                _remove_partials(out, ignore_errors=True)  # a failed first epoch leaves nothing
    except OSError as e:
        resumable = (out / "config.json").is_file()
        hint = "; --resume continues from the last complete epoch" if resumable else ""
        raise DtlensError(f"cannot write {out}: {e.strerror or e} ({e.filename}){hint}") from None
    return Run(out)


def _train(
    cfg: TrainConfig,
    out: Path,
    dataset: OfflineDataset,
    heldout: Batch | None,
    device: str,
    resume: bool,
    progress: bool,
) -> None:
    """The loop, in `out` (resume) or in a partial folder renamed to `out` after epoch 1."""
    sampler = WindowSampler(
        dataset,
        context_len=cfg.context_len,
        rtg_scale=cfg.rtg_scale,
        max_ep_len=cfg.dt.max_ep_len,
    )
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    if resume:
        run, start_epoch = _check_resume(cfg, out, dataset)
        work = out
        model = load_model(run.checkpoint_path(start_epoch)).to(device)
    else:
        _check_new(out)
        start_epoch, work = 0, out.parent / f".{out.name}.partial-{os.getpid()}"
        model = _create_folder(cfg, work, dataset).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps, epochs = _read_metrics(out, start_epoch, cfg.steps_per_epoch)
    if start_epoch > 0:
        rng = _load_state(out, model, optimizer, start_epoch)
    if resume and run.config["train"] != cfg.to_dict():  # every check passed: epochs may grow
        save_json(run.config | {"train": cfg.to_dict()}, out / "config.json")
    target = cfg.target_return or default_target_return(dataset.env_id)

    model.train()
    with _progress_bar(progress) as bar:
        task = bar.add_task(
            out.name,
            total=cfg.epochs * cfg.steps_per_epoch,
            completed=start_epoch * cfg.steps_per_epoch,
            info="",
        )
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            log = StepLog([], [], [], [])
            for _ in range(cfg.steps_per_epoch):
                lr = learning_rate(cfg, len(steps.loss) + len(log.loss))
                batch = sampler.sample(cfg.batch_size, rng).to(device)
                loss, norm = train_step(model, optimizer, batch, cfg, lr, device)
                max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
                log.loss.append(loss)
                log.lr.append(lr)
                log.grad_norm.append(norm)
                log.clip_coef.append(min(1.0, max_norm / (norm + 1e-6)))
                bar.update(task, advance=1, info=f"epoch {epoch} loss {loss:.4f}")
            for k in ("loss", "lr", "grad_norm", "clip_coef"):
                getattr(steps, k).extend(getattr(log, k))
            record = {
                "action_error": float(np.mean(log.loss)),
                "train_time_s": time.perf_counter() - t0,
            }
            if heldout is not None:
                with autocast(device, cfg.precision):
                    record["heldout_action_error"] = heldout_error(model, heldout, device)
            if cfg.evaluates(epoch):
                with autocast(device, cfg.precision):
                    res = evaluate(
                        model,
                        dataset.env_id,
                        sampler.state_mean,
                        sampler.state_std,
                        target,
                        episodes=cfg.eval_episodes,
                        context_len=cfg.context_len,
                        rtg_scale=cfg.rtg_scale,
                        max_steps=cfg.eval_max_steps,
                        seed=cfg.seed,
                    )
                record |= {
                    "return_mean": res.return_mean,
                    "return_std": res.return_std,
                    "score_mean": res.score_mean,
                    "score_std": res.score_std,
                }
                bar.update(task, info=f"epoch {epoch} return {res.return_mean:.0f}")
            epochs.append(record)
            _save_epoch(work, model, optimizer, rng, epoch, steps, epochs, cfg, name=out.name)
            if progress and not bar.console.is_terminal:  # no bar in a log: a line per epoch
                bar.console.print(
                    _epoch_line(out.name, epoch, cfg, record), highlight=False, soft_wrap=True
                )
            if work != out:
                os.rename(work, out)  # the run appears whole, with epochs 0 and 1
                work = out


# -- run folder ----------------------------------------------------------------------------------
def _remove_partials(out: Path, ignore_errors: bool = False) -> None:
    """Remove the partial folders of `out`: with its lock held, none has a live writer."""
    for partial in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        shutil.rmtree(partial, ignore_errors=ignore_errors)


def _check_new(out: Path) -> None:
    """A new run goes to a folder that does not exist yet, or is empty."""
    if (out / "config.json").is_file():
        raise DtlensError(f"{out}: a run already exists here; use --resume or another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DtlensError(f"{out}: exists and is not a dtlens run; choose another --out")


def _check_resume(cfg: TrainConfig, out: Path, dataset: OfflineDataset) -> tuple[Run, int]:
    """Check that `cfg` continues the run in `out`; returns it and the epoch to continue from."""
    if not (out / "config.json").is_file():
        raise DtlensError(f"{out}: nothing to resume (no config.json); train it without --resume")
    run = Run(out)
    if "imported" in run.config:
        raise DtlensError(f"{out}: an imported run (dtlens import-hf) has no training to resume")
    saved = TrainConfig.from_dict(run.config["train"])
    if diff := saved.differences(cfg):
        raise DtlensError(f"{out}: --resume on a run of another config (differs in {diff})")
    done = run.last_epoch()
    if cfg.epochs < done:
        raise DtlensError(
            f"{out}: --epochs {cfg.epochs} is fewer than the {done} epochs already done; "
            f"pass --epochs {done} or more"
        )
    data = run.config["data"]
    if data["transitions"] != len(dataset) or not np.allclose(
        data["state_mean"], dataset.state_mean
    ):
        raise DtlensError(f"{out}: the dataset {cfg.dataset} changed since the run was trained")
    return run, _last_complete_epoch(run)


def _create_folder(cfg: TrainConfig, work: Path, dataset: OfflineDataset) -> DecisionTransformer:
    """Write config, probe batch and the epoch-0 checkpoint into `work`; returns the model."""
    model = build_model(cfg, dataset.obs_dim, dataset.act_dim)
    save_probe(cfg, dataset, work / "probe.safetensors")
    save_model(model, work / "checkpoints" / "epoch-0000.safetensors", epoch=0)
    save_json(run_config(cfg, model.cfg, dataset), work / "config.json")
    return model


def run_config(cfg: TrainConfig, model_cfg: DTConfig, dataset: OfflineDataset) -> dict:
    """A run's config.json: the train and model configs, the dataset and its normalisation."""
    return {
        "dtlens_version": dtlens.__version__,
        "train": cfg.to_dict(),
        "model": model_cfg.to_dict(),
        "data": {
            "dataset": cfg.dataset,
            "name": dataset.name,
            "env_id": dataset.env_id,
            "state_mean": dataset.state_mean.tolist(),
            "state_std": dataset.state_std.tolist(),
            "episodes": dataset.num_episodes,
            "transitions": len(dataset),
        },
    }


def save_probe(cfg: TrainConfig, dataset: OfflineDataset, path: Path) -> None:
    """The probe batch every diagnostic uses, drawn from `dataset` as `cfg` says."""
    probe = probe_batch(
        dataset,
        n=cfg.probe_size,
        context_len=cfg.context_len,
        seed=cfg.probe_seed,
        rtg_scale=cfg.rtg_scale,
        max_ep_len=cfg.dt.max_ep_len,
    )
    save_batch(probe, path)


def _last_complete_epoch(run: Run) -> int:
    """The last epoch whose checkpoint and training state were both written."""
    epochs = run.epochs()
    state = run.path / "state.safetensors"
    if not state.is_file():
        return 0
    saved = read_header(state)["meta"]["epoch"]
    return max(e for e in epochs if e <= saved)


def _save_epoch(
    out, model, optimizer, rng, epoch, steps: StepLog, epochs: list[dict], cfg, name: str
) -> None:
    """Checkpoint, metrics, then optimiser/RNG state: the state file names the epoch it
    completes, so a crash between writes resumes from the previous complete epoch. `name`: the
    run's (`out` may be its partial folder)."""
    save_model(model, out / "checkpoints" / f"epoch-{epoch:04d}.safetensors", epoch=epoch)
    save_netcdf(_metrics_dataset(steps, epochs, name), out / "metrics.nc")
    tensors = {"torch_rng": torch.get_rng_state()}
    names = {p: n for n, p in model.named_parameters()}
    groups = []
    for gi, group in enumerate(optimizer.param_groups):
        groups.append({k: v for k, v in group.items() if k != "params"})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"opt/{gi}/{names[p]}/{key}"] = torch.as_tensor(value)
    header = {
        "kind": "train_state",
        "meta": {"epoch": epoch, "rng": rng.bit_generator.state, "param_groups": groups},
    }
    save_tensors(tensors, out / "state.safetensors", metadata={"dtlens": json.dumps(header)})
    prune_checkpoints(out, cfg.keep_epochs, latest=epoch)


def prune_checkpoints(out: Path, keep: tuple[int, ...] | None, latest: int) -> list[int]:
    """Remove the epoch checkpoints `keep` does not list, except `latest` (a resume reads it,
    with the state file that names it); `keep=None` keeps all. Returns the removed epochs."""
    if keep is None:
        return []
    removed = []
    for path in (out / "checkpoints").glob("epoch-*.safetensors"):
        m = CHECKPOINT.search(path.name)
        if m and (epoch := int(m.group(1))) != latest and epoch not in keep:
            path.unlink()
            removed.append(epoch)
    return sorted(removed)


def _load_state(out: Path, model, optimizer, epoch: int) -> np.random.Generator:
    path = out / "state.safetensors"
    meta = read_header(path)["meta"]
    if meta["epoch"] != epoch:
        raise DtlensError(f"{path}: training state of epoch {meta['epoch']}, expected {epoch}")
    tensors = load_tensors(path)
    torch.set_rng_state(tensors["torch_rng"])
    for group, saved in zip(optimizer.param_groups, meta["param_groups"], strict=True):
        group.update(saved)
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, _, name, field = key.split("/", 3)
            # AdamW keeps its step count on the CPU; the moments live beside their parameter
            device = "cpu" if field == "step" else params[name].device
            optimizer.state[params[name]][field] = value.to(device)
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    return rng


def _metrics_dataset(steps: StepLog, epochs: list[dict], run_name: str) -> xr.Dataset:
    """Per-step loss, lr, grad norm (before clipping) and clip coefficient; per-epoch records."""
    step_vars = {
        k: ("step", np.asarray(getattr(steps, k), dtype=np.float64))
        for k in ("loss", "lr", "grad_norm", "clip_coef")
    }
    keys = sorted({k for e in epochs for k in e})
    epoch_vars = {k: ("epoch", np.array([e.get(k, np.nan) for e in epochs])) for k in keys}
    return xr.Dataset(
        step_vars | epoch_vars,
        coords={
            "step": np.arange(1, len(steps.loss) + 1),
            "epoch": np.arange(1, len(epochs) + 1),
        },
        attrs={"run": run_name, "dtlens_version": dtlens.__version__},
    )


def _read_metrics(out: Path, epoch: int, steps_per_epoch: int) -> tuple[StepLog, list[dict]]:
    """The metrics of the first `epoch` epochs (later ones belong to an interrupted attempt)."""
    path = out / "metrics.nc"
    if epoch == 0 or not path.is_file():
        return StepLog([], [], [], []), []
    with open_netcdf(path) as ds:
        ds = ds.load()
    n = epoch * steps_per_epoch
    steps = StepLog(*(ds[k].values[:n].tolist() for k in ("loss", "lr", "grad_norm", "clip_coef")))
    epoch_keys = [k for k, v in ds.data_vars.items() if v.dims == ("epoch",)]
    epochs = [
        {k: float(ds[k].values[i]) for k in epoch_keys if not np.isnan(ds[k].values[i])}
        for i in range(epoch)
    ]
    return steps, epochs


def _epoch_line(name: str, epoch: int, cfg: TrainConfig, record: dict) -> str:
    line = (
        f"{name}: epoch {epoch}/{cfg.epochs} ({epoch * cfg.steps_per_epoch:,} steps) "
        f"action error {record['action_error']:.4f}"
    )
    if "heldout_action_error" in record:
        line += f" (held-out {record['heldout_action_error']:.4f})"
    line += f", {record['train_time_s']:.0f} s"
    return line + (f", return {record['return_mean']:.0f}" if "return_mean" in record else "")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
    )
