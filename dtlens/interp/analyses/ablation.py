"""What the policy needs: each component ablated during evaluation rollouts, and what that does to
the normalized return.

`RUN/diagnostics/ablation.nc` holds, for the run's checkpoint, `score` (component, episode): the
normalized score of every episode with that component ablated, `baseline_score` (episode) on the
same environment seeds unablated, `score_change` (component): the mean paired difference ablated -
baseline, and `score_change_ci` (component, bound): its 95% paired t interval. Attrs: `how`,
`episodes`, `seed`, `epoch`, the run's name, init and dataset.

Mean and resample statistics come from the run's probe windows. Rollouts follow the run's own
evaluation settings (target, episode length, episodes) unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Settings, Table
from dtlens.interp.analyses import READS
from dtlens.interp.inputs import run_attrs
from dtlens.interp.interventions import How, ablate, check_how, parse_components
from dtlens.interp.rollouts import Rollouts, change_errors, change_table, rollout_effect
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run

#: The default (and what `dtlens reproduce` ablates): each block's attention and MLP (the paper's
#: question is about attention), 2 x n_layers components, each one more set of rollouts.
DEFAULT_COMPONENTS = "attns,mlps"
DEFAULT_HOW: How = "mean"
#: `dtlens reproduce` rolls out at most this many episodes of at most this many steps per policy
#: (fewer where the run's own evaluation is shorter), to keep `make demo` short.
REPRODUCE_EPISODES, REPRODUCE_MAX_STEPS = 5, 200


def compute_ablation(
    run: Run,
    epoch: int = -1,
    components: str | Sequence[str] = DEFAULT_COMPONENTS,
    how: How = DEFAULT_HOW,
    episodes: int | None = None,
    seed: int = 0,
    samples: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """Evaluation rollouts of `run`'s checkpoint `epoch` (-1: the last) with each of `components`
    ablated `how` in turn (statistics over `samples` probe windows), paired with the baseline on
    the same env seeds (seed, seed+1, ...); episodes of at most `max_steps` (default: the run's
    evaluation length)."""
    check_how(how)
    (epoch,) = run.resolve_epochs([epoch])
    model = run.load_model(epoch)
    parsed = parse_components(model, components)
    reference = None if how == "zero" else run.windows(samples)
    interventions = {
        c.name: (lambda m, c=c: ablate(m, [c.name], how, reference, seed)) for c in parsed
    }
    ds = rollout_effect(
        model,
        interventions,
        episodes,
        seed,
        rollouts=Rollouts.of(run, max_steps),
        progress=progress,
    )
    ds = ds.rename(intervention="component").assign_coords(
        component_type=("component", [c.kind for c in parsed]),
        layer=("component", [c.layer for c in parsed]),
        head=("component", [c.head for c in parsed]),
    )
    return ds.assign_attrs(run_attrs(run, epoch) | {"how": how})


def plot_ablation(ds: xr.Dataset, path: str | Path) -> Path:
    """The change of normalized score per ablated component with its 95% interval."""
    names = [str(c) for c in ds["component"].values]
    fig, axes = panels(1, 1, size=(max(3.5, 0.45 * len(names) + 1.5), 3.2))
    ax = axes[0, 0]
    x = np.arange(len(names))
    colors = ["C0" if t in ("head", "attn") else "C1" for t in ds["component_type"].values]
    ax.bar(x, ds["score_change"], color=colors, yerr=change_errors(ds), capsize=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, names, fontsize=7, rotation=90)
    ax.set_ylabel("score change (ablated - baseline)", fontsize=8)
    base = float(ds["baseline_score"].mean())
    ax.set_title(
        f"{ds.attrs.get('how', '')} ablation of {ds.attrs.get('run', '')}, epoch "
        f"{ds.attrs.get('epoch', '')}: baseline score {base:.1f}, "
        f"{ds.attrs.get('episodes', '')} episodes",
        fontsize=8,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    title = (
        f"{ds.attrs.get('how', '')} ablation of {ds.attrs.get('run', '')} (epoch "
        f"{ds.attrs.get('epoch', '')}), baseline score {float(ds['baseline_score'].mean()):.1f} "
        f"over {ds.attrs.get('episodes', '')} episodes"
    )
    return change_table(ds, "component", title)


def reproduce_options(settings: Settings, run: Run) -> dict[str, int]:
    """What `dtlens reproduce` rolls out: at most `REPRODUCE_EPISODES` episodes of at most
    `REPRODUCE_MAX_STEPS` steps."""
    how = Rollouts.of(run)
    return {
        "episodes": min(REPRODUCE_EPISODES, how.episodes),
        "max_steps": min(REPRODUCE_MAX_STEPS, how.max_steps),
    }


DIAGNOSTIC = Diagnostic(
    name="ablation",
    title="What the policy needs",
    compute=compute_ablation,
    plot=plot_ablation,
    summary=summary,
    reads=READS,
    options=reproduce_options,
)
