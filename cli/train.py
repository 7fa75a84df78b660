"""`dtlens train`: fine-tune a Decision Transformer and write a run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, is_interactive, user_errors
from cli.main import app


@app.command("train")
@user_errors
def train_cmd(
    out: Path = typer.Option(
        ..., "--out", help="Run folder to create (or continue with --resume)."
    ),
    init: str = typer.Option(
        "random",
        help="random, random-paper, gpt2, imagegpt, text, image, "
        "an HF directory or a dtlens .safetensors file.",
    ),
    dataset: str = typer.Option(
        "mini/hopper-medium", help="Embedded id, D4RL .hdf5, or Minari id."
    ),
    env_id: str = typer.Option(None, help="Gymnasium env for evaluation (default: the dataset's)."),
    context: int = typer.Option(20, "--context", help="K timesteps per window (1 = no context)."),
    replace_block: int = typer.Option(None, help="Random-init DT with this block from --donor."),
    donor: str = typer.Option(None, help="Init that donates the block (with --replace-block)."),
    no_clip: bool = typer.Option(
        False, "--no-clip", help="Do not clip gradients (norm still logged)."
    ),
    clip: float = typer.Option(0.25, help="Gradient-norm clip value."),
    epochs: int = typer.Option(40),
    steps: int = typer.Option(2500, "--steps", help="Steps per epoch."),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-4),
    weight_decay: float = typer.Option(1e-4),
    warmup: int = typer.Option(5000, help="Linear warm-up steps."),
    seed: int = typer.Option(666),
    eval_episodes: int = typer.Option(10, help="Evaluation episodes per epoch (0 = none)."),
    eval_every: int = typer.Option(1, help="Evaluate every N epochs (and after the last)."),
    eval_max_steps: int = typer.Option(1000),
    target_return: float = typer.Option(None, help="Return-to-go target (default: per env)."),
    imagegpt_norm: str = typer.Option("rms", help="rms, or layernorm for the paper's quirk."),
    layers: int = typer.Option(3, help="Random init: blocks."),
    d_model: int = typer.Option(128, help="Random init: width."),
    heads: int = typer.Option(4, help="Random init: heads."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    device: str = typer.Option("cpu"),
) -> None:
    """Fine-tune a DT (paper defaults) and write config, checkpoints and metrics to --out."""
    from dtlens.model.config import BackboneConfig
    from dtlens.train.config import TrainConfig
    from dtlens.train.loop import train

    cfg = TrainConfig(
        init=init,
        dataset=dataset,
        env_id=env_id,
        context_len=context,
        replace_block=replace_block,
        donor=donor,
        grad_clip=None if no_clip else clip,
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup,
        seed=seed,
        eval_episodes=eval_episodes,
        eval_every=eval_every,
        eval_max_steps=eval_max_steps,
        target_return=target_return,
        imagegpt_norm=imagegpt_norm,
        size=BackboneConfig(n_layers=layers, d_model=d_model, n_heads=heads, d_mlp=4 * d_model),
        device=device,
    )
    run = train(cfg, out, resume=resume, progress=is_interactive())
    print_summary(run)


def print_summary(run) -> None:
    """One screen: the run's config and its per-epoch metrics."""
    import xarray as xr

    with xr.open_dataset(run.path / "metrics.nc") as ds:
        ds = ds.load()
    t = run.config["train"]
    console.print(
        f"[bold]{run.path}[/]: init {t['init']}, dataset {t['dataset']}, K={t['context_len']}, "
        f"{len(ds.epoch)} epochs x {t['steps_per_epoch']} steps, seed {t['seed']}"
    )
    table = Table("epoch", "action MSE", "return", "normalized score", "s/epoch")
    for i, e in enumerate(ds.epoch.values):
        ret = ds["return_mean"].values[i] if "return_mean" in ds else float("nan")
        score = ds["score_mean"].values[i] if "score_mean" in ds else float("nan")
        table.add_row(
            str(e),
            f"{ds['action_error'].values[i]:.4f}",
            f"{ret:.1f}",
            f"{score:.1f}",
            f"{ds['train_time_s'].values[i]:.1f}",
        )
    console.print(table)
    steps_per_s = ds.sizes["step"] / float(ds["train_time_s"].sum())
    console.print(f"training speed: {steps_per_s:.2f} steps/s (evaluation excluded)")
