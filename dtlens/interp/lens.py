"""The action lens: the model's final norm and action head applied to the residual stream after
every block (a logit lens for Decision Transformers).

`action(sample, layer, action_dim)` is read at the last timestep's state token, where the model
reads its action; `layer` counts the blocks the stream has passed (0: the token embeddings,
n_layers: the output, equal to the model's own action). `error(layer)` is the mean squared error
against the dataset's action at that timestep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from dtlens.data.windows import Batch
from dtlens.diagnostics.contract import Diagnostic, Finding, Table
from dtlens.interp.inputs import (
    as_numpy,
    eval_mode,
    last_state_position,
    residual_stream,
    run_attrs,
)
from dtlens.model.dt import DecisionTransformer
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run

#: The lens error's "half-way" point: where it first falls half of the way to the output's.
HALF = 0.5


@torch.no_grad()
def action_lens(model: DecisionTransformer, batch: Batch) -> xr.Dataset:
    """`action(sample, layer, action_dim)`: the action head (and tanh) on the final norm of the
    stream after `layer` blocks, at the last timestep; `target` is the dataset's action and
    `error(layer)` the mean squared error to it."""
    with eval_mode(model):
        resid = residual_stream(model, batch)[:, :, last_state_position(batch)]
        action = model.predict_action(model.backbone.ln_final(resid))
    if model.cfg.action_tanh:
        action = torch.tanh(action)
    action, target = as_numpy(action), as_numpy(batch.actions[:, -1])
    error = ((action - target[:, None]) ** 2).mean(axis=(0, 2))
    return xr.Dataset(
        {
            "action": (("sample", "layer", "action_dim"), action),
            "target": (("sample", "action_dim"), target),
            "error": (("layer",), error),
        },
        coords={
            "sample": np.arange(len(batch)),
            "layer": np.arange(model.cfg.n_layers + 1),
            "action_dim": np.arange(model.cfg.act_dim),
        },
    )


def half_error_depth(ds: xr.Dataset) -> float:
    """The depth (in blocks, interpolated between layers) where the lens error first falls half
    of the way from the embeddings' error to the output's; 0 when the blocks do not lower it."""
    e = ds["error"].values
    goal = e[-1] + HALF * (e[0] - e[-1])
    if e[0] <= goal:
        return 0.0
    i = int(np.flatnonzero(e <= goal)[0])
    return float(i - 1 + (e[i - 1] - goal) / (e[i - 1] - e[i]))


def compute_lens(run: Run, epoch: int = -1, samples: int | None = None) -> xr.Dataset:
    """The action lens of `run`'s checkpoint `epoch` (-1: the last) on its probe windows."""
    (epoch,) = run.resolve_epochs([epoch])
    ds = action_lens(run.load_model(epoch), run.windows(samples))
    return ds.assign_attrs(run_attrs(run, epoch) | {"samples": ds.sizes["sample"]})


def plot_lens(ds: xr.Dataset, path: str | Path) -> Path:
    """The lens error per layer, and each action dimension's lens reading of one sample."""
    fig, axes = panels(1, 2, size=(3.6, 3.0))
    layers = ds["layer"].values
    axes[0, 0].plot(layers, ds["error"].values, "o-")
    axes[0, 0].axvline(half_error_depth(ds), color="grey", ls=":", label="half-error depth")
    axes[0, 0].set(xlabel="blocks passed", ylabel="action MSE", title="lens error", yscale="log")
    axes[0, 0].legend(fontsize=7)
    for d in ds["action_dim"].values:
        line = axes[0, 1].plot(layers, ds["action"].isel(sample=0, action_dim=d), "o-")
        target = float(ds["target"].isel(sample=0, action_dim=d))
        axes[0, 1].axhline(target, color=line[0].get_color(), ls=":")
    axes[0, 1].set(xlabel="blocks passed", ylabel="action", title="sample 0 (dotted: target)")
    for ax in axes[0]:
        ax.set_xticks(layers)
    fig.suptitle(
        f"action lens of {ds.attrs.get('run', '')}, epoch {ds.attrs.get('epoch', '')}", fontsize=10
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    final = ds["action"].isel(layer=-1)
    rows = [
        [
            "embeddings" if layer == 0 else f"after block {layer - 1}",
            float(ds["error"].sel(layer=layer)),
            float(abs(ds["action"].sel(layer=layer) - final).mean()),
        ]
        for layer in ds["layer"].values
    ]
    title = (
        f"action lens of {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')}), "
        f"half-error depth {half_error_depth(ds):.2f} blocks"
    )
    return Table(title, ["layer", "action MSE", "mean |action - output|"], rows)


DIAGNOSTIC = Diagnostic(
    name="action_lens",
    title="Action lens",
    compute=compute_lens,
    plot=plot_lens,
    summary=summary,
    finding=Finding(
        claim=(
            "Is the action decided at a different depth in a language-pretrained DT than in a "
            "random-init one?"
        ),
        short="half-error depth",
        statistic=(
            "blocks (interpolated) until the action lens's MSE falls half of the way from the "
            "embeddings' to the output's"
        ),
        expect="two-sided",  # a question, not a claim of the paper
        value=half_error_depth,
    ),
)
