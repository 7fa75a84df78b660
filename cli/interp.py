"""`dtlens attribution|action-lens|patching|cross-patching|probe|attention-view`: the mechanistic
tools of `dtlens.interp` on a run's checkpoint and probe windows (cross-patching: on several runs).

Each writes RUN/diagnostics/NAME.nc and RUN/figures/NAME.png (the viewer:
RUN/figures/attention-view.html).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, console, flag, parse_names, user_errors
from cli.render import run_diagnostic

app = typer.Typer()

EPOCH = typer.Option(-1, help="Checkpoint epoch (-1 = last).")
SAMPLES = typer.Option(None, help="Probe windows (default: the run's probe size).")


@app.command("attribution")
@user_errors
def attribution_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = EPOCH,
    samples: int = SAMPLES,
    device: str = DEVICE,
) -> None:
    """Direct action attribution: each head, MLP and embedding's share of the pre-tanh action."""
    from dtlens.interp.analyses.attribution import DIAGNOSTIC
    from dtlens.train.run import Run

    run_diagnostic(DIAGNOSTIC, Run(run, device), epoch=epoch, samples=samples)


@app.command("patching")
@user_errors
def patching_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    donor: Path = typer.Option(
        None, help="A run folder or checkpoint whose activations are patched into RUN."
    ),
    hooks: str = typer.Option("attn_out,mlp_out,z", help="Hooks to patch (short or full names)."),
    positions: bool = flag(False, "--positions", help="Patch every token position separately."),
    epoch: int = EPOCH,
    samples: int = SAMPLES,
    seed: int = typer.Option(0, help="Seed of the corruption (which window's state)."),
    device: str = DEVICE,
) -> None:
    """Activation patching. Without --donor: clean windows into ones whose last state comes
    from another window; with --donor: the donor's activations on the same windows."""
    from dtlens.interp.analyses.patching import DIAGNOSTIC
    from dtlens.train.run import Run

    run_diagnostic(
        DIAGNOSTIC,
        Run(run, device),
        stem=f"patching-from-{donor.stem}" if donor else None,
        donor=donor,
        epoch=epoch,
        samples=samples,
        hooks=parse_names(hooks),
        positions=positions,
        seed=seed,
    )


@app.command("action-lens")
@user_errors
def action_lens_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = EPOCH,
    samples: int = SAMPLES,
    device: str = DEVICE,
) -> None:
    """The action head read off the residual stream after every block, and its error."""
    from dtlens.interp.analyses.action_lens import DIAGNOSTIC
    from dtlens.train.run import Run

    run_diagnostic(DIAGNOSTIC, Run(run, device), epoch=epoch, samples=samples)


@app.command("cross-patching")
@user_errors
def cross_patching_cmd(
    out: Path = typer.Option(..., "--out", help="Folder of diagnostics/ and figures/ to write."),
    language: str = typer.Option(..., help="Language-init run folders, one per seed (a,b,...)."),
    random: str = typer.Option(..., help="Random-init run folders, one per seed (a,b,...)."),
    samples: int = typer.Option(None, help="Probe windows per recipient (default: 50)."),
    device: str = DEVICE,
) -> None:
    """Each block output of a language-init run patched into the random-init run of its seed,
    beside another seed's random run as a control (what `dtlens reproduce` compares)."""
    from dtlens.diagnostics.contract import RunKey
    from dtlens.errors import DtlensError
    from dtlens.interp.analyses.cross_patching import DIAGNOSTIC
    from dtlens.train.run import Run

    runs = {}
    for role, folders in (("language", language), ("random", random)):
        for folder in parse_names(folders):
            run = Run(Path(folder), device)
            cfg = run.train_config
            key = RunKey(role, cfg.seed, cfg.context_len)
            if key in runs:
                raise DtlensError(f"two {role} runs of seed {cfg.seed}: {runs[key].path}, {folder}")
            runs[key] = run
    run_diagnostic(
        DIAGNOSTIC, runs, folder=out, **({} if samples is None else {"samples": samples})
    )


@app.command("probe")
@user_errors
def probe_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = EPOCH,
    samples: int = SAMPLES,
    alpha: float = typer.Option(1.0, help="Ridge penalty."),
    seed: int = typer.Option(0, help="Seed of the train/test split and the shuffle."),
    device: str = DEVICE,
) -> None:
    """Linear probes (held-out R^2) for state, return-to-go and timestep per layer and token."""
    from dtlens.interp.analyses.probe import DIAGNOSTIC
    from dtlens.train.run import Run

    run_diagnostic(
        DIAGNOSTIC, Run(run, device), epoch=epoch, samples=samples, alpha=alpha, seed=seed
    )


@app.command("attention-view")
@user_errors
def attention_view_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = EPOCH,
    windows: int = typer.Option(4, help="Probe windows shown."),
    device: str = DEVICE,
) -> None:
    """A self-contained HTML page of every head's attention pattern, tokens labelled."""
    from dtlens.interp.viewer import write_run_view
    from dtlens.train.run import Run

    path = write_run_view(Run(run, device), epoch=epoch, windows=windows)
    console.print(f"wrote {path}", highlight=False)
