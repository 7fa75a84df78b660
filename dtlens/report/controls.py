"""The report's sections for presets with controls (`mini`, `laptop`): "What in the pretrained
weights matters" (language against each control, per task and across tasks) and the peer DT's
score.

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
from dtlens.experiments.preset import CONTROLS
from dtlens.io import load_json
from dtlens.report.components import direction
from dtlens.report.document import Doc
from dtlens.stats import Comparison, aggregate, compare

#: A table cell of a condition the preset cut on that task (`Preset.cuts`; the report's first
#: lines say which and why).
CUT = "cut (PLAN)"


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
    for control in present:
        keeps, lacks = CONTROLS[control]
        doc.h(f"language vs {control}", 3)
        rows = _comparisons(studies, "language", control)
        labels = [s.label for s in studies]
        if len(studies) > 1:
            doc.table(["statistic", *labels, "p (across tasks)", "across tasks"],
                      [r[:-1] for r in rows])  # fmt: skip
        else:  # one task: the aggregate is that task's comparison (its p)
            doc.table(["statistic", *labels, "p"], [r[:-2] for r in rows])
        doc.p(f"*{control}* keeps {keeps}, not {lacks}.")
        ran = [s.label for s in studies if control in s.roles]
        cut = [s.label for s in studies if control in s.cut]
        across = "across tasks" if len(ran) == len(studies) > 1 else f"on {', '.join(ran)}"
        if cut:
            doc.p(
                f"*{control}* was cut on {', '.join(cut)} (see the first lines): 'across tasks' "
                f"combines {', '.join(ran)} only."
            )
        doc.bullets(
            [
                f"{name}: {shown} {across} (p {p}): {lacks} matters here; with {keeps} "
                "alone, language's value is not reproduced."
                if holds
                else f"{name}: no difference shown {across} (p {p}): {keeps} may suffice; a "
                f"claim that needs {lacks} is not supported by this statistic."
                for name, *_, p, shown, holds in rows
            ]
        )
    sensitivity_section(doc, studies)


def sensitivity_section(doc: Doc, studies: list[Any]) -> None:
    """Language vs random with the DT's own layers initialised as GPT-2 (`--dt-init gpt2`)
    beside the same comparison under the study's init, where the gpt2-init runs exist."""
    a, b = "language gpt2-init", "random gpt2-init"
    chosen = [s for s in studies if a in s.roles and b in s.roles]
    if not chosen:
        return
    doc.h("Sensitivity to the DT's own init", 3)
    released = {r[0]: r for r in _comparisons(chosen, "language", "random")}
    rows, flips = [], []
    for name, *_, p, shown, _holds in _comparisons(chosen, a, b):
        before, after = released[name][-2], shown.replace(" gpt2-init", "")
        rows.append([name, before, p, f"**{after}**"])
        if before != after:
            flips.append(name)
    doc.table(["statistic", "released DT init", "p (gpt2)", "gpt2 DT init"], rows)
    doc.p(
        f"Language vs random on {', '.join(s.label for s in chosen)}, two-sided, with the DT's "
        "own layers as the released code (PyTorch defaults) and as GPT-2 (N(0, 0.02)). "
        + (
            f"Reading changes with the DT's init: {', '.join(flips)}; those findings are about "
            "the init of the DT's layers, not about pretraining."
            if flips
            else "No reading changes with the DT's init."
        )
    )


def _comparisons(studies: list[Any], a: str, b: str) -> list[list[Any]]:
    """Per statistic: [name, per task reading..., p across tasks, reading across tasks, whether
    a difference holds], `a` vs `b` two-sided per task (`compare`) and across (`aggregate`)."""
    rows = []
    for name in _statistics(studies[0]):
        per_task: dict[str, Comparison] = {}
        for s in studies:
            if a in s.roles and b in s.roles:
                stat = _statistics(s)[name]
                per_task[s.label] = compare(_values(s, a, stat), _values(s, b, stat), "two-sided")
        if not per_task:
            continue
        agg = aggregate({t: (c.a, c.b) for t, c in per_task.items()}, expect="two-sided")
        p = f"{agg.p:.3g}" if np.isfinite(agg.p) else "n/a"
        readings = [_task_reading(per_task.get(s.label), s, a, b) for s in studies]
        rows.append([name, *readings, p, direction(agg, a, b), agg.verdict == "holds"])
    return rows


def _task_reading(c: Comparison | None, study: Any, a: str, b: str) -> str:
    """What `a` vs `b` shows on one task: its direction, `CUT` where the preset cut either of
    them, '-' where either is missing otherwise."""
    if c is not None:
        return direction(c, a, b)
    return CUT if a in study.cut or b in study.cut else "-"


def peer_scores(root: Path, dataset: str) -> list[dict]:
    """The last evaluation of each peer DT record (`benchmarks/peer_dt.py --out`) of `dataset`
    under `root/peer/`, in file order."""
    rows = []
    for path in sorted((root / "peer").glob("*.json")):
        record = load_json(path)
        if record.get("dataset") == dataset and record.get("evals"):
            rows.append(record["evals"][-1] | {"seed": record.get("seed")})
    return rows
