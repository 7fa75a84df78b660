"""`dtlens pretrain text|image|synthetic`: build the mini preset's embedded backbones."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, user_errors
from dtlens.errors import DtlensError
from dtlens.pretrain import STEPS

app = typer.Typer(
    help="Pretrain the mini preset's language (text), image and synthetic backbones.",
    no_args_is_help=True,
)

SEED = typer.Option(0, help="Seeds the initialisation and the batches.")
OUT = typer.Option(
    None,
    help="Output .safetensors (default: $DTLENS_CACHE/backbones/NAME.safetensors; "
    "dtlens/assets/backbones/NAME.safetensors refreshes the committed asset).",
)


STEPS_OPTION = typer.Option(
    None,
    min=1,
    help="The toy corpora: optimiser steps (default: as the committed asset). The real ones: "
    "stop after this many steps in all (the checkpoint stays; the same command goes on).",
)
THREADS = typer.Option(None, min=1, help="torch CPU threads (default: torch's).")


@app.command("text")
@user_errors
def text_cmd(
    corpus: str = typer.Option(
        "debian-docs",
        help="debian-docs: byte-level BPE on Debian's English documentation "
        "(dtlens.pretrain.english), trained until the held-out loss plateaus, resumed from "
        "$DTLENS_CACHE/pretrain/text. pydoc: characters of Python's documentation topics "
        "(the first embedded asset).",
    ),
    steps: int | None = STEPS_OPTION,
    seed: int = SEED,
    out: Path | None = OUT,
    threads: int | None = THREADS,
) -> None:
    """GPT-2 family (LayerNorm, gelu_new) causal LM of the mini size."""
    from dtlens.pretrain import text
    from dtlens.pretrain.loop import LongRun

    _threads(threads)
    if corpus == "pydoc":
        _report("text", text.build(steps=steps or STEPS["text"], seed=seed, out=out))
        return
    if corpus != "debian-docs":
        raise DtlensError(f"unknown corpus {corpus!r}: expected debian-docs or pydoc")
    run = LongRun(seed=seed)
    result = text.build_until_plateau(
        run, out, max_steps=steps, command=_command("text", seed, out, threads), log=_log
    )
    _report("text", result)


@app.command("image")
@user_errors
def image_cmd(
    corpus: str = typer.Option(
        "fashion-mnist",
        help="fashion-mnist: Debian's Fashion-MNIST as ImageGPT palette tokens "
        "(dtlens.pretrain.fashion), trained until the held-out loss plateaus, resumed from "
        "$DTLENS_CACHE/pretrain/image. digits: scikit-learn's 8x8 digits (the first embedded "
        "asset).",
    ),
    steps: int | None = STEPS_OPTION,
    seed: int = SEED,
    out: Path | None = OUT,
    threads: int | None = THREADS,
) -> None:
    """ImageGPT family (RMS norm, quick_gelu) causal model of the mini size."""
    import dataclasses

    from dtlens.pretrain import image

    _threads(threads)
    if corpus == "digits":
        _report("image", image.build(steps=steps or STEPS["image"], seed=seed, out=out))
        return
    if corpus != "fashion-mnist":
        raise DtlensError(f"unknown corpus {corpus!r}: expected fashion-mnist or digits")
    run = dataclasses.replace(image.FASHION_RUN, seed=seed)
    result = image.build_until_plateau(
        run, out, max_steps=steps, command=_command("image", seed, out, threads), log=_log
    )
    _report("image", result)


@app.command("synthetic")
@user_errors
def synthetic_cmd(
    states: int = typer.Option(100, min=2, help="The chain's state space (its vocabulary)."),
    order: int = typer.Option(1, min=1, help="How many previous tokens the chain conditions on."),
    temperature: float = typer.Option(1.0, min=1e-6, help="Softmax temperature of the chain."),
    tokens: int = typer.Option(
        None,
        min=1,
        help="Train for this many tokens with the text backbone's optimiser, resumed from "
        "$DTLENS_CACHE/pretrain/synthetic (the control on the text backbone's budget: its "
        "tokens_seen). Without it: --steps steps, the first embedded build.",
    ),
    steps: int = typer.Option(
        None,
        min=1,
        help=f"Optimiser steps (default {STEPS['synthetic']}; with --tokens: stop "
        "after this many in all, to resume later).",
    ),
    seed: int = SEED,
    out: Path | None = OUT,
    threads: int | None = THREADS,
) -> None:
    """GPT-2 family (LayerNorm, gelu_new) of the mini size, on random Markov-chain sequences
    (Wang et al. 2024): the control for what language pretraining gives."""
    from dtlens.pretrain import synthetic
    from dtlens.pretrain.loop import LongRun

    _threads(threads)
    if states**order > 1_000_000:
        raise DtlensError(f"states**order = {states**order:,}: at most 1,000,000 contexts")
    chain = dict(states=states, order=order, temperature=temperature)
    if tokens is None:
        result = synthetic.build(steps=steps or STEPS["synthetic"], seed=seed, out=out, **chain)
    else:
        flags = f" --tokens {tokens} --states {states} --order {order} --temperature {temperature}"
        result = synthetic.build_for_tokens(
            tokens, LongRun(seed=seed), out, **chain, max_steps=steps,
            command=_command("synthetic", seed, out, threads, flags), log=_log,
        )  # fmt: skip
    _report("synthetic", result)


def _threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _command(kind: str, seed: int, out: Path | None, threads: int | None, flags: str = "") -> str:
    """The command that rebuilds a long run (the thread count too: it changes CPU sums' order)."""
    return (
        f"dtlens pretrain {kind}{flags}"
        + f" --seed {seed}" * (seed != 0)
        + f" --threads {threads}" * (threads is not None)
        + f" --out {out}" * bool(out)
    )


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _report(kind: str, result) -> None:
    """The summary, with whether the weights are the embedded asset's; writing the asset itself
    (--out dtlens/assets/backbones/NAME.safetensors) enters it in the manifest."""
    from dtlens.paths import BACKBONE_ASSETS
    from dtlens.pretrain.manifest import matches_manifest, record

    if result is None:
        console.print(f"{kind}: not finished yet; the same command resumes")
        return
    same = matches_manifest(kind, result.path)
    match = {None: "no manifest entry", True: "yes: same weights", False: "no: other weights"}
    console.print(summary(kind, result, match[same]))
    if result.path.resolve() == (BACKBONE_ASSETS / f"{kind}.safetensors").resolve():
        console.print(f"manifest: {record(kind, result.meta['command'])}")


def summary(kind: str, result, matches: str) -> Table:
    m = result.meta
    gain = m["unigram_loss"] - m["heldout_loss"]
    table = Table(title=f"pretrained {kind} backbone", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("family", m["family"]),
        ("corpus", m["corpus"]),
        ("held-out loss", f"{m['heldout_loss']:.3f} nats/token"),
        ("unigram baseline", f"{m['unigram_loss']:.3f} nats/token"),
        ("gain over unigram", f"{gain:.3f} nats/token"),
        ("held-out tokens", f"{m['heldout_tokens']:,}"),
        ("steps x batch", f"{m['steps']:,} x {m['batch_size']}"),
        ("seed", str(m["seed"])),
        ("time", f"{m['wall_seconds']:.1f} s"),
        ("file", str(result.path)),
        ("size", f"{result.size_bytes / 1e6:.2f} MB"),
        ("rebuild", m["command"]),
        ("same as the embedded asset", matches),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
