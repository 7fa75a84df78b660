"""The probe analysis: `linear_probe` of a run's residual stream for state, return-to-go and
timestep, its figure, table and finding (state R^2 in the blocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Finding, Table
from dtlens.interp.analyses import READS
from dtlens.interp.inputs import as_numpy, residual_stream, run_attrs
from dtlens.interp.probe import linear_probe
from dtlens.model.dt import TOKEN_TYPES
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run


def compute_probe(
    run: Run, epoch: int = -1, samples: int | None = None, alpha: float = 1.0, seed: int = 0
) -> xr.Dataset:
    """Probes of `run`'s residual stream (checkpoint `epoch`, -1: the last) on its probe windows
    for each token's state features, return-to-go and episode timestep."""
    (epoch,) = run.resolve_epochs([epoch])
    batch = run.windows(samples)
    resid = as_numpy(residual_stream(run.load_model(epoch), batch))
    position = np.arange(resid.shape[2])
    acts = xr.DataArray(
        resid,
        dims=("sample", "layer", "position", "d_model"),
        coords={
            "layer": np.arange(resid.shape[1]),
            "token_type": ("position", np.array(TOKEN_TYPES)[position % 3]),
        },
    )

    def per_token(x: np.ndarray) -> np.ndarray:  # (sample, step, ...) -> (sample, position, ...)
        return np.repeat(x, 3, axis=1)

    targets = {
        "state": xr.DataArray(per_token(as_numpy(batch.states)), dims=("sample", "position", "f")),
        "return_to_go": xr.DataArray(
            per_token(as_numpy(batch.returns_to_go[..., 0])), dims=("sample", "position")
        ),
        "timestep": xr.DataArray(
            per_token(batch.timesteps.cpu().numpy().astype(float)), dims=("sample", "position")
        ),
    }
    valid = xr.DataArray(per_token(batch.attention_mask.cpu().numpy()), dims=("sample", "position"))
    results = [linear_probe(acts, y, valid=valid, alpha=alpha, seed=seed) for y in targets.values()]
    ds = xr.concat(results, dim=xr.DataArray(list(targets), dims="target", name="target"))
    return ds.assign_attrs(
        results[0].attrs | run_attrs(run, epoch) | {"samples": len(batch)}, alpha=alpha
    )


def state_r2_in_blocks(ds: xr.Dataset) -> float:
    """Held-out R^2 of the state features at the state tokens, mean over the blocks' outputs."""
    return float(ds["r2"].sel(target="state", token_type="state").sel(layer=slice(1, None)).mean())


def plot_probe(ds: xr.Dataset, path: str | Path) -> Path:
    """R^2 per layer, one panel per target, one line per token type (dotted: shuffled)."""
    fig, axes = panels(1, ds.sizes["target"], size=(3.0, 2.8))
    for ax, target in zip(axes[0], ds["target"].values, strict=True):
        for c, kind in enumerate(ds["token_type"].values):
            sel = ds.sel(target=target, token_type=kind)
            ax.plot(ds["layer"], sel["r2"], "o-", color=f"C{c}", label=f"at {kind} tokens")
            ax.plot(ds["layer"], sel["r2_shuffled"], ":", color=f"C{c}")
        ax.set(xlabel="blocks passed", ylabel="held-out R^2", title=str(target), ylim=(-0.5, 1.05))
        ax.set_xticks(ds["layer"].values)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"linear probes of {ds.attrs.get('run', '')}, epoch {ds.attrs.get('epoch', '')} "
        "(dotted: shuffled targets)",
        fontsize=10,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    rows = [
        [
            str(target),
            str(kind),
            *(float(ds["r2"].sel(target=target, token_type=kind, layer=i)) for i in ds["layer"]),
            float(ds["r2_shuffled"].sel(target=target, token_type=kind).max()),
        ]
        for target in ds["target"].values
        for kind in ds["token_type"].values
    ]
    header = [
        "target",
        "at tokens",
        *("R^2 embeddings" if i == 0 else f"R^2 block {i - 1}" for i in ds["layer"].values),
        "max R^2 shuffled",
    ]
    title = (
        f"linear probes of {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')}, "
        f"{ds.attrs.get('test_samples', '?')} held-out windows, ridge alpha "
        f"{ds.attrs.get('alpha', '?')})"
    )
    return Table(title, header, rows)


DIAGNOSTIC = Diagnostic(
    name="probe",
    title="Linear probes",
    compute=compute_probe,
    plot=plot_probe,
    summary=summary,
    finding=Finding(
        claim=(
            "Do the blocks of a language-pretrained DT keep the current state linearly readable "
            "to a different degree than those of a random-init one?"
        ),
        short="state R^2 in blocks",
        statistic="held-out R^2 of the state features at state tokens, mean over block outputs",
        expect="two-sided",  # a question, not a claim of the paper
        value=state_r2_in_blocks,
    ),
    reads=READS,
)
