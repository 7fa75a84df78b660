"""Every diagnostic of the paper, in the paper's order. A new diagnostic is one module of
`dtlens.diagnostics.analyses` named as it (which builds a `Diagnostic`, see
`dtlens.diagnostics.contract`), one line here and its command in `cli.diagnostics`."""

from __future__ import annotations

from dtlens.diagnostics.analyses import (
    attention,
    block_swap,
    cka,
    gradients,
    mutual_info,
    no_context,
    weights,
)
from dtlens.diagnostics.contract import Diagnostic

DIAGNOSTICS: dict[str, Diagnostic] = {
    d.name: d
    for d in (
        cka.DIAGNOSTIC,
        mutual_info.DIAGNOSTIC,
        weights.DIAGNOSTIC,
        gradients.DIAGNOSTIC,
        no_context.DIAGNOSTIC,
        block_swap.DIAGNOSTIC,
        attention.DIAGNOSTIC,
    )
}
