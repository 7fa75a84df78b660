"""The report's sections for presets with controls (`laptop`): "What in the pretrained weights
matters" (language against each control, per task and across tasks) and the peer DT's score.

Each control removes part of what language pretraining gives: `synthetic` keeps pretraining but
not language (Markov-chain tokens), `shuffled:text` keeps the language weights' values but not
their arrangement, `matched:text` keeps only each tensor's mean and scale. Every statistic is
compared two-sided with `dtlens.stats.compare` per task and `aggregate` across tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dtlens.diagnostics.registry import DIAGNOSTICS
from dtlens.io import load_json
from dtlens.report.components import direction
from dtlens.report.document import Doc
from dtlens.stats import Comparison, aggregate, compare

#: Control role -> what it keeps of the language weights, and what it lacks.
CONTROLS = {
    "synthetic": ("pretraining on non-language tokens", "language itself"),
    "shuffled:text": ("the language weights' values and statistics", "their learned arrangement"),
    "matched:text": ("each language tensor's mean and scale", "everything else in the weights"),
}


def _statistics(study: Any) -> dict[str, Callable[[Path | None], float]]:
    """Statistic name -> its value on one K=20 run: the score, the final action error, and the
    finding's statistic of every run diagnostic read on the K=20 runs (by its title; its
    section defines it)."""
    stats: dict[str, Callable[[Path | None], float]] = {
        "normalized score (K=20, last epoch)": lambda run: study.final_score(run)[0],
        "final action error (K=20)": study.final_action_error,
    }
    for diag in DIAGNOSTICS.values():
        f = diag.finding
        if diag.scope == "run" and f is not None and f.value is not None:
            if diag.reads is not None and diag.reads.group == "main":

                def value(run, d=diag, v=f.value):
                    ds = d.load(run) if run else None
                    return float("nan") if ds is None else float(v(ds))

                stats[diag.title] = value
    return stats


def _values(study: Any, who: str, statistic: Callable[[Path | None], float]) -> np.ndarray:
    return np.asarray([statistic(study.run_dir("main", who, s)) for s in study.seeds], float)


def controls_section(doc: Doc, studies: list[Any]) -> None:
    """Language against each control present, per task and across tasks, in words."""
    present = [c for c in CONTROLS if any(c in s.roles for s in studies)]
    if not present:
        return
    doc.h("What in the pretrained weights matters", 2)
    doc.p(
        "Each row compares the language init with a control, two-sided (`dtlens.stats.compare` "
        "per task, `aggregate` across tasks): a difference means the language weights give "
        "something the control lacks; no difference means what the control keeps suffices "
        "for that statistic (or the seeds cannot tell)."
    )
    tasks = [s.label for s in studies]
    for control in present:
        keeps, lacks = CONTROLS[control]
        doc.h(f"language vs {control}", 3)
        rows, words = [], []
        for name in _statistics(studies[0]):
            per_task: dict[str, Comparison] = {}
            for s in studies:
                if control in s.roles and "language" in s.roles:
                    stat = _statistics(s)[name]
                    per_task[s.label] = compare(
                        _values(s, "language", stat), _values(s, control, stat), "two-sided"
                    )
            if not per_task:
                continue
            agg = aggregate({t: (c.a, c.b) for t, c in per_task.items()}, expect="two-sided")
            shown = direction(agg, "language", control)
            p = f"{agg.p:.3g}" if np.isfinite(agg.p) else "n/a"
            rows.append(
                [
                    name,
                    *(direction(per_task[t], "language", control) if t in per_task else "-"
                      for t in tasks),
                    p,
                    f"**{shown}**",
                ]
            )  # fmt: skip
            if agg.verdict == "holds":
                words.append(
                    f"{name}: {shown} across tasks (p {p}): {lacks} matters here; {keeps} "
                    f"alone does not reproduce language's value."
                )
            else:
                words.append(
                    f"{name}: no difference shown (p {p}): {keeps} may suffice; a claim that "
                    f"needs {lacks} is not supported by this statistic."
                )
        doc.table(["statistic", *tasks, "p (across tasks)", "across tasks"], rows)
        doc.p(f"*{control}* keeps {keeps}, not {lacks}.")
        doc.bullets(words)


def peer_scores(root: Path, dataset: str) -> list[dict]:
    """The last evaluation of each peer DT record (`benchmarks/peer_dt.py --out`) of `dataset`
    under `root/peer/`, in file order."""
    rows = []
    for path in sorted((root / "peer").glob("*.json")):
        record = load_json(path)
        if record.get("dataset") == dataset and record.get("evals"):
            rows.append(record["evals"][-1] | {"seed": record.get("seed")})
    return rows
