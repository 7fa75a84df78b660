"""`dtlens ablation|steering|return-sweep RUN`: interventions during evaluation rollouts and what
they do to the return (`dtlens.interp.analyses.ablation`, `.steering`, `.return_sweep`).

Each writes RUN/diagnostics/NAME.nc and RUN/figures/NAME.png (ablation, steering, return_sweep).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, err_console, user_errors
from cli.render import run_diagnostic
from dtlens.errors import DtlensError

app = typer.Typer()

EPOCH = typer.Option(-1, help="Checkpoint epoch (-1 = last).")
EPISODES = typer.Option(None, help="Rollouts per policy (default: the run's evaluation episodes).")
SEED = typer.Option(0, help="Env seed of the first episode (seed, seed+1, ...) and resampling.")
SAMPLES = typer.Option(None, help="Probe windows for the statistics (default: the probe size).")
MAX_STEPS = typer.Option(
    None, help="Step limit of an episode (default: the run's evaluation limit)."
)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DtlensError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise DtlensError(f"{what}: expected at least one number")
    return values


def _progress(line: str) -> None:
    err_console.print(f"  {line}", highlight=False)


@app.command("ablation")
@user_errors
def ablation_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    components: str = typer.Option(
        "attns,mlps",
        help="Comma-separated: L{i}H{h}, L{i}ATTN, L{i}MLP, L{i} (optionally @return|state|action) "
        "or the sets heads, attns, mlps, blocks.",
    ),
    how: str = typer.Option("mean", help="zero, mean or resample (over the probe windows)."),
    episodes: int = EPISODES,
    epoch: int = EPOCH,
    seed: int = SEED,
    samples: int = SAMPLES,
    max_steps: int = MAX_STEPS,
    device: str = DEVICE,
) -> None:
    """Roll out the policy with each component ablated in turn: the change of normalized score
    against the unablated policy on the same env seeds, with its 95% interval."""
    from dtlens.interp.analyses.ablation import DIAGNOSTIC
    from dtlens.train.run import Run

    run_diagnostic(
        DIAGNOSTIC,
        Run(run, device),
        epoch=epoch,
        components=components,
        how=how,
        episodes=episodes,
        seed=seed,
        samples=samples,
        max_steps=max_steps,
        progress=_progress,
    )


@app.command("steering")
@user_errors
def steering_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    layer: int = typer.Option(
        None, help="Blocks passed before the stream is steered (0 = embeddings; default middle)."
    ),
    scales: str = typer.Option("-2,-1,1,2", help="Comma-separated multiples of the direction."),
    positions: str = typer.Option("state", help="Tokens steered: return, state, action or all."),
    episodes: int = EPISODES,
    epoch: int = EPOCH,
    seed: int = SEED,
    samples: int = SAMPLES,
    max_steps: int = MAX_STEPS,
    device: str = DEVICE,
) -> None:
    """Roll out the policy steered along the high - low return-to-go direction of its probe
    windows: the change of normalized score per scale."""
    from dtlens.interp.analyses.steering import DIAGNOSTIC
    from dtlens.train.run import Run

    run_diagnostic(
        DIAGNOSTIC,
        Run(run, device),
        epoch=epoch,
        layer=layer,
        scales=_floats(scales, "--scales"),
        positions=positions,
        episodes=episodes,
        seed=seed,
        samples=samples,
        max_steps=max_steps,
        progress=_progress,
    )


@app.command("return-sweep")
@user_errors
def return_sweep_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    targets: str = typer.Option(
        None, help="Comma-separated return-to-go targets (default: 0 to 1.25 x the env's)."
    ),
    episodes: int = EPISODES,
    epoch: int = EPOCH,
    seed: int = SEED,
    max_steps: int = MAX_STEPS,
    device: str = DEVICE,
) -> None:
    """Achieved return against the return-to-go target the policy is conditioned on."""
    from dtlens.interp.analyses.return_sweep import DIAGNOSTIC
    from dtlens.train.run import Run

    run_diagnostic(
        DIAGNOSTIC,
        Run(run, device),
        epoch=epoch,
        targets=None if targets is None else _floats(targets, "--targets"),
        episodes=episodes,
        seed=seed,
        max_steps=max_steps,
        progress=_progress,
    )
