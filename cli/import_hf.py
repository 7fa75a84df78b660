"""`dtlens import-hf DIR... --out RUN`: published HF Decision Transformers as a dtlens run."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, user_errors

app = typer.Typer()


@app.command("import-hf")
@user_errors
def import_hf_cmd(
    dirs: list[Path] = typer.Argument(
        ..., help="HF DecisionTransformerModel directories: epoch 0, 1, ... in this order."
    ),
    out: Path = typer.Option(..., "--out", help="Run folder to create."),
    dataset: str = typer.Option(
        ...,
        help="The models' dataset (embedded id, D4RL .hdf5 or Minari id): probe windows and "
        "state normalisation.",
    ),
    env_id: str = typer.Option(None, help="Gymnasium env (default: the dataset's)."),
    context: int = typer.Option(20, help="K timesteps per probe window (published DTs: 20)."),
    rtg_scale: float = typer.Option(1000.0, help="Returns-to-go are divided by this."),
    probe_size: int = typer.Option(100, help="Fixed probe windows every diagnostic uses."),
    probe_seed: int = typer.Option(0, help="Seed that draws the probe windows."),
    seed: int = typer.Option(0, help="Seed of what diagnostics draw (dropout masks)."),
) -> None:
    """Write a run whose epoch i is the HF DT in the i-th directory, for every run diagnostic."""
    from dtlens.train.import_hf import import_hf

    run = import_hf(
        dirs,
        out,
        dataset,
        env_id=env_id,
        context_len=context,
        rtg_scale=rtg_scale,
        probe_size=probe_size,
        probe_seed=probe_seed,
        seed=seed,
    )
    cfg = run.dt_config
    console.print(
        f"[bold]{run.path}[/]: {len(dirs)} epoch(s), {cfg.n_layers} x {cfg.d_model} "
        f"({cfg.backbone.n_heads} heads), dataset {dataset}, K={context}",
        highlight=False,
    )
    for epoch, d in enumerate(dirs):
        console.print(f"  epoch {epoch}: {d}", highlight=False)
