"""The paper's early-phase gradient analysis on a run checkpoint (epoch 1 by default).

Per sample of the probe batch: the gradient norm of its action loss before and after clipping
(clipping per sample, as `clip_grad_norm_` on a one-sample batch), each parameter tensor's norm
and share of the squared norm; over the first `n_confusion` samples, gradient confusion (the
minimum pairwise cosine) and every pairwise cosine. Clipping scales a whole gradient, so it changes
neither the shares nor the cosines. The per-sample gradients are streamed tensor by tensor into a
Gram matrix (`GramAccumulator`): the (n, P) gradient matrix is never held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

import dtlens
from dtlens.capture import run_batch
from dtlens.data.windows import Batch
from dtlens.diagnostics.gradients import GramAccumulator, clip_coefficients, share_of_norm
from dtlens.diagnostics.per_sample import GroupBy, iter_per_sample_grads
from dtlens.errors import DtlensError
from dtlens.io import save_netcdf
from dtlens.model.dt import DecisionTransformer
from dtlens.train.run import Run


def gradient_stats(
    model: DecisionTransformer,
    batch: Batch,
    n_confusion: int = 50,
    clip: float = 0.25,
    train_mode: bool = True,
    seed: int = 0,
    chunk_size: int = 16,
    group_by: GroupBy = "block",
) -> xr.Dataset:
    """Per-sample gradient norms, per-tensor shares and confusion of `model` on `batch` (see the
    module docstring); `train_mode` = dropout on (the paper), `seed` fixes its masks."""
    n = len(batch)
    if not 2 <= n_confusion <= n:
        raise DtlensError(f"confusion needs 2 <= n_confusion <= {n} samples, got {n_confusion}")
    gram = GramAccumulator(n_confusion)
    names, numel, sq_norms = [], [], []
    grads = iter_per_sample_grads(
        model, batch, chunk_size=chunk_size, train_mode=train_mode, seed=seed, group_by=group_by
    )
    for name, g in grads:
        flat = g.flatten(1)
        norm = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64)
        sq_norms.append(norm.cpu().numpy() ** 2)
        gram.update(flat[:n_confusion])
        names.append(name)
        numel.append(flat.shape[1])
    sq = np.stack(sq_norms, axis=1)  # (sample, tensor)
    norm = np.sqrt(sq.sum(axis=1))
    coef = clip_coefficients(norm, max_norm=clip)
    share = share_of_norm(sq)
    i, j = np.triu_indices(n_confusion, k=1)
    return xr.Dataset(
        {
            "norm": ("sample", norm),
            "clip_coef": ("sample", coef),
            "norm_clipped": ("sample", norm * coef),
            "tensor_norm": (("sample", "tensor"), np.sqrt(sq)),
            "share": (("sample", "tensor"), share),
            "share_mean": ("tensor", share.mean(axis=0)),
            "numel": ("tensor", np.asarray(numel)),
            "confusion": gram.confusion(),
            "cosine": ("pair", gram.cosine_values()),
        },
        coords={
            "sample": np.arange(n),
            "tensor": names,
            "pair_i": ("pair", i),
            "pair_j": ("pair", j),
        },
        attrs={
            "clip": clip,
            "train_mode": int(train_mode),
            "seed": seed,
            "n_confusion": n_confusion,
            "dtlens_version": dtlens.__version__,
        },
    )


def analyse_gradients(
    run: Run,
    epoch: int = 1,
    n: int = 100,
    n_confusion: int = 50,
    clip: float = 0.25,
    train_mode: bool = True,
    seed: int = 0,
    chunk_size: int = 16,
    write: bool = True,
) -> xr.Dataset:
    """`gradient_stats` of `run`'s checkpoint `epoch` (-1: last) on its first `n` probe samples
    (more are drawn like the probe). Writes `RUN/diagnostics/gradients.nc` and
    `RUN/figures/gradients.png` unless `write=False`."""
    epoch = run.resolve_epochs([epoch])[0]
    model = run.load_model(epoch)
    batch = run_batch(run, n)
    ds = gradient_stats(model, batch, n_confusion, clip, train_mode, seed, chunk_size)
    ds.attrs |= {
        "run": run.name,
        "epoch": epoch,
        "init": run.config["train"]["init"],
        "dataset": run.config["train"]["dataset"],
    }
    if write:
        save_netcdf(ds, run.subdir("diagnostics") / "gradients.nc")
        plot_gradients(ds, run.subdir("figures") / "gradients.png")
    return ds


def top_tensors(ds: xr.Dataset, k: int = 5) -> xr.Dataset:
    """The `k` tensors with the largest mean share of the squared gradient norm."""
    order = np.argsort(-ds["share_mean"].values, kind="stable")[:k]
    return ds.isel(tensor=order)


def plot_gradients(ds: xr.Dataset, path: str | Path, k: int = 10) -> Path:
    """Box plots as the paper's: per-sample norm before/after clipping; the top tensors' share."""
    from dtlens.report.figures import panels, save_figure

    fig, axes = panels(1, 2, size=(4.5, 3.6))
    ax = axes[0, 0]
    ax.boxplot([ds["norm"].values, ds["norm_clipped"].values])
    ax.set_xticks([1, 2], ["before clipping", "after clipping"], fontsize=8)
    ax.axhline(ds.attrs["clip"], color="grey", ls="--", lw=0.8, label=f"clip {ds.attrs['clip']}")
    ax.set_yscale("log")
    ax.set_ylabel("per-sample gradient norm", fontsize=8)
    ax.set_title(f"confusion {float(ds['confusion']):.3f}", fontsize=9)
    ax.legend(fontsize=7)
    top = top_tensors(ds, k)
    ax = axes[0, 1]
    ax.boxplot(top["share"].values[:, ::-1], orientation="horizontal")
    ax.set_yticks(range(1, len(top.tensor) + 1), top.tensor.values[::-1], fontsize=6)
    ax.set_xlabel("share of the squared gradient norm", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_title(f"top {len(top.tensor)} tensors", fontsize=9)
    fig.suptitle(
        f"{ds.attrs.get('run', '')} epoch {ds.attrs.get('epoch', '')}: {ds.sizes['sample']} "
        f"samples, {'train' if ds.attrs['train_mode'] else 'eval'} mode",
        fontsize=9,
    )
    return save_figure(fig, path)
