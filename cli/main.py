"""The `dtlens` Typer app: the index of its commands. Each command module owns a `typer.Typer()`
of its commands; here they are registered, groups under their name, the others at the top."""

from __future__ import annotations

import typer

from cli import (
    capture,
    data,
    diagnostics,
    explore,
    import_hf,
    interp,
    interventions,
    laptop_budget,
    model,
    pretrain,
    reproduce,
    studies,
    train,
)

app = typer.Typer(
    name="dtlens",
    help="Interpretability for Decision Transformers: pretrained vs random init on offline RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(model.app, name="model")  # dtlens model info
app.add_typer(data.app, name="data")  # dtlens data list|info|...
app.add_typer(pretrain.app, name="pretrain")  # dtlens pretrain text|image|synthetic
app.add_typer(train.app)  # train
app.add_typer(import_hf.app)  # import-hf
app.add_typer(capture.app)  # capture
app.add_typer(diagnostics.app)  # cka, mutual-info, weights, gradients, attention
app.add_typer(studies.app)  # no-context, block-swap
# attribution, action-lens, patching, cross-patching, probe, attention-view
app.add_typer(interp.app)
app.add_typer(interventions.app)  # ablation, steering, return-sweep
app.add_typer(laptop_budget.app)  # laptop-budget
app.add_typer(reproduce.app)  # reproduce, report
app.add_typer(explore.app)  # explore
