"""`dtlens mutual-info RUN`: I(X;T) and I(Y;T) per block, several seeds, divergences counted."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, parse_int_list, user_errors
from cli.main import app


@app.command("mutual-info")
@user_errors
def mutual_info_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = typer.Option(-1, help="Checkpoint epoch (-1 = last)."),
    blocks: str = typer.Option(None, help="Blocks, e.g. 0,6,11 (default: first, middle, last)."),
    method: str = typer.Option(None, help="ksg (default), mine, infonce or gaussian."),
    seeds: int = typer.Option(3, help="Estimator seeds (the spread is reported)."),
    samples: int = typer.Option(None, help="Windows (default: the probe batch, 100)."),
    reduce: int = typer.Option(
        None, help="Project X and T onto this many principal components (0 = none; ksg: 5)."
    ),
    iterations: int = typer.Option(None, help="MINE/InfoNCE training passes (default 1000)."),
    paper: bool = typer.Option(
        False, "--paper", help="The paper's protocol: MINE on the same 100 samples, one seed."
    ),
) -> None:
    """Mutual information between inputs/target and block outputs at the last timestep."""
    from dtlens.diagnostics.mi_run import mutual_info_run
    from dtlens.train.run import Run

    options: dict = {} if iterations is None else {"iterations": iterations}
    if reduce is not None:
        options["reduce"] = reduce or None
    r = Run(run)
    ds = mutual_info_run(
        r,
        epoch=epoch,
        blocks=None if blocks is None else parse_int_list(blocks),
        method=method or ("mine" if paper else "ksg"),
        seeds=seeds,
        samples=samples,
        paper=paper,
        **options,
    )
    for quantity, columns in zip(ds.quantity.values, ("input X", "position of T"), strict=True):
        q = ds.sel(quantity=quantity)
        table = Table(
            "block",
            *(f"{columns}: {token}" for token in q.token_type.values),
            title=f"{quantity} (nats, mean ± std over {ds.sizes['seed']} seed(s)) of "
            f"{ds.attrs['run']} epoch {ds.attrs['epoch']}, {ds.attrs['method']}, "
            f"{ds.attrs['samples']} samples",
        )
        for block in q.block.values:
            cells = []
            for token in q.token_type.values:
                c = q.sel(block=block, token_type=token)
                cell = f"{float(c['mean']):.3f} ± {float(c['std']):.3f}"
                if int(c["diverged"]):
                    cell += f" ({int(c['diverged'])} diverged)"
                cells.append(cell)
            table.add_row(str(block), *cells)
        console.print(table)
    console.print(
        f"wrote {r.path / 'diagnostics' / 'mutual_info.nc'}, "
        f"{r.path / 'figures' / 'mutual_info.png'}",
        highlight=False,
    )
