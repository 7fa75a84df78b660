"""The interp analyses `dtlens reproduce` computes on the main (K=20) runs and the report's
"Which components carry the difference" section compares, language vs random init, and the
ablations in rollouts that its "What the policy needs" section compares per component. Their
findings are not the paper's claims: the report reads them two-sided."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from dtlens.diagnostics.contract import Diagnostic
from dtlens.interp import ablation, attribution, lens, patching, probe
from dtlens.interp.viewer import write_run_view
from dtlens.train.run import Run

INTERP: dict[str, Diagnostic] = {
    d.name: d for d in (attribution.DIAGNOSTIC, lens.DIAGNOSTIC, probe.DIAGNOSTIC, patching.CROSS)
}
#: The roles the interp analyses compare (image runs are left out to keep `make demo` short).
ROLES = ("language", "random")


def interp_tasks(
    main: Mapping[tuple[str, int], Run], root: Path
) -> list[tuple[str, Callable[[], object]]]:
    """What `reproduce` computes on one dataset's main runs (keyed by (role, seed)), as
    (label, thunk) pairs: every analysis of INTERP (study ones into `root`), then the ablation
    in rollouts and the attention view of each of the compared roles' runs."""
    runs = {key: run for key, run in main.items() if key[0] in ROLES}
    tasks: list[tuple[str, Callable[[], object]]] = []
    for diag in INTERP.values():
        if diag.scope == "study":
            tasks.append((f"{diag.name} comparison", lambda d=diag: d.write(runs, root)))
            continue
        for run in runs.values():
            tasks.append((f"{diag.name} {run.name}", lambda d=diag, r=run: d.write(r)))
    for run in runs.values():
        tasks.append((f"ablation {run.name}", lambda r=run: ablation.write_for_reproduce(r)))
        tasks.append((f"attention view {run.name}", lambda r=run: write_run_view(r)))
    return tasks
