"""The report's evidence for a preset's fine-tuning budget (`dtlens laptop-budget`): per task and
learning rate the chosen B, the budget run's action errors at each candidate and at 4 x B and
its curves (`plot_budgets`), and the final action error of every seed's random-init K=20 run
at B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtlens.experiments.laptop_budget import METRICS, study_lr
from dtlens.io import load_json
from dtlens.plotting import panels, save_figure
from dtlens.report.document import Doc

#: Where the budget rule's per-epoch error is measured, by its metrics.nc name.
WHERE = {
    "action_error": "on the training batches",
    "heldout_action_error": "on the fixed held-out windows of `mini/<task>-medium-heldout`",
}


def convergence_section(doc: Doc, root: Path, studies: list[Any]) -> None:
    """The section, when `root/budget.json` exists."""
    path = root / "budget.json"
    if not path.is_file():
        return
    budgets = load_json(path)
    lr = study_lr(budgets)
    doc.h("The budget B: convergence of random-init runs", 2)
    rows = []
    for s in studies:
        for rate, entry in budgets.get(s.label, {}).items():
            factor = entry["rule"]["factor"]
            for b, row in entry["candidates"].items():
                gap = (row["error"] - row["error_long"]) / row["error_long"]
                rows.append(
                    [
                        s.label,
                        rate,
                        b,
                        f"{row['error']:.5f}",
                        f"{int(b) * factor}",
                        f"{row['error_long']:.5f}",
                        f"{gap:+.1%}",
                        "**B**" if rate == lr and entry["chosen"] == int(b) else "",
                    ]
                )
    figure = plot_budgets(budgets, root / "budget.png")
    doc.figure(figure, "Budget runs: action error per epoch at each learning rate", root)
    doc.table(
        ["task", "learning rate", "candidate B", "action error at B", "4 x B",
         "action error at 4 x B", "relative gap", "chosen"],
        rows,
    )  # fmt: skip
    rule = next(e for entries in budgets.values() for e in entries.values())["rule"]
    metric = rule["metric"]
    measured = WHERE[metric]
    rate_note = (
        f"The study's learning rate is {lr}, the smallest at which every task's run converged."
        if lr
        else "No learning rate has a converged run on every task yet."
    )
    doc.p(
        f"The K=20 random-init run of seed 666 at each learning rate, trained candidate by "
        f"candidate to 4 x B (epochs of {rule['epoch_steps']} steps): the action MSE {measured} "
        f"averaged over the {rule['window']} steps that end at B and at 4 x B; B is the smallest "
        f"candidate within {rule['tolerance']:.0%} (`dtlens laptop-budget`; its command per task "
        f"and rate in budget.json). {rate_note}"
    )
    rows = []
    for s in studies:
        runs = {seed: s.run_dir("main", "random", seed) for seed in s.seeds}
        rows.append(
            [
                s.label,
                *(f"{seed}: {s.final_action_error(r, metric):.5f}" for seed, r in runs.items()),
            ]
        )
    doc.table(["task", *(f"seed {i + 1}" for i in range(max(len(s.seeds) for s in studies)))], rows)
    doc.p(f"Final action MSE {measured} (last epoch) of each seed's random-init K=20 run at B.")


def plot_budgets(budgets: dict, path: Path) -> Path:
    """The budget runs' per-epoch action errors (training batches solid, held-out windows dashed),
    one panel per task and one colour per learning rate, log scale, with each candidate's error
    at B and at 4 x B marked; written to `path` (png)."""
    fig, axes = panels(1, len(budgets), size=(4.2, 3.2))
    for ax, (task, entries) in zip(axes[0], budgets.items(), strict=True):
        for i, (rate, entry) in enumerate(sorted(entries.items(), key=lambda e: float(e[0]))):
            step = entry["rule"]["epoch_steps"]
            colour = f"C{i}"
            for metric, style in zip(METRICS, ("-", "--"), strict=True):
                curve = entry["curves"][metric]
                steps = [(j + 1) * step for j in range(len(curve))]
                ax.plot(steps, curve, style, color=colour, lw=1.2,
                        label=f"lr {rate}" if metric == METRICS[0] else None)  # fmt: skip
            for b, row in entry["candidates"].items():
                ends = [int(b), int(b) * entry["rule"]["factor"]]
                ax.plot(ends, [row["error"], row["error_long"]], "o", color=colour, ms=4)
        ax.set_yscale("log")
        ax.set_title(f"{task} (dots: the rule's error at B and 4 x B)", fontsize=9)
        ax.set_xlabel("training steps", fontsize=8)
        ax.set_ylabel("action MSE (solid: training, dashed: held-out)", fontsize=7)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
