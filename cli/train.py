"""`dtlens train`: fine-tune a Decision Transformer and write a run folder.

Options come from `dtlens.train.config.TrainConfig` (defaults, flags and help in one place).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import (
    D_MODEL,
    HEADS,
    LAYERS,
    console,
    flag,
    parse_int_list,
    user_errors,
)
from cli.config_options import config_options
from dtlens.model.config import DT_OPTION_FIELDS, BackboneConfig, DTOptions
from dtlens.train.config import TrainConfig, help_text

app = typer.Typer()

#: TrainConfig fields that are one CLI option each (`size` is --layers/--d-model/--heads, `dt`
#: is DT_OPTIONS).
TRAIN_OPTIONS = [
    f
    for f in TrainConfig.__dataclass_fields__
    if f not in ("size", "dt", "probe_size", "probe_seed", "rtg_scale", "keep_epochs")
]
#: The DTOptions that have a flag (max_ep_len and action_tanh are not options of a run).
DT_OPTIONS = [f for f in DT_OPTION_FIELDS if f not in ("max_ep_len", "action_tanh")]


@app.command("train")
@user_errors
@config_options(TrainConfig, TRAIN_OPTIONS)
@config_options(DTOptions, DT_OPTIONS, into="dt")
def train_cmd(
    config: dict,
    dt: dict,
    out: Path = typer.Option(
        ..., "--out", help="Run folder to create (or continue with --resume)."
    ),
    no_clip: bool = flag(
        False, "--no-clip", help="Do not clip gradients (the norm is still logged)."
    ),
    layers: int = LAYERS,
    d_model: int = D_MODEL,
    heads: int = HEADS,
    resume: bool = flag(
        False, "--resume", help="Continue from the last complete epoch (same config)."
    ),
    keep_epochs: str = typer.Option(None, "--keep-epochs", help=help_text("keep_epochs")),
) -> None:
    """Fine-tune a DT (paper defaults) and write config, checkpoints and metrics to --out.

    Writes OUT/config.json, OUT/checkpoints/epoch-NNNN.safetensors, OUT/probe.safetensors and
    OUT/metrics.nc; the diagnostics commands then write OUT/diagnostics and OUT/figures."""
    from dtlens.train.loop import train

    cfg = TrainConfig(
        **(config | {"grad_clip": None if no_clip else config["grad_clip"]}),
        size=BackboneConfig.sized(layers, d_model, heads),
        dt=DTOptions(**dt),
        keep_epochs=None if keep_epochs is None else parse_int_list(keep_epochs),
    )
    run = train(cfg, out, resume=resume, progress=True)  # a bar, or a line per epoch in a log
    print_summary(run)


def print_summary(run) -> None:
    """One screen: the run's config and its per-epoch metrics."""
    from dtlens.io import open_netcdf  # torch and xarray: not at the CLI's start-up

    with open_netcdf(run.path / "metrics.nc") as ds:
        ds = ds.load()
    t = run.train_config
    console.print(
        f"[bold]{run.path}[/]: init {t.init}, dataset {t.dataset}, K={t.context_len}, "
        f"{len(ds.epoch)} epochs x {t.steps_per_epoch} steps, seed {t.seed}"
    )
    table = Table("epoch", "action MSE", "held-out", "return", "normalized score", "s/epoch")
    for i, e in enumerate(ds.epoch.values):
        heldout = ds["heldout_action_error"].values[i] if "heldout_action_error" in ds else None
        ret = ds["return_mean"].values[i] if "return_mean" in ds else float("nan")
        score = ds["score_mean"].values[i] if "score_mean" in ds else float("nan")
        table.add_row(
            str(e),
            f"{ds['action_error'].values[i]:.4f}",
            "-" if heldout is None else f"{heldout:.4f}",
            f"{ret:.1f}",
            f"{score:.1f}",
            f"{ds['train_time_s'].values[i]:.1f}",
        )
    console.print(table)
    steps_per_s = ds.sizes["step"] / float(ds["train_time_s"].sum())
    console.print(f"training speed: {steps_per_s:.2f} steps/s (evaluation excluded)")
