"""`dtlens mutual-info RUN`: I(X;T) and I(Y;T) per block, several seeds, a permutation null.

Reads RUN/checkpoints and RUN/probe.safetensors; writes RUN/diagnostics/mutual_info.nc and
RUN/figures/mutual_info.png.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, flag, parse_int_list, user_errors
from cli.main import app
from cli.render import run_diagnostic


@app.command("mutual-info")
@user_errors
def mutual_info_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = typer.Option(-1, help="Checkpoint epoch (-1 = last)."),
    blocks: str = typer.Option(None, help="Blocks, e.g. 0,6,11 (default: first, middle, last)."),
    method: str = typer.Option(
        None, help="Estimator: the calibrated default, or ksg, gaussian, mine, infonce."
    ),
    seeds: int = typer.Option(3, help="Estimator seeds (the spread is reported)."),
    samples: int = typer.Option(None, help="Windows (default: the probe batch, 100)."),
    null_shuffles: int = typer.Option(5, help="Permutation null: shuffles of X (0 = none)."),
    iterations: int = typer.Option(
        None, help="Critic passes for mine / infonce (default 1000, the paper's)."
    ),
    paper: bool = flag(
        False, "--paper", help="The paper's protocol: MINE on the same 100 samples, one seed."
    ),
    paper_variant: bool = flag(
        False,
        "--paper-variant",
        help="Also the released code's sites: MLP branch output, every context position.",
    ),
    device: str = DEVICE,
) -> None:
    """Mutual information between inputs/target and block outputs at the last timestep."""
    from dtlens.train.run import Run

    run_diagnostic(
        "mutual_info",
        Run(run, device),
        epoch=epoch,
        blocks=None if blocks is None else parse_int_list(blocks),
        method=method,
        seeds=seeds,
        samples=samples,
        null_shuffles=null_shuffles,
        paper=paper,
        paper_variant=paper_variant,
        **({} if iterations is None else {"iterations": iterations}),
    )
