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

`paper_variant=True` also computes `paper_site_cka(token_type, site_a, site_b)`: the released
CKA (``analysis/section-51-activation-similarity/compute_cka.py`` with ``block=False``, as its
figure) on the released code's sites, eight per block (`RELEASED_SITES`: the two norms, the
attention's c_attn and c_proj, the MLP's c_fc and c_proj and the two dropouts), with its
``[:, :, idx]`` indexing (`cka_paper_variant`). Its figure's axis, where the paper's LayerNorm
peaks sit, is the diagonal of that matrix; its ``block=True`` variant ("block" = the MLP
branch output) keeps the ``mlp.dropout`` sites only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from jaxtyping import Bool, Float
from matplotlib.figure import Figure

import dtlens
from dtlens.capture import capture, ensure_capture, load_capture, run_batch
from dtlens.data.windows import Batch
from dtlens.diagnostics.cka import Kernel, LazyLayers, cka_matrix, cka_paper_variant
from dtlens.diagnostics.contract import Diagnostic, Finding, Reads, Table
from dtlens.errors import DtlensError
from dtlens.model.dt import TOKEN_TYPES, DecisionTransformer
from dtlens.plotting import heatmap, panels, save_figure
from dtlens.train.run import Run

TYPES = (*TOKEN_TYPES, "all")
VARIANTS = ("last", "positions")
#: The released CKA's sites in a block, in its figure's order -> the dtlens hooks holding each
#: module's output. Released: ``analysis/signal_propagation.py:get_activation`` puts forward
#: hooks on GPT-2's modules and keeps them in ``block_name_list`` order; ``mlp.act`` is a plain
#: function in its transformers 4.12 (no hook, no place) and ``attn.attn_dropout`` is hooked but
#: not listed. The model is in eval mode, so a dropout outputs its input (`attn_out`, `mlp_out`);
#: ``attn.c_attn`` outputs q, k and v side by side, heads concatenated, so its last units are
#: v's (the heads of `v` concatenated the same way). A norm's output is its
#: ``hook_normalized`` (taken before the weight and bias in TransformerLens) times w plus b.
RELEASED_SITES = {
    "ln_1": "ln1",
    "attn.c_attn": "v",
    "attn.c_proj": "attn_out",
    "attn.resid_dropout": "attn_out",
    "ln_2": "ln2",
    "mlp.c_fc": "mlp_pre",
    "mlp.c_proj": "mlp_out",
    "mlp.dropout": "mlp_out",
}
#: The released indexing reads hidden units -3, -2, -1 ("reward", "state", "action") only.
RELEASED_UNITS = 3


def layer_reader(
    ds: xr.Dataset, embed: bool = True
) -> tuple[np.ndarray, Callable[[int], Float[np.ndarray, "sample position d_model"]]]:
    """The layers (`tokens` as layer -1, then each block's `resid_post`) and a function reading
    the i-th of them, so that a capture opened from disk is read one layer at a time."""
    if "resid_post" not in ds:
        raise DtlensError("the capture has no resid_post: capture with --hooks resid_post")
    if embed and "tokens" not in ds:
        raise DtlensError("the capture has no tokens (embedding output): add --hooks tokens")
    layers = [*([-1] if embed else []), *ds["layer"].values.tolist()]
    dims = ("sample", "position", "d_model")

    def read(i: int) -> Float[np.ndarray, "sample position d_model"]:
        x = ds["tokens"] if layers[i] == -1 else ds["resid_post"].sel(layer=layers[i])
        return x.transpose(*dims).values

    return np.asarray(layers), read


def released_site_units(
    model: DecisionTransformer, batch: Batch, batch_size: int = 16
) -> xr.DataArray:
    """(sample, site, position, unit): the last `RELEASED_UNITS` hidden units of every released
    site ("0.ln_1", "0.attn.c_attn", ..., block by block), all that the released indexing reads;
    captured `batch_size` samples at a time, so the whole activations are never held."""
    hooks = list(dict.fromkeys(RELEASED_SITES.values()))
    parts = []
    for start in range(0, len(batch), batch_size):
        cap = capture(model, batch.index(slice(start, start + batch_size)), hooks)
        last = {
            h: cap[h].values.reshape(*cap[h].shape[:3], -1)[..., -RELEASED_UNITS:] for h in hooks
        }
        for norm in ("ln1", "ln2"):
            last[norm] = last[norm] * _stacked(model, norm, "w") + _stacked(model, norm, "b")
        sites = [last[h] for h in RELEASED_SITES.values()]
        parts.append(np.stack(sites, axis=2))  # (sample, layer, site, position, unit)
    units = np.concatenate(parts)
    labels = [f"{layer}.{site}" for layer in cap.layer.values for site in RELEASED_SITES]
    return xr.DataArray(
        units.reshape(len(units), len(labels), *units.shape[3:]),
        dims=("sample", "site", "position", "unit"),
        coords={"site": labels},
    )


def _stacked(model: DecisionTransformer, norm: str, param: str) -> Float[np.ndarray, "layer 1 u"]:
    """Every block's `norm`.`param` on the last `RELEASED_UNITS` units (w: ones, b: zeros where
    the norm has none), to broadcast against (sample, layer, position, unit)."""
    blocks = [getattr(block, norm) for block in model.backbone.blocks]
    default = 1.0 if param == "w" else 0.0
    values = [
        getattr(ln, param).detach().cpu().float().numpy()
        if hasattr(ln, param)
        else np.full(model.cfg.d_model, default, np.float32)
        for ln in blocks
    ]
    return np.stack(values)[:, None, -RELEASED_UNITS:]


def site_cka(units_a: xr.DataArray, units_b: xr.DataArray) -> Float[np.ndarray, "type sa sb"]:
    """(token type of `TYPES`, site of a, site of b): the released CKA between every pair of
    sites, ``compute_cka(act_1, act_2, rtg_state_action)`` of ``compute_cka.py``: unit -3 / -2 /
    -1 for return / state / action (`cka_paper_variant`); NaN for `all`, which it lacks."""
    out = np.full((len(TYPES), units_a.sizes["site"], units_b.sizes["site"]), np.nan)
    for t in range(len(TOKEN_TYPES)):
        index = t - len(TOKEN_TYPES)
        out[t] = [
            [cka_paper_variant(x, y, index) for y in units_b.values.swapaxes(0, 1)]
            for x in units_a.values.swapaxes(0, 1)
        ]
    return out


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
    sites: tuple[xr.DataArray, xr.DataArray] | None = None,
) -> xr.Dataset:
    """`cka(variant, token_type, layer_a, layer_b)` and `rows(variant, token_type)` (the number of
    rows compared) between captures `a` and `b` of the same samples; with `sites` (the
    `released_site_units` of both models on those samples) also `paper_site_cka`."""
    check_same_samples(a, b)
    (la, read_a), (lb, read_b) = layer_reader(a, embed), layer_reader(b, embed)
    variants = [*VARIANTS, *(["paper_code"] if paper_variant else [])]
    out = np.full((len(variants), len(TYPES), len(la), len(lb)), np.nan)
    rows = np.zeros((len(variants), len(TYPES)), np.int64)
    for v, variant in enumerate(VARIANTS):
        for t, token_type in enumerate(TYPES):
            mask = row_mask(a, variant, token_type)
            rows[v, t] = mask.sum()
            shape = (int(mask.sum()), a.sizes["d_model"])
            xs = LazyLayers(lambda i, m=mask: read_a(i)[m], len(la), shape)
            ys = LazyLayers(lambda j, m=mask: read_b(j)[m], len(lb), shape)
            out[v, t] = cka_matrix(xs, ys, kernel, debiased)
    if paper_variant:  # the released indexing reads the last three hidden units only
        ua = [read_a(i)[..., -3:] for i in range(len(la))]
        ub = [read_b(j)[..., -3:] for j in range(len(lb))]
        for t in range(len(TOKEN_TYPES)):
            rows[-1, t] = a.sizes["sample"]
            out[-1, t] = [[cka_paper_variant(x, y, t - 3) for y in ub] for x in ua]
    data = {
        "cka": (("variant", "token_type", "layer_a", "layer_b"), out),
        "rows": (("variant", "token_type"), rows),
    }
    coords = {
        "variant": variants,
        "token_type": list(TYPES),
        "layer_a": la,
        "layer_b": lb,
    }
    if sites is not None:
        data["paper_site_cka"] = (("token_type", "site_a", "site_b"), site_cka(*sites))
        coords |= {"site_a": sites[0]["site"].values, "site_b": sites[1]["site"].values}
    return xr.Dataset(
        data,
        coords=coords,
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
    return _diagonal(ds["cka"].sel(variant=variant), "layer")


def _diagonal(matrix: xr.DataArray, dim: str) -> xr.DataArray:
    """(token_type, dim): the entries of `matrix` (token_type, dim_a, dim_b) with the same
    `dim` on both sides, for the ones both sides have."""
    a, b = matrix[f"{dim}_a"].values, matrix[f"{dim}_b"].values
    common = [x for x in a if x in b]
    sub = matrix.sel({f"{dim}_a": common, f"{dim}_b": common}).values
    return xr.DataArray(
        np.diagonal(sub, axis1=-2, axis2=-1),
        dims=("token_type", dim),
        coords={"token_type": matrix["token_type"].values, dim: common},
    )


def _side(ds: xr.Dataset, side: str) -> str:
    return f"{ds.attrs[f'run_{side}']} epoch {ds.attrs[f'epoch_{side}']}"


def plot_layer_cka(ds: xr.Dataset) -> Figure:
    """One heatmap per (variant, token type): rows = layers of `a`, columns = layers of `b`;
    with the released sites, a last row of their same-site curves (the paper's figure)."""
    sites = "paper_site_cka" in ds
    fig, axes = panels(ds.sizes["variant"] + sites, ds.sizes["token_type"])
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
    if sites:
        curves = site_diagonal(ds)
        for j, token_type in enumerate(ds["token_type"].values):
            ax = axes[-1, j]
            if token_type not in TOKEN_TYPES:
                ax.axis("off")
                continue
            ax.plot(curves.sel(token_type=token_type).values, marker=".")
            ax.set(ylim=(-0.05, 1.05), xlabel="released site (8 per block)", ylabel="CKA")
            ax.set_title(f"paper's formula and sites: {token_type}", fontsize=9)
    fig.colorbar(image, ax=axes[: ds.sizes["variant"]], shrink=0.6, label="CKA")
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
    sites = None
    if paper_variant:
        batch = run_batch(run)
        sites = (
            released_site_units(run.load_model(epoch_a), batch),
            released_site_units(other.load_model(epoch_b), batch),
        )
    with load_capture(path_a) as a, load_capture(path_b) as b:
        return layer_cka(a, b, kernel, debiased, embed, paper_variant, sites)


def plot_cka(ds: xr.Dataset, path: Path) -> Path:
    return save_figure(plot_layer_cka(ds), path)


def site_diagonal(ds: xr.Dataset) -> xr.DataArray:
    """(token_type, site): the released CKA of each released site with the same site of the
    other model, the curve of the paper's figure."""
    return _diagonal(ds["paper_site_cka"], "site")


def summary(ds: xr.Dataset) -> Table:
    """Layer i vs layer i, per token type, for every variant; with the paper variant, each
    released site vs itself by the released formula."""
    header = ["layer"]
    rows = []
    for variant in ds["variant"].values:
        diag = diagonal(ds, str(variant))
        header = ["variant", "layer", *map(str, diag["token_type"].values)]
        for label, row in zip(layer_labels(diag["layer"].values), diag.values.T, strict=True):
            rows.append([str(variant), label, *(float(v) for v in row)])
    if "paper_site_cka" in ds:
        diag = site_diagonal(ds)
        for site, row in zip(diag["site"].values, diag.values.T, strict=True):
            rows.append(["paper_sites", str(site), *(float(v) for v in row)])
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


def paper_mean_diagonal(ds: xr.Dataset) -> float:
    """The mean of the paper's figure's curves when the paper variant was computed: the
    released CKA of each released site with itself, over sites and the three token types; else
    `mean_diagonal`."""
    if "paper_site_cka" not in ds:
        return mean_diagonal(ds)
    return float(site_diagonal(ds).sel(token_type=list(TOKEN_TYPES)).mean())


DIAGNOSTIC = Diagnostic(
    name="cka",
    title="1. Representation change (CKA)",
    compute=compute_layer_cka,
    plot=plot_cka,
    summary=summary,
    finding=Finding(
        claim=(
            "Pretrained models change their representations more than random init: CKA between each"
            " layer before and after fine-tuning is mostly < 0.2 for GPT-2 and ImageGPT, higher for"
            " random init (LayerNorm peaks 0.4-0.9)."
        ),
        short="pretrained < random",
        statistic="mean same-layer CKA, epoch 0 vs last; with the paper variant the released "
        "formula on the released sites (8 per block, one hidden unit across positions), else "
        "dtlens's",
        expect="less",
        value=paper_mean_diagonal,
        correct=mean_diagonal,
        correct_statistic="mean same-layer CKA of resid_post over blocks and the last "
        "timestep's R/s/a tokens (d_model-dim representations)",
    ),
    reads=Reads(),
    options=lambda settings, run: {"paper_variant": settings.paper_variants},
)
