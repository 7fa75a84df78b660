"""Every diagnostic of dtlens, in the paper's order. A new diagnostic is one module that builds a
`Diagnostic` (see `dtlens.diagnostics.contract`) and one line here."""

from __future__ import annotations

from dtlens.diagnostics import (
    attention_run,
    blocks,
    context,
    gradient_run,
    layer_cka,
    mi_run,
    weight_run,
)
from dtlens.diagnostics.contract import Diagnostic

DIAGNOSTICS: dict[str, Diagnostic] = {
    d.name: d
    for d in (
        layer_cka.DIAGNOSTIC,
        mi_run.DIAGNOSTIC,
        weight_run.DIAGNOSTIC,
        gradient_run.DIAGNOSTIC,
        context.DIAGNOSTIC,
        blocks.DIAGNOSTIC,
        attention_run.DIAGNOSTIC,
    )
}
RUN_DIAGNOSTICS = {k: d for k, d in DIAGNOSTICS.items() if d.scope == "run"}
STUDY_DIAGNOSTICS = {k: d for k, d in DIAGNOSTICS.items() if d.scope == "study"}
