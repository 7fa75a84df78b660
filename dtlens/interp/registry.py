"""Every interp analysis (`dtlens.interp.analyses`), and every analysis of dtlens: the paper's
diagnostics, then these. `dtlens reproduce` computes those that declare the runs they read
(`Diagnostic.reads`); the report's "Which components carry the difference" compares their
findings, language vs random init, and "What the policy needs" the ablation's. Their findings
are not the paper's claims: the report reads them two-sided."""

from __future__ import annotations

from dtlens.diagnostics.contract import Diagnostic
from dtlens.diagnostics.registry import DIAGNOSTICS
from dtlens.interp.analyses import (
    ablation,
    action_lens,
    attribution,
    cross_patching,
    patching,
    probe,
    return_sweep,
    steering,
)

INTERP: dict[str, Diagnostic] = {
    d.name: d
    for d in (
        attribution.DIAGNOSTIC,
        action_lens.DIAGNOSTIC,
        probe.DIAGNOSTIC,
        cross_patching.DIAGNOSTIC,
        ablation.DIAGNOSTIC,
        patching.DIAGNOSTIC,
        steering.DIAGNOSTIC,
        return_sweep.DIAGNOSTIC,
    )
}
#: Every analysis by name: what `dtlens reproduce` and the report iterate.
ANALYSES: dict[str, Diagnostic] = DIAGNOSTICS | INTERP
