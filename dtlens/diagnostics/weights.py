"""Weight change between two checkpoints (the paper's analysis 3), per parameter tensor.

For each tensor, a = before and b = after (float64):

- `l2` = ||a - b||, `norm_before` = ||a||, `norm_after` = ||b||, `dot` = <a, b>, `numel`, and
  the squares `l2_sq`, `norm_before_sq`, `norm_after_sq`, which with `dot` add up over tensors;
- `relative` = ||a - b|| / ||a||; for a tensor that is zero before (biases at init, flagged
  `zero_init`) it is the absolute change ||a - b||, never inf or NaN;
- `cosine` = <a, b> / (||a|| ||b||); 1 for equal tensors (zero ones included), else 0 if either
  is zero.

Coordinates along `tensor`: `block` (-1 outside the blocks), `kind` (attention, mlp, norm,
embedding, head) and `part` (backbone, embeddings, head). Skipped: the backbone's parameters a DT
never uses (token/position embeddings, unembedding) and TransformerLens's attention buffers.
`aggregate` combines tensors exactly: the result equals the statistics of the concatenated vectors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure
from torch import Tensor, nn

import dtlens
from dtlens.errors import DtlensError
from dtlens.io import save_netcdf
from dtlens.model.backbones import UNUSED_BY_DT
from dtlens.report.figures import grouped_bars, panels, save_figure
from dtlens.train.run import Run

SUMS = ("l2_sq", "norm_before_sq", "norm_after_sq", "dot")  # ||a - b||^2, ||a||^2, ||b||^2, <a, b>
ADDITIVE = (*SUMS, "numel")
BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(attn|mlp|ln\d)\.")
SKIP = tuple(f"backbone.{prefix}" for prefix in UNUSED_BY_DT)
BUFFERS = re.compile(r"\.attn\.(mask|IGNORE|rotary_sin|rotary_cos)$")  # TransformerLens's
KINDS = ("attention", "mlp", "norm", "embedding", "head")
StateDict = Mapping[str, Tensor]


def classify(name: str) -> tuple[int, str, str]:
    """(block, kind, part) of a DT parameter name."""
    if m := BLOCK.match(name):
        kind = {"attn": "attention", "mlp": "mlp"}.get(m.group(2), "norm")
        return int(m.group(1)), kind, "backbone"
    if name.startswith("backbone.ln_final."):
        return -1, "norm", "backbone"
    if name.startswith("embed_ln."):
        return -1, "norm", "embeddings"
    if name.startswith("embed_"):
        return -1, "embedding", "embeddings"
    if name.startswith("predict_action."):
        return -1, "head", "head"
    raise DtlensError(f"not a Decision Transformer parameter: {name}")


def _params(x: StateDict | nn.Module) -> dict[str, Tensor]:
    """The parameters of a DT or of its state dict (buffers and unused parameters dropped)."""
    sd = dict(x.named_parameters()) if isinstance(x, nn.Module) else dict(x)
    return {k: v for k, v in sd.items() if not k.startswith(SKIP) and not BUFFERS.search(k)}


def _with_ratios(ds: xr.Dataset) -> xr.Dataset:
    """Add l2, norms, relative, cosine and zero_init from the additive statistics."""
    l2, na, nb = (np.sqrt(ds[k]) for k in ("l2_sq", "norm_before_sq", "norm_after_sq"))
    zero = na == 0
    both = (na > 0) & (nb > 0)
    return ds.assign(
        l2=l2,
        norm_before=na,
        norm_after=nb,
        relative=xr.where(zero, l2, l2 / na.where(~zero, 1.0)),
        cosine=xr.where(l2 == 0, 1.0, xr.where(both, ds["dot"] / (na * nb).where(both, 1.0), 0.0)),
        zero_init=zero,
    )


def _flat_pair(name: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape:
        raise DtlensError(f"{name}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
    return x.detach().double().flatten(), y.detach().double().flatten()


@torch.no_grad()
def weight_change(before: StateDict | nn.Module, after: StateDict | nn.Module) -> xr.Dataset:
    """Per-tensor change from `before` to `after` (two DTs or their state dicts)."""
    a, b = _params(before), _params(after)
    if a.keys() != b.keys():
        raise DtlensError(f"the models have different parameters: {sorted(a.keys() ^ b.keys())}")
    pairs = [_flat_pair(name, a[name], b[name]) for name in a]
    sums = torch.stack([torch.stack([(x - y) @ (x - y), x @ x, y @ y, x @ y]) for x, y in pairs])
    block, kind, part = zip(*(classify(name) for name in a), strict=True)
    ds = xr.Dataset(
        {k: ("tensor", sums[:, i].cpu().numpy()) for i, k in enumerate(SUMS)}
        | {"numel": ("tensor", np.array([x.numel() for x, _ in pairs]))},
        coords={
            "tensor": list(a),
            "block": ("tensor", list(block)),
            "kind": ("tensor", list(kind)),
            "part": ("tensor", list(part)),
        },
        attrs={"dtlens_version": dtlens.__version__},
    )
    return _with_ratios(ds)


def aggregate(ds: xr.Dataset, by: str = "block") -> xr.Dataset:
    """Combine the tensors of each group of the coordinate `by` (block, kind or part): the
    statistics of each group's concatenated vectors."""
    return _with_ratios(ds[list(ADDITIVE)].groupby(by).sum()).assign_attrs(ds.attrs)


def plot_weight_change(ds: xr.Dataset) -> Figure:
    """Cosine similarity and relative change per block (groups) and kind (bars)."""
    blocks = np.unique(ds["block"].values)
    kinds = [k for k in KINDS if k in ds["kind"].values]
    per_kind = {
        k: aggregate(ds.isel(tensor=ds["kind"].values == k), "block").reindex(block=blocks)
        for k in kinds
    }
    labels = ["outside" if b == -1 else str(b) for b in blocks]
    fig, axes = panels(1, 2, size=(max(4.0, 0.35 * len(blocks) * len(kinds)), 3.2))
    for ax, var, title in zip(
        axes[0],
        ("cosine", "relative"),
        ("cosine(before, after)", "||after - before|| / ||before||"),
        strict=True,
    ):
        grouped_bars(ax, labels, {k: agg[var].values for k, agg in per_kind.items()}, title, var)
    fig.suptitle(
        f"weight change of {ds.attrs.get('run', '')}: epoch {ds.attrs.get('epoch_before', '')} "
        f"-> {ds.attrs.get('epoch_after', '')}",
        fontsize=10,
    )
    return fig


def run_weight_change(run: Run, epochs: Sequence[int] = (0, -1)) -> tuple[xr.Dataset, Path, Path]:
    """Weight change of `run` between two epochs (-1 = last); writes `diagnostics/weights.nc` and
    `figures/weights.png`. Returns (dataset, .nc path, .png path)."""
    if len(epochs) != 2:
        raise DtlensError(f"weight change compares two epochs, got {list(epochs)}")
    first, last = run.resolve_epochs(list(epochs))
    ds = weight_change(run.load_model(first), run.load_model(last)).assign_attrs(
        run=run.name,
        epoch_before=first,
        epoch_after=last,
        init=run.config["train"]["init"],
        dataset=run.config["train"]["dataset"],
    )
    nc = save_netcdf(ds, run.subdir("diagnostics") / "weights.nc")
    return ds, nc, save_figure(plot_weight_change(ds), run.subdir("figures") / "weights.png")
