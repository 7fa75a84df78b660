"""The paper's diagnostics on a run: `dtlens cka|mutual-info|weights|gradients|attention RUN`.

Each command is named as its diagnostic (`dtlens.diagnostics.registry`, `_` written `-`), reads
RUN/checkpoints (CKA also reuses or makes RUN/captures) and writes RUN/diagnostics/NAME.nc and
RUN/figures/NAME.png. The training studies `no-context` and `block-swap` are in `cli.studies`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, flag, parse_int_list, user_errors
from cli.render import run_diagnostic

app = typer.Typer()


@app.command("cka")
@user_errors
def cka_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    run_b: Path = typer.Argument(None, help="A second run to compare with (default: RUN)."),
    epochs: str = typer.Option(
        "0,-1", help="Epoch of RUN and of RUN_B (or RUN again); one value: both (-1 = last)."
    ),
    kernel: str = typer.Option("linear", help="linear or rbf."),
    debiased: bool = flag(True, "--debiased/--biased", help="Unbiased HSIC (the paper)."),
    embed: bool = flag(True, help="Include the embedding output as layer 'embed'."),
    paper_variant: bool = flag(
        False,
        "--paper-variant",
        help="Also the released code's [:, :, idx] indexing, and its 8 sites per block.",
    ),
    device: str = DEVICE,
) -> None:
    """Layer x layer CKA (epoch 0 vs last by default); prints layer i vs layer i.

    Writes RUN/diagnostics/cka.nc and RUN/figures/cka.png (cka-vs-RUN_B.* for two runs)."""
    from dtlens.train.run import Run

    a = Run(run, device)
    b = a if run_b is None else Run(run_b, device)
    two = b.path.resolve() != a.path.resolve()
    run_diagnostic(
        "cka",
        a,
        stem=f"cka-vs-{b.name}" if two else None,
        epochs=parse_int_list(epochs),
        other=b,
        kernel=kernel,
        debiased=debiased,
        embed=embed,
        paper_variant=paper_variant,
    )


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


@app.command("weights")
@user_errors
def weights_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epochs: str = typer.Option("0,-1", help="Two epochs, before and after (-1 = last)."),
    device: str = DEVICE,
) -> None:
    """Per-tensor L2 distance, relative change and cosine between two epochs' weights.

    Writes RUN/diagnostics/weights.nc and RUN/figures/weights.png."""
    from dtlens.train.run import Run

    run_diagnostic("weights", Run(run, device), epochs=parse_int_list(epochs))


@app.command("gradients")
@user_errors
def gradients_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = typer.Option(1, help="Checkpoint epoch (-1 = last); the paper: 1."),
    samples: int = typer.Option(100, help="Probe samples for the norms."),
    confusion_samples: int = typer.Option(50, help="Samples for gradient confusion."),
    clip: float = typer.Option(0.25, help="Per-sample clip value (as clip_grad_norm_), > 0."),
    eval_mode: bool = flag(
        False, "--eval-mode", help="Dropout off (the paper: train mode, dropout on)."
    ),
    seed: int = typer.Option(0, help="Seed of the dropout masks."),
    chunk_size: int = typer.Option(
        16, help="Samples per vmapped pass, at most (fewer where activations would pass 512 MiB)."
    ),
    paper_variant: bool = flag(
        False,
        "--paper-variant",
        help="Also the released code's norm, confusion and share (block tensors only).",
    ),
    device: str = DEVICE,
) -> None:
    """Per-sample gradient norms before/after clipping, top tensors, gradient confusion."""
    from dtlens.train.run import Run

    run_diagnostic(
        "gradients",
        Run(run, device),
        epoch=epoch,
        samples=samples,
        confusion_samples=confusion_samples,
        clip=clip,
        train_mode=not eval_mode,
        seed=seed,
        chunk_size=chunk_size,
        paper_variant=paper_variant,
    )


@app.command("attention")
@user_errors
def attention_cmd(
    run: Path = typer.Argument(..., help="A run folder."),
    epochs: str = typer.Option(None, help="Epochs to compare (default: every checkpoint)."),
    context: int = typer.Option(20, help="Probe windows of K steps (paper: 20, on K=1 runs)."),
    samples: int = typer.Option(None, help="Probe windows (default: the run's probe size)."),
    paper_variant: bool = flag(False, help="Also the released code's formula."),
    device: str = DEVICE,
) -> None:
    """Mean attention distance per block and head across epochs, and its change."""
    from dtlens.train.run import Run

    run_diagnostic(
        "attention",
        Run(run, device),
        epochs=parse_int_list(epochs) if epochs else None,
        context_len=context,
        samples=samples,
        paper_variant=paper_variant,
    )
