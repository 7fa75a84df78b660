"""The reproduction's report: Table 1, then one section per registered diagnostic (the paper's
claim, our tables and figures, the finding's per-seed statistic and its verdict), then a summary.
With several tasks, Table 1 across tasks comes first and each finding's verdicts per task and
aggregated across tasks (`dtlens.stats.aggregate`) come last.

Every verdict is `dtlens.stats.compare` on per-seed values of the statistic the diagnostic
defines (`Diagnostic.finding`): holds / contradicted / undetermined, with the effect, its 95%
interval and the one-sided p. `write_report(DIR)` rebuilds `DIR/report.md` and `report.html`
from the saved results alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.claims import TABLE1, TABLE1_K1
from dtlens.diagnostics.contract import GROUP_CONTEXT, Diagnostic, Finding, RunGroup, RunKey, Table
from dtlens.diagnostics.registry import DIAGNOSTICS
from dtlens.experiments.reproduce import recorded_commands
from dtlens.interp.registry import ANALYSES
from dtlens.io import load_json, open_netcdf, write_atomic
from dtlens.report.components import components_section, direction
from dtlens.report.controls import CUT, controls_section, peer_scores
from dtlens.report.convergence import convergence_section
from dtlens.report.document import Doc
from dtlens.report.interventions import policy_section
from dtlens.stats import Comparison, aggregate

ROLES = ("random", "language", "image")
#: `dtlens explore`'s default port: the report links to the explorer there.
EXPLORER_PORT = 8765


def _open(path: Path) -> xr.Dataset | None:
    if not path.is_file():
        return None
    with open_netcdf(path) as ds:
        return ds.load()


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{mean:.1f}" if std is None or not np.isfinite(std) else f"{mean:.1f} ± {std:.1f}"


def _role_order(role: str) -> tuple[int, bool, str]:
    return (ROLES.index(role) if role in ROLES else len(ROLES), " " in role, role)


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def verdict_text(c: Comparison) -> str:
    return f"**{c.verdict}**"


class Study:
    """One dataset's results inside a reproduction folder, read by group, role and seed."""

    def __init__(
        self,
        root: Path,
        label: str,
        roles: dict,
        inits: dict,
        dataset: str = "",
        cut: tuple[str, ...] = (),
    ):
        self.root, self.label, self.inits, self.dataset = root, label, inits, dataset
        #: The conditions the preset cut on this dataset (`Preset.cuts`): no runs.
        self.cut = cut
        #: Run names by group and key (reproduce.json's "roles", `RunKey.label` parsed back).
        self.names: dict[str, dict[RunKey, str]] = {
            group: {RunKey.parse(label, group): name for label, name in runs.items()}
            for group, runs in roles.items()
        }
        self.folder = root / label
        self.runs = self.folder / "runs"
        self.seeds = sorted({key.seed for key in self.names["main"]})
        #: The K=20 roles: the three inits, then any others (controls, DT-init variants).
        self.roles = tuple(sorted({key.role for key in self.names["main"]}, key=_role_order))

    def run_dir(
        self, group: RunGroup, role: str, seed: int, context: int | None = None
    ) -> Path | None:
        """The finished run of `role` and `seed` in `group` (context length K: the group's)."""
        key = RunKey(role, seed, GROUP_CONTEXT[group] if context is None else context)
        name = self.names.get(group, {}).get(key)
        path = self.runs / name if name else None
        return path if path is not None and (path / "metrics.nc").is_file() else None

    def roles_read(self, diag: Diagnostic) -> tuple[str, ...]:
        """The roles whose runs a run diagnostic reads (`Diagnostic.reads`), in order."""
        return diag.reads.roles or ROLES

    def analysed(self, diag: Diagnostic, who: str, seed: int) -> Path | None:
        """The run a run diagnostic analysed for `who` and `seed`."""
        return self.run_dir(diag.reads.group, who, seed, diag.reads.context)

    def per_seed(
        self, diag: Diagnostic, statistic: Callable[[xr.Dataset], float] | None = None
    ) -> dict[str, np.ndarray]:
        """Per role, the per-seed values of `diag`'s finding: a run diagnostic's `statistic`
        (default: the finding's value) of each seed's result, NaN where there is none, for every
        role it reads and the two compared; a study diagnostic's `per_seed` of the compared
        roles (none without its result)."""
        f = diag.finding
        if diag.scope == "study":
            ds = diag.load(self.folder)
            return (
                {} if ds is None else {who: np.asarray(f.per_seed(ds, who)) for who in (f.a, f.b)}
            )
        values = {}
        for who in dict.fromkeys((*self.roles_read(diag), f.a, f.b)):
            runs = [self.analysed(diag, who, seed) for seed in self.seeds]
            results = [diag.load(run) if run else None for run in runs]
            values[who] = _per_seed(statistic or f.value, results)
        return values

    def final_score(self, run: Path | None, best: bool = False) -> tuple[float, float]:
        """(score, its std over episodes) of the last evaluated epoch, or of the best one (the
        paper code's choice)."""
        ds = _open(run / "metrics.nc") if run else None
        if ds is None or "score_mean" not in ds:
            return float("nan"), float("nan")
        scores = ds.score_mean.values
        finite = np.flatnonzero(np.isfinite(scores))
        if not finite.size:
            return float("nan"), float("nan")
        i = finite[np.argmax(scores[finite])] if best else finite[-1]
        return float(scores[i]), float(ds.score_std.values[i])

    def final_action_error(self, run: Path | None, metric: str = "action_error") -> float:
        """The last epoch's `metric` (action_error: the training batches'; heldout_action_error:
        the `--heldout` windows'), NaN where the run or its metric is missing."""
        ds = _open(run / "metrics.nc") if run else None
        return float(ds[metric][-1]) if ds is not None and metric in ds else float("nan")


def write_report(root: str | Path) -> Path:
    root = Path(root)
    meta = load_json(root / "reproduce.json")
    doc = Doc(f"dtlens reproduction: {meta['preset']} preset")
    minutes = meta.get("wall_time_s", float("nan")) / 60
    doc.p(
        f"Takagi (NeurIPS 2022), *On the Effect of Pre-training for Transformer in Different "
        f"Modality on Offline RL*, reproduced with dtlens. Preset **{meta['preset']}**, datasets "
        f"{', '.join(meta['datasets'].values())}, seeds {meta['seeds']}, inits: random = "
        f"`{meta['inits']['random']}`, language = `{meta['inits']['language']}`, image = "
        f"`{meta['inits']['image']}`. Wall time {minutes:.1f} min (all invocations)."
    )
    if commands := recorded_commands(meta):
        doc.p(
            ("Command: " if len(commands) == 1 else "Commands: ")
            + "; ".join(f"`{c}`" for c in commands)
        )
    if meta.get("cut_note"):
        doc.p(f"Conditions: {meta['cut_note']}.")
    doc.p(
        "Each verdict compares per-seed values of one statistic between two inits with "
        "`dtlens.stats.compare`: **holds** when the 95% interval of the difference of means "
        "excludes 0 on the paper's side, **contradicted** when it excludes 0 on the other side, "
        "**undetermined** otherwise (and always with fewer than 2 seeds a side)."
    )
    doc.p(
        f"Browse every run, epoch and head (attention, attribution, lens, patching, CKA, "
        f"gradients, rollout replay): `dtlens explore {root}`, then open "
        f"[the explorer](http://127.0.0.1:{EXPLORER_PORT}/)."
    )
    summary: list[list[object]] = []
    by_finding: dict[str, dict[str, Comparison]] = {}  # diagnostic -> task -> comparison
    studies = [
        Study(
            root,
            label,
            roles,
            meta["inits"],
            meta["datasets"].get(label, ""),
            tuple(meta.get("cuts", {}).get(label, ())),
        )
        for label, roles in meta["roles"].items()
    ]
    convergence_section(doc, root, studies)
    if len(studies) > 1:
        _table1_tasks(doc, studies)
    for study in studies:
        doc.h(f"{study.label}", 2)
        _table1(doc, study)
        _no_clip(doc, study)
        for diag in DIAGNOSTICS.values():
            row, c = section(doc, study, diag)
            summary.append([study.label, *row])
            if c is not None:
                by_finding.setdefault(diag.name, {})[study.label] = c
        rows, comparisons = components_section(doc, study)
        summary += [[study.label, *row] for row in rows]
        for name, c in comparisons.items():
            by_finding.setdefault(name, {})[study.label] = c
        policy_section(doc, study)
    doc.h("Summary", 2)
    doc.table(
        [
            "dataset",
            "finding",
            "paper",
            "statistic (mean per init)",
            "effect [95% CI]",
            "p",
            "verdict",
        ],
        summary,
    )
    if len(studies) > 1:
        _across_tasks(doc, by_finding, [s.label for s in studies])
    controls_section(doc, studies)
    write_atomic(root / "report.md", lambda p: p.write_text(doc.markdown()))
    write_atomic(root / "report.html", lambda p: p.write_text(doc.html()))
    return root / "report.md"


def _table1_tasks(doc: Doc, studies: list[Study]) -> None:
    """Table 1 for every task: K=20 score of the last epoch here beside the paper's."""
    doc.h("Normalized score across tasks (Table 1)", 2)
    rows = []
    for who in dict.fromkeys(r for s in studies for r in s.roles):
        row: list[object] = [who]
        for s in studies:
            here = [s.final_score(s.run_dir("main", who, seed))[0] for seed in s.seeds]
            paper = _pm(*TABLE1.get(s.label, {}).get(who, (None, None)))
            row += [CUT if who in s.cut else _pm(*_mean_std(here)), paper]
        rows.append(row)
    header = ["init"] + [f"{s.label} ({src})" for s in studies for src in ("here", "paper")]
    doc.table(header, rows)
    doc.p(
        "D4RL normalized score, K=20, last epoch, mean ± std over seeds (details per task below)."
    )


def _across_tasks(doc: Doc, by_finding: dict[str, dict[str, Comparison]], tasks: list[str]) -> None:
    """Each finding's verdict per task and aggregated across tasks (`dtlens.stats.aggregate`)."""
    doc.h("Across tasks", 2)
    doc.p(
        "The aggregate is `dtlens.stats.aggregate`: each task's Welch t test is turned into a "
        "z-score and the tasks are combined by Stouffer's method (p and verdict; for one task "
        "exactly the task's own). The effect is each task's difference of means divided by its "
        "pooled within-init standard deviation (so tasks on different scales count equally), "
        "averaged over tasks, with the 95% interval of that test. Tasks with fewer than 2 seeds "
        "a side or no spread are left out. Small effects in the same direction on every task "
        "can hold together although each task alone is undetermined. The analyses that are not "
        "the paper's claims are read two-sided, as in each task's section."
    )
    rows = []
    for name, per_task in by_finding.items():
        f = ANALYSES[name].finding
        agg = aggregate({t: (c.a, c.b) for t, c in per_task.items()}, expect=f.expect)
        interval = (
            f"{agg.effect:+.3g} [{agg.ci[0]:+.3g}, {agg.ci[1]:+.3g}]"
            if np.isfinite(agg.ci[0])
            else "n/a"
        )
        rows.append(
            [
                ANALYSES[name].title,
                "(not in the paper; two-sided)"
                if f.expect == "two-sided"
                else f"{f.a} {_sign(f.expect)} {f.b}",
                *(_reading(per_task[t], f) if t in per_task else "-" for t in tasks),
                interval,
                f"{agg.p:.3g}" if np.isfinite(agg.p) else "n/a",
                f"**{_reading(agg, f)}**",
            ]
        )
    doc.table(
        ["finding", "paper", *tasks, "standardised effect [95% CI]", "p", "across tasks"], rows
    )


def _table1(doc: Doc, s: Study) -> None:
    doc.h("Normalized score (Table 1)", 3)
    paper, paper_k1 = TABLE1.get(s.label, {}), TABLE1_K1.get(s.label, {})
    cut = [who for who in s.cut if who in s.inits]  # the K=20 roles cut here
    rows = []
    for who in s.roles:
        last = [s.final_score(s.run_dir("main", who, seed)) for seed in s.seeds]
        best = [s.final_score(s.run_dir("main", who, seed), best=True)[0] for seed in s.seeds]
        k1 = [s.final_score(s.run_dir("no_context", who, seed, context=1))[0] for seed in s.seeds]
        rows.append(
            [
                who,
                _pm(*_mean_std([m for m, _ in last])),
                _pm(_mean_std([e for _, e in last])[0], None),  # a cut role has none
                _pm(*_mean_std(best)),
                _pm(*paper.get(who, (None, None))),
                _pm(*_mean_std(k1)) if who in ("random", "language") else "-",
                _pm(*paper_k1.get(who, (None, None))) if who in ("random", "language") else "-",
            ]
        )
    rows += [[who, CUT, "-", "-", _pm(*paper.get(who, (None, None))), "-", "-"] for who in cut]
    doc.table(
        [
            "init",
            "K=20 (here)",
            "episode std (mean over seeds)",
            "K=20, best epoch (here)",
            "K=20 (paper)",
            "K=1 (here)",
            "K=1 (paper)",
        ],
        rows,
    )
    doc.p(
        f"D4RL normalized score (D4RL reference returns) of the last epoch, mean ± std over "
        f"{len(s.seeds)} seeds (as the paper's ±); beside it the spread over evaluation episodes "
        "within a seed. 'Best epoch' is the paper code's choice (the maximum over evaluated "
        "epochs, optimistic)."
    )
    peer = peer_scores(s.root, s.dataset)
    if peer:
        scores = [r["score_mean"] for r in peer]
        doc.p(
            f"Peer DT (CORL's, `benchmarks/peer_dt.py`) at random init on the same data: "
            f"{_pm(*_mean_std(scores))} after {peer[0]['step']} steps, seeds "
            f"{[r['seed'] for r in peer]}."
        )


def _no_clip(doc: Doc, s: Study) -> None:
    """The image init with and without gradient clipping (the paper's follow-up to finding 4)."""
    rows = []
    for label, role in (("clipped at 0.25", "main"), ("no clipping", "no_clip")):
        runs = [s.run_dir(role, "image", seed) for seed in s.seeds]
        if not any(runs):
            return
        rows.append(
            [
                label,
                _pm(*_mean_std([s.final_action_error(r) for r in runs])),
                _pm(*_mean_std([s.final_score(r)[0] for r in runs])),
            ]
        )
    doc.h("Image init without gradient clipping", 3)
    doc.table(["image init", "final action MSE", "final score"], rows)
    doc.p(f"Mean ± std over {len(s.seeds)} seeds.")


def _table(doc: Doc, table: Table) -> None:
    doc.p(f"*{table.title}*")
    doc.table(table.header, table.rows)


def section(doc: Doc, s: Study, diag: Diagnostic) -> tuple[list[str], Comparison | None]:
    """One diagnostic's section; returns its summary row and its finding's comparison."""
    doc.h(diag.title, 3)
    f = diag.finding
    if f is not None:
        doc.p(f"*Paper:* {f.claim}")
    values: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    if diag.scope == "study":
        ds = diag.load(s.folder)
        if ds is None:
            doc.p("*(not available)*")
        else:
            _table(doc, diag.summary(ds))
            doc.figure(diag.png_path(s.folder), diag.title, s.root)
            if f is not None:
                values = s.per_seed(diag)
    else:
        first = s.seeds[0]
        for who in s.roles_read(diag):
            run = s.analysed(diag, who, first)
            ds = diag.load(run) if run else None
            if ds is None:
                continue
            doc.p(f"**{who}** init, seed {first} (the other seeds: their run folders).")
            _table(doc, diag.summary(ds))
            doc.figure(diag.png_path(run), f"{diag.name}, {who} init, seed {first}", s.root)
        if f is not None:
            values = s.per_seed(diag)
            if f.correct is not None:
                correct = s.per_seed(diag, f.correct)
    if f is None:
        return [diag.title, "", "", "", "", ""], None
    c = f.compare(values.get(f.a, []), values.get(f.b, []))
    rows = list(values.items()) + [(f"{who} (correct variant)", v) for who, v in correct.items()]
    per_seed_rows = [
        [who, *(float(x) for x in v), _fmt(np.nanmean(v) if np.isfinite(v).any() else np.nan)]
        for who, v in rows
    ]
    width = max((len(v) for v in values.values()), default=0)
    doc.table(["init", *[f"seed {i + 1}" for i in range(width)], "mean"], per_seed_rows)
    doc.p(
        f"Statistic: {f.statistic}. The paper: {f.a} {_sign(f.expect)} {f.b}. "
        f"{c.describe()} → {verdict_text(c)}."
    )
    if correct:
        c_correct = f.compare(correct.get(f.a, []), correct.get(f.b, []))
        doc.p(
            f"Correct variant: {f.correct_statistic}. {c_correct.describe()} → "
            f"{verdict_text(c_correct)}."
        )
    means = _means(values)
    if correct:
        means += f"; correct variant: {_means(correct)}, {c_correct.verdict}"
    interval = (
        f"{c.effect:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}]" if np.isfinite(c.effect) else "n/a"
    )
    p = f"{c.p:.3g}" if np.isfinite(c.p) else "n/a"
    row = [diag.title, f"{f.a} {_sign(f.expect)} {f.b}", means, interval, p, verdict_text(c)]
    return row, c


def _means(values: dict[str, np.ndarray]) -> str:
    return ", ".join(
        f"{who} {_fmt(np.nanmean(v))}" for who, v in values.items() if np.isfinite(v).any()
    )


def _per_seed(
    statistic: Callable[[xr.Dataset], float], results: list[xr.Dataset | None]
) -> np.ndarray:
    """`statistic` of each seed's result, NaN where there is none."""
    return np.asarray([np.nan if ds is None else statistic(ds) for ds in results], dtype=float)


def _reading(c: Comparison, f: Finding) -> str:
    """A paper claim's verdict, or what a two-sided question shows."""
    return direction(c, f.a, f.b) if f.expect == "two-sided" else c.verdict


def _sign(expect: str) -> str:
    return "<" if expect == "less" else ">"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else "n/a"
