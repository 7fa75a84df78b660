"""The fine-tuning loop, top to bottom: data, model, optimiser, epochs, checkpoints, resume.

A run killed at any point continues from its last checkpoint (`resume=True`) and, on CPU with the
same seed, ends with the same weights as an uninterrupted run: the sampler's and torch's RNG
states and the optimiser state are saved with every epoch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

import dtlens
from dtlens.data import load_dataset
from dtlens.data.dataset import OfflineDataset
from dtlens.data.scores import target_return as default_target_return
from dtlens.data.windows import WindowSampler, probe_batch, save_batch
from dtlens.errors import DtlensError
from dtlens.io import load_tensors, save_json, save_netcdf, save_tensors
from dtlens.model.backbones import random_backbone, read_header
from dtlens.model.checkpoint import load_model, save_model
from dtlens.model.config import BackboneConfig, DTConfig
from dtlens.model.dt import DecisionTransformer
from dtlens.model.inits import resolve_backbone
from dtlens.model.surgery import replace_block
from dtlens.train.config import TrainConfig
from dtlens.train.evaluate import evaluate
from dtlens.train.run import Run


@dataclass
class StepLog:
    loss: list[float]
    lr: list[float]
    grad_norm: list[float]
    clip_coef: list[float]


def build_model(cfg: TrainConfig, state_dim: int, act_dim: int) -> DecisionTransformer:
    """The DT at epoch 0: `init`'s backbone, or a random one with block `replace_block` donated."""
    if cfg.replace_block is not None:
        donor = resolve_backbone(cfg.donor, size=cfg.size, imagegpt_norm=cfg.imagegpt_norm)
        backbone = random_backbone(cfg.size, seed=cfg.seed)
        replace_block(backbone, donor, cfg.replace_block)
    else:
        backbone = resolve_backbone(
            cfg.init, size=cfg.size, seed=cfg.seed, imagegpt_norm=cfg.imagegpt_norm
        )
    dt_cfg = DTConfig(
        state_dim=state_dim,
        act_dim=act_dim,
        backbone=BackboneConfig.from_tl(backbone.cfg),
        max_ep_len=cfg.max_ep_len,
        resid_dropout=cfg.resid_dropout,
        attn_dropout=cfg.attn_dropout,
        embed_dropout=cfg.embed_dropout,
    )
    return DecisionTransformer(dt_cfg, backbone=backbone, seed=cfg.seed)


def action_loss(model: DecisionTransformer, batch) -> torch.Tensor:
    """Mean squared action error over real (unpadded) steps."""
    pred = model(
        batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.attention_mask
    )
    mask = batch.attention_mask.bool()
    return ((pred - batch.actions) ** 2)[mask].mean()


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then constant (as the DT reference code)."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Run:
    """Fine-tune a DT as `cfg` says and write the run folder `out`."""
    out = Path(out)
    dataset = load_dataset(cfg.dataset, env_id=cfg.env_id)
    env_id = dataset.env_id
    if env_id is None:
        raise DtlensError(f"{cfg.dataset}: the dataset does not name its environment (pass env_id)")
    if cfg.eval_episodes > 0 and cfg.env_id is None:
        dataset.check_env(env_id)
    start_epoch = _prepare_folder(cfg, out, dataset, resume)
    run = Run(out)
    model = load_model(run.checkpoint_path(start_epoch)).to(cfg.device)
    sampler = WindowSampler(
        dataset,
        context_len=cfg.context_len,
        rtg_scale=cfg.rtg_scale,
        max_ep_len=cfg.max_ep_len,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    steps, epochs = _read_metrics(out, start_epoch, cfg.steps_per_epoch)
    if start_epoch > 0:
        rng = _load_state(out, model, optimizer, start_epoch)
    target = cfg.target_return or default_target_return(env_id)

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
                step = len(steps.loss) + len(log.loss)
                lr = learning_rate(cfg, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = sampler.sample(cfg.batch_size, rng).to(cfg.device)
                loss = action_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                optimizer.step()
                log.loss.append(loss.item())
                log.lr.append(lr)
                log.grad_norm.append(norm)
                log.clip_coef.append(min(1.0, max_norm / (norm + 1e-6)))
                bar.update(task, advance=1, info=f"epoch {epoch} loss {loss.item():.4f}")
            for k in ("loss", "lr", "grad_norm", "clip_coef"):
                getattr(steps, k).extend(getattr(log, k))
            record = {
                "action_error": float(np.mean(log.loss)),
                "train_time_s": time.perf_counter() - t0,
            }
            if cfg.eval_episodes > 0 and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                res = evaluate(
                    model,
                    env_id,
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
            _save_epoch(out, model, optimizer, rng, epoch, steps, epochs, cfg)
    return run


# -- run folder ----------------------------------------------------------------------------------
def _prepare_folder(cfg: TrainConfig, out: Path, dataset: OfflineDataset, resume: bool) -> int:
    """Create the run folder (config, probe batch, epoch 0), or check it for `resume`.
    Returns the epoch to continue from."""
    if (out / "config.json").is_file():
        run = Run(out)
        saved = TrainConfig.from_dict(run.config["train"])
        if not resume:
            raise DtlensError(f"{out}: a run already exists here; use --resume or another folder")
        if diff := saved.differences(cfg):
            raise DtlensError(f"{out}: --resume on a run of another config (differs in {diff})")
        save_json(run.config | {"train": cfg.to_dict()}, out / "config.json")  # epochs may grow
        return _last_complete_epoch(run)
    if resume:
        raise DtlensError(f"{out}: nothing to resume (no config.json)")
    model = build_model(cfg, dataset.obs_dim, dataset.act_dim)
    mean, std = dataset.state_mean, dataset.state_std
    config = {
        "dtlens_version": dtlens.__version__,
        "train": cfg.to_dict(),
        "model": model.cfg.to_dict(),
        "data": {
            "dataset": cfg.dataset,
            "name": dataset.name,
            "env_id": dataset.env_id,
            "state_mean": mean.tolist(),
            "state_std": std.tolist(),
            "episodes": dataset.num_episodes,
            "transitions": len(dataset),
        },
    }
    probe = probe_batch(
        dataset,
        n=cfg.probe_size,
        context_len=cfg.context_len,
        seed=cfg.probe_seed,
        rtg_scale=cfg.rtg_scale,
        max_ep_len=cfg.max_ep_len,
    )
    save_batch(probe, out / "probe.safetensors")
    save_model(model, out / "checkpoints" / "epoch-0000.safetensors", epoch=0)
    save_json(config, out / "config.json")  # last: its presence marks a valid folder
    return 0


def _last_complete_epoch(run: Run) -> int:
    """The last epoch whose checkpoint and training state were both written."""
    epochs = run.epochs()
    state = run.path / "state.safetensors"
    if not state.is_file():
        return 0
    saved = read_header(state)["meta"]["epoch"]
    return max(e for e in epochs if e <= saved)


def _save_epoch(out, model, optimizer, rng, epoch, steps: StepLog, epochs: list[dict], cfg) -> None:
    """Checkpoint, metrics, then optimiser/RNG state: the state file names the epoch it
    completes, so a crash between writes resumes from the previous complete epoch."""
    save_model(model, out / "checkpoints" / f"epoch-{epoch:04d}.safetensors", epoch=epoch)
    save_netcdf(_metrics_dataset(steps, epochs, out.name), out / "metrics.nc")
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
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    n = epoch * steps_per_epoch
    steps = StepLog(*(ds[k].values[:n].tolist() for k in ("loss", "lr", "grad_norm", "clip_coef")))
    epoch_keys = [k for k, v in ds.data_vars.items() if v.dims == ("epoch",)]
    epochs = [
        {k: float(ds[k].values[i]) for k in epoch_keys if not np.isnan(ds[k].values[i])}
        for i in range(epoch)
    ]
    return steps, epochs


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
    )
