"""Layer x layer CKA between two captures of the same samples (the paper's analysis 1).

Layers are the embedding output `tokens` (layer -1, "embed") and each block's `resid_post`.
Each (variant, token type) picks the rows (samples) CKA compares:

- `last`: the paper's definition: the token of that type at the last timestep of each window,
  one row per sample (samples whose last step is padding are skipped), features = d_model;
- `positions`: every valid position of that type, one row per (sample, position);
- token type `all` pools the three types (`last`: the last three tokens; `positions`: every valid
  position);
- `paper_code` (on request): the released code's indexing `[:, :, idx]` via `cka_paper_variant`:
  one hidden unit (-3/-2/-1 for return/state/action) across all positions, padding included, with
  unbiased linear CKA whatever the kernel asked for; it has no pooled version (NaN at `all`).

Epoch 0 vs the last epoch of one run puts "the same layer before vs after fine-tuning" on the
diagonal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from jaxtyping import Bool
from matplotlib.figure import Figure

import dtlens
from dtlens.capture import ensure_capture, load_capture
from dtlens.diagnostics.cka import Kernel, cka_matrix, cka_paper_variant
from dtlens.diagnostics.claims import CLAIMS
from dtlens.diagnostics.contract import Diagnostic, Finding, Table
from dtlens.errors import DtlensError
from dtlens.model.dt import TOKEN_TYPES
from dtlens.plotting import heatmap, panels, save_figure
from dtlens.train.run import Run

TYPES = (*TOKEN_TYPES, "all")
VARIANTS = ("last", "positions")


def layer_stack(ds: xr.Dataset, embed: bool = True) -> xr.DataArray:
    """`resid_post` (and `tokens` as layer -1) as (layer, sample, position, d_model)."""
    if "resid_post" not in ds:
        raise DtlensError("the capture has no resid_post: capture with --hooks resid_post")
    stack = ds["resid_post"]
    if embed:
        if "tokens" not in ds:
            raise DtlensError("the capture has no tokens (embedding output): add --hooks tokens")
        stack = xr.concat([ds["tokens"].expand_dims(layer=[-1]), stack], dim="layer")
    return stack.transpose("layer", "sample", "position", "d_model")


def layer_labels(layers: np.ndarray) -> list[str]:
    return ["embed" if layer == -1 else str(layer) for layer in layers]


def row_mask(ds: xr.Dataset, variant: str, token_type: str) -> Bool[np.ndarray, "sample position"]:
    """The (sample, position) entries that are rows of `variant` for `token_type`."""
    types = ds["token_type"].values
    steps = ds["timestep"].values
    pick = np.ones(len(types), bool) if token_type == "all" else types == token_type
    if variant == "last":
        pick &= steps == steps.max()
    return ds["valid"].values & pick[None, :]


def check_same_samples(a: xr.Dataset, b: xr.Dataset) -> None:
    if a.attrs.get("probe_hash") != b.attrs.get("probe_hash"):
        raise DtlensError(
            f"the captures hold different samples ({a.attrs.get('run')} epoch "
            f"{a.attrs.get('epoch')}: {a.sizes['sample']}, {b.attrs.get('run')} epoch "
            f"{b.attrs.get('epoch')}: {b.sizes['sample']}); capture both on the same probe batch"
        )


def layer_cka(
    a: xr.Dataset,
    b: xr.Dataset,
    kernel: Kernel = "linear",
    debiased: bool = True,
    embed: bool = True,
    paper_variant: bool = False,
) -> xr.Dataset:
    """`cka(variant, token_type, layer_a, layer_b)` and `rows(variant, token_type)` (the number of
    rows compared) between captures `a` and `b` of the same samples."""
    check_same_samples(a, b)
    sa, sb = layer_stack(a, embed), layer_stack(b, embed)
    xa, xb = sa.values, sb.values
    variants = [*VARIANTS, *(["paper_code"] if paper_variant else [])]
    out = np.full((len(variants), len(TYPES), len(xa), len(xb)), np.nan)
    rows = np.zeros((len(variants), len(TYPES)), np.int64)
    for v, variant in enumerate(VARIANTS):
        for t, token_type in enumerate(TYPES):
            mask = row_mask(a, variant, token_type)
            rows[v, t] = mask.sum()
            out[v, t] = cka_matrix([x[mask] for x in xa], [y[mask] for y in xb], kernel, debiased)
    if paper_variant:
        for t in range(len(TOKEN_TYPES)):
            rows[-1, t] = a.sizes["sample"]
            out[-1, t] = [[cka_paper_variant(x, y, t - 3) for y in xb] for x in xa]
    return xr.Dataset(
        {
            "cka": (("variant", "token_type", "layer_a", "layer_b"), out),
            "rows": (("variant", "token_type"), rows),
        },
        coords={
            "variant": variants,
            "token_type": list(TYPES),
            "layer_a": sa["layer"].values,
            "layer_b": sb["layer"].values,
        },
        attrs={
            "kernel": kernel,
            "debiased": int(debiased),
            "samples": a.sizes["sample"],
            "probe_hash": a.attrs["probe_hash"],
            "dtlens_version": dtlens.__version__,
        }
        | {
            f"{key}_{side}": ds.attrs.get(key, "")
            for side, ds in (("a", a), ("b", b))
            for key in ("run", "epoch", "init", "dataset")
        },
    )


def diagonal(ds: xr.Dataset, variant: str = "last") -> xr.DataArray:
    """(token_type, layer): CKA of each layer with the same layer of the other capture, for the
    layers both have."""
    common = [layer for layer in ds["layer_a"].values if layer in ds["layer_b"].values]
    sub = ds["cka"].sel(variant=variant, layer_a=common, layer_b=common).values
    return xr.DataArray(
        np.diagonal(sub, axis1=-2, axis2=-1),
        dims=("token_type", "layer"),
        coords={"token_type": ds["token_type"].values, "layer": common},
    )


def _side(ds: xr.Dataset, side: str) -> str:
    return f"{ds.attrs[f'run_{side}']} epoch {ds.attrs[f'epoch_{side}']}"


def plot_layer_cka(ds: xr.Dataset) -> Figure:
    """One heatmap per (variant, token type): rows = layers of `a`, columns = layers of `b`."""
    fig, axes = panels(ds.sizes["variant"], ds.sizes["token_type"])
    ya, xb = layer_labels(ds["layer_a"].values), layer_labels(ds["layer_b"].values)
    for i, variant in enumerate(ds["variant"].values):
        for j, token_type in enumerate(ds["token_type"].values):
            image = heatmap(
                axes[i, j],
                ds["cka"].sel(variant=variant, token_type=token_type).values,
                xb,
                ya,
                title=f"{variant}: {token_type}",
                xlabel=_side(ds, "b"),
                ylabel=_side(ds, "a"),
                vmin=0.0,
                vmax=1.0,
            )
    fig.colorbar(image, ax=axes, shrink=0.6, label="CKA")
    estimator = "unbiased" if ds.attrs["debiased"] else "biased"
    fig.suptitle(f"{ds.attrs['kernel']} CKA ({estimator} HSIC)", fontsize=10)
    return fig


def compute_layer_cka(
    run: Run,
    epochs: Sequence[int] = (0, -1),
    other: Run | None = None,
    kernel: Kernel = "linear",
    debiased: bool = True,
    embed: bool = True,
    paper_variant: bool = False,
) -> xr.Dataset:
    """CKA of `run` at `epochs[0]` vs `other` (default: `run`) at `epochs[-1]` (-1 = last) on
    the probe batch, capturing what is missing."""
    if kernel not in ("linear", "rbf"):
        raise DtlensError(f"unknown CKA kernel {kernel!r}: use 'linear' or 'rbf'")
    if len(epochs) not in (1, 2):
        raise DtlensError(f"--epochs takes one or two epochs, got {list(epochs)}")
    other = run if other is None else other
    [epoch_a], [epoch_b] = run.resolve_epochs([epochs[0]]), other.resolve_epochs([epochs[-1]])
    hooks = ["resid_post", *(["tokens"] if embed else [])]
    path_a, path_b = ensure_capture(run, epoch_a, hooks), ensure_capture(other, epoch_b, hooks)
    with load_capture(path_a) as a, load_capture(path_b) as b:
        return layer_cka(a, b, kernel, debiased, embed, paper_variant)


def plot_cka(ds: xr.Dataset, path: Path) -> Path:
    return save_figure(plot_layer_cka(ds), path)


def summary(ds: xr.Dataset) -> Table:
    """Layer i vs layer i, per token type, for every variant."""
    header = ["layer"]
    rows = []
    for variant in ds["variant"].values:
        diag = diagonal(ds, str(variant))
        header = ["variant", "layer", *map(str, diag["token_type"].values)]
        for label, row in zip(layer_labels(diag["layer"].values), diag.values.T, strict=True):
            rows.append([str(variant), label, *(float(v) for v in row)])
    title = (
        f"CKA: {_side(ds, 'a')} vs {_side(ds, 'b')} (same layer, "
        f"{ds.attrs.get('samples', '?')} samples)"
    )
    return Table(title, header, rows)


def mean_diagonal(ds: xr.Dataset) -> float:
    """Mean over blocks and the three token types of the same-layer CKA at the last timestep."""
    d = diagonal(ds, "last")
    return float(
        d.sel(token_type=list(TOKEN_TYPES), layer=[x for x in d.layer.values if x >= 0]).mean()
    )


DIAGNOSTIC = Diagnostic(
    name="cka",
    title="1. Representation change (CKA)",
    compute=compute_layer_cka,
    plot=plot_cka,
    summary=summary,
    finding=Finding(
        claim=CLAIMS["cka"],
        short="pretrained < random",
        statistic="mean same-layer CKA (blocks, last timestep's R/s/a tokens), epoch 0 vs last",
        expect="less",
        value=mean_diagonal,
    ),
    preset_options={"paper_variant": "paper_variants"},
)
